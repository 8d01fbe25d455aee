"""Shared files (swarm:sharedFiles): one kept EFS file system, reached each morning through
unprotected mount targets and an NFS rule from the cluster group only, and never dropped
by a config change. The mount itself is the agent's (tests/unit/agent/test_shared.py):
this machine's kernel has no NFS client, so neither these tests nor the bed mount EFS."""

from __future__ import annotations

import pytest
from harness import SwarmMocks, run_program, subnet_mock
from test_hosts import SECRETS, hosts_config

from components.settings import ConfigError

FILE_SYSTEM = "aws:efs/fileSystem:FileSystem"
MOUNT_TARGET = "aws:efs/mountTarget:MountTarget"
GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LOOKUP = "aws:efs/getFileSystem:getFileSystem"
KEPT = "fs-0feedc0ffee000001"
STACK = "urn:pulumi:dev::swarm::pulumi:pulumi:Stack::swarm-dev"


class Mocks(SwarmMocks):
    """Records the ID each file system was registered to import (Pulumi's `import_`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.imports: dict[str, str] = {}

    def new_resource(self, args):
        if args.typ == FILE_SYSTEM:
            self.imports[args.name] = args.resource_id or ""
        return super().new_resource(args)


def ours(*ids: str, stack: str = "dev") -> dict[str, dict[str, str]]:
    """File systems the region holds for a stack (as DescribeFileSystems lists them)."""
    return {fs: {"swarm:data-of": f"swarm/{stack}", "Name": f"swarm-{stack}-shared"} for fs in ids}


@pytest.fixture(scope="module")
def on():
    return run_program({"sharedFiles": True})


def test_off_by_default_it_only_looks_for_a_file_system_kept_from_before():
    run = run_program()
    assert not run.of_type(FILE_SYSTEM) and not run.of_type(MOUNT_TARGET)
    assert not any(r.type == "swarm:index:SharedFiles" for r in run.resources)
    assert [a for t, a in run.invokes if t == LOOKUP] == [{"tags": {"swarm:data-of": "swarm/dev"}}]
    assert run.outputs["sharedFileSystemId"] == ""


def test_the_file_system_is_protected_encrypted_tagged_and_a_root_resource(on):
    [fs] = on.of_type(FILE_SYSTEM)
    assert fs.name == "swarm-dev-shared-files" and fs.protect
    assert fs.inputs["encrypted"] is True
    assert fs.inputs["tags"]["swarm:data-of"] == "swarm/dev" and fs.inputs["tags"]["swarm:stack"] == "dev"
    assert fs.inputs["throughputMode"] == "elastic"
    # Its protection hinges on no component staying in the state: its parent is the stack.
    assert fs.parent == STACK
    assert on.outputs["sharedFileSystemId"] == "fs-0a1b2c3d4e5f6a7b8"


def test_the_file_system_takes_no_input_from_anything_the_night_deletes(on):
    """A protected resource keeps what it depends on through `destroy --exclude-protected`."""
    [fs] = on.of_type(FILE_SYSTEM)
    assert fs.dependencies == []
    assert all(isinstance(v, (str, bool, dict)) for v in fs.inputs.values())
    # ...while what reaches it each morning is not kept.
    kept = [r for r in on.resources if r.protect]
    assert fs in kept
    for resource in [*on.of_type(MOUNT_TARGET), on.named("swarm-dev-shared-nfs"), on.named("swarm-dev-shared")]:
        assert not resource.protect, resource.name


def test_one_unprotected_mount_target_in_each_subnet_behind_the_nfs_group(on):
    targets = sorted(on.of_type(MOUNT_TARGET), key=lambda t: t.name)
    assert [t.name for t in targets] == [f"swarm-dev-shared-target-{i}" for i in range(3)]
    assert [t.inputs["subnetId"] for t in targets] == [f"swarm-dev-network-subnet-{i}-id" for i in range(3)]
    assert all(t.inputs["fileSystemId"] == "fs-0a1b2c3d4e5f6a7b8" for t in targets)
    assert all(t.inputs["securityGroups"] == ["swarm-dev-shared-nfs-id"] for t in targets)
    component = on.named("swarm-dev-shared")
    assert component.type == "swarm:index:SharedFiles" and all(t.parent == component.urn for t in targets)


def test_nfs_is_admitted_from_the_cluster_group_only(on):
    group = on.named("swarm-dev-shared-nfs")
    assert group.type == GROUP and group.inputs["vpcId"] == "swarm-dev-network-vpc-id"
    assert "ingress" not in group.inputs and "egress" not in group.inputs
    rules = [r for r in on.of_type(INGRESS) if r.inputs["securityGroupId"] == "swarm-dev-shared-nfs-id"]
    assert len(rules) == 1
    rule = rules[0].inputs
    assert (rule["ipProtocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 2049, 2049)
    assert rule["referencedSecurityGroupId"] == "swarm-dev-network-cluster-id"
    assert not {"cidrIpv4", "cidrIpv6", "prefixListId"} & set(rule)
    # And the cluster group itself gains nothing for it.
    cluster_rules = [r for r in on.of_type(INGRESS) if r.inputs["securityGroupId"] == "swarm-dev-network-cluster-id"]
    assert 2049 not in {r.inputs.get("fromPort") for r in cluster_rules}


def test_a_mount_waits_for_the_mount_targets_and_the_rule_and_goes_before_them(tmp_path):
    """What the formation's `shared-mount` will take: the ID carries them as dependencies."""
    main = tmp_path / "main.py"
    main.write_text(
        "import pulumi\nfrom pulumi_command import remote\nfrom components.cluster import SwarmCluster\n"
        "from components.settings import load_settings\nsettings = load_settings()\n"
        "cluster = SwarmCluster(settings.cluster_name, settings)\n"
        "remote.Command('mount-probe', connection=remote.ConnectionArgs(host='10.42.0.10'),\n"
        "    create=pulumi.Output.concat('swarm-node shared-mount --fs ', cluster.outputs['sharedFileSystemId']))\n"
    )
    run = run_program({"sharedFiles": True}, main=main)
    probe = run.named("mount-probe")
    assert probe.inputs["create"] == "swarm-node shared-mount --fs fs-0a1b2c3d4e5f6a7b8"
    for resource in [*run.of_type(MOUNT_TARGET), run.named("swarm-dev-shared-nfs-from-cluster")]:
        assert resource.urn in probe.dependencies, resource.name


def test_existing_subnets_get_one_mount_target_per_zone():
    """EFS refuses a second mount target in a zone; a node in the zone's other subnet uses its one."""
    subnets = {
        "subnet-0aaaaaaaaaaaaaaaa": subnet_mock("10.1.0.0/24", "eu-west-1a"),
        "subnet-0bbbbbbbbbbbbbbbb": subnet_mock("10.1.1.0/24", "eu-west-1a"),
        "subnet-0cccccccccccccccc": subnet_mock("10.1.2.0/24", "eu-west-1b"),
    }
    config = {"vpcId": "vpc-0123456789abcdef0", "subnetIds": list(subnets), "sharedFiles": True}
    run = run_program(config, mocks=SwarmMocks(subnets=subnets))
    used = sorted(t.inputs["subnetId"] for t in run.of_type(MOUNT_TARGET))
    assert used == ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0cccccccccccccccc"]
    assert run.named("swarm-dev-shared-nfs").inputs["vpcId"] == "vpc-0123456789abcdef0"


def test_switched_off_the_kept_file_system_stays_registered_unmounted_with_the_two_commands(caplog):
    """A protected resource the program stopped registering would fail this `up` and every later one."""
    mocks = Mocks(file_systems=ours(KEPT))
    run = run_program(mocks=mocks)
    [fs] = run.of_type(FILE_SYSTEM)
    assert fs.name == "swarm-dev-shared-files" and fs.protect and fs.parent == STACK
    assert mocks.imports[fs.name] == KEPT  # the one AWS holds, never a new one
    assert not run.of_type(MOUNT_TARGET) and not any(r.name.startswith("swarm-dev-shared-nfs") for r in run.resources)
    assert run.outputs["sharedFileSystemId"] == ""
    warning = " ".join(r.getMessage() for r in caplog.records if "is kept, unmounted" in r.getMessage())
    urn = f"urn:pulumi:dev::swarm::pulumi:pulumi:Stack${FILE_SYSTEM}::swarm-dev-shared-files"
    assert KEPT in warning and "swarm:sharedFiles is off" in warning and "USD per GB-month" in warning
    assert f"pulumi state unprotect '{urn}'" in warning and f"pulumi destroy --target '{urn}'" in warning


def test_on_and_off_register_the_same_resource():
    """Same name, type and parent, so turning it off and on never replaces (or drops) it."""
    on = run_program({"sharedFiles": True}).of_type(FILE_SYSTEM)[0]
    off = run_program(mocks=Mocks(file_systems=ours(KEPT))).of_type(FILE_SYSTEM)[0]
    assert (on.urn, on.inputs, on.protect) == (off.urn, off.inputs, off.protect)


def test_a_file_system_the_state_forgot_is_imported_not_made_again():
    mocks = Mocks(file_systems=ours(KEPT))
    run = run_program({"sharedFiles": True}, mocks=mocks)
    assert mocks.imports == {"swarm-dev-shared-files": KEPT}
    assert run.outputs["sharedFileSystemId"] == KEPT
    assert {t.inputs["fileSystemId"] for t in run.of_type(MOUNT_TARGET)} == {KEPT}


def test_the_first_morning_creates_one():
    mocks = Mocks()
    run_program({"sharedFiles": True}, mocks=mocks)
    assert mocks.imports == {"swarm-dev-shared-files": ""}


def test_another_stacks_file_system_is_not_kept_for_this_one():
    run = run_program(mocks=Mocks(file_systems=ours(KEPT, stack="prod")))
    assert not run.of_type(FILE_SYSTEM)


def test_two_file_systems_tagged_for_the_stack_stop_before_anything_is_registered():
    with pytest.raises(Exception, match="more than one EFS file system tagged swarm:data-of=swarm/dev") as caught:
        run_program(mocks=Mocks(file_systems=ours(KEPT, "fs-0feedc0ffee000002")))
    assert "aws efs untag-resource" in str(caught.value)
    assert not [r for r in caught.value.registered if r.custom]


def test_a_lookup_that_is_refused_warns_and_goes_on(caplog):
    """Credentials without EFS rights must not stop a stack that never used shared files."""

    class Refused(SwarmMocks):
        def call(self, args):
            if args.token == LOOKUP:
                self.invokes.append((args.token, dict(args.args)))
                return {}, [("tags", "AccessDeniedException: not authorized to perform DescribeFileSystems")]
            return super().call(args)

    run = run_program(mocks=Refused())
    assert not run.of_type(FILE_SYSTEM)
    warning = " ".join(r.getMessage() for r in caplog.records if "could not look for" in r.getMessage())
    assert "AccessDeniedException" in warning and "elasticfilesystem:DescribeFileSystems" in warning


def test_refused_with_hosts_naming_the_key_and_the_fix():
    with pytest.raises(ConfigError) as caught:
        run_program(hosts_config(sharedFiles=True), secret_keys=SECRETS)
    assert caught.value.registered == []
    assert (
        "swarm:sharedFiles applies only when the program creates EC2 machines, not with swarm:hosts; "
        "fix: pulumi config rm swarm:sharedFiles"
    ) in caught.value.problems


def test_hosts_with_the_default_neither_refuse_nor_look_up():
    run = run_program(hosts_config(sharedFiles=False), secret_keys=SECRETS)
    assert not run.of_type(FILE_SYSTEM) and not [t for t, _ in run.invokes if t == LOOKUP]
    assert run.outputs["sharedFileSystemId"] == ""


def test_a_value_that_is_not_a_boolean_is_refused():
    with pytest.raises(ConfigError) as caught:
        run_program({"sharedFiles": "yes"})
    assert "swarm:sharedFiles must be true or false (got 'yes'); fix: pulumi config set swarm:sharedFiles true" in (
        caught.value.problems
    )


def test_formation_mounts_shared_files_on_every_node_before_bootstrap_and_joins():
    run = run_program({"sharedFiles": True, "dataVolumes": '[{"name":"pg","node":"worker-0"}]'})
    nodes = [f"swarm-dev-manager-{i}" for i in range(3)] + [f"swarm-dev-worker-{i}" for i in range(2)]
    targets, rule = run.of_type(MOUNT_TARGET), run.named("swarm-dev-shared-nfs-from-cluster")
    for node in nodes:
        cmd = run.command(f"-shared-{node}")
        assert cmd.inputs["create"] == (
            "sudo /usr/local/sbin/swarm-node shared-mount --region eu-west-1 --fs fs-0a1b2c3d4e5f6a7b8"
        )
        assert cmd.inputs["delete"] == "sudo /usr/local/sbin/swarm-node shared-release"
        assert run.depends_on(cmd, run.command(f"-ready-{node}"))
        assert all(run.depends_on(cmd, t) for t in targets) and run.depends_on(cmd, rule)
    assert run.depends_on(run.command("-shared-swarm-dev-worker-0"), run.command("-data-swarm-dev-worker-0"))
    assert run.depends_on(run.command("swarm-dev-swarm-bootstrap"), run.command("-shared-swarm-dev-manager-0"))
    for node in nodes[1:]:
        assert run.depends_on(run.command(f"-join-{node}"), run.command(f"-shared-{node}"))
    for retire in [c for c in run.commands() if "-retire-" in c.name]:
        assert run.depends_on(retire, run.command(f"-shared-{retire.name.split('-retire-')[1]}"))
    # The steward (manager 0) restarts its dockerd when it releases the files: its retires first.
    assert run.depends_on(run.command("-retire-swarm-dev-worker-1"), run.command("-shared-swarm-dev-manager-0"))


def test_no_shared_mount_when_off():
    assert not [c for c in run_program().commands() if "-shared-" in c.name]
