"""Bring your own machines (swarm:hosts): the same swarm, backup and mirror, with no EC2."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shlex
import tarfile
from pathlib import Path

import pytest
from harness import HOST_PUBLIC_KEY, PRIVATE_KEY, ROOT, run_program

from components.hosts import PROVISION
from components.settings import DEFAULTS, ConfigError
from components.swarm import READ_HOST_KEY

ACCESS_KEY = "AKIAMOCKHOSTKEY00001"
SECRET_KEY = "mock/host/secret/key/0000000000000000000"
HOSTS = [
    {"name": "pi-0", "address": "192.168.1.10", "role": "manager", "user": "pi"},
    {"name": "pi-1", "address": "192.168.1.11", "role": "worker"},
    {"name": "nuc", "address": "nuc.lan", "privateAddress": "192.168.1.12", "role": "worker", "port": 2222},
]


def hosts_config(**extra) -> dict:
    config = {
        "sshAllowedCidrs": None,
        "hosts": HOSTS,
        "sshUser": "ubuntu",
        "sshPrivateKey": PRIVATE_KEY,
        "s3AccessKeyId": ACCESS_KEY,
        "s3SecretAccessKey": SECRET_KEY,
    }
    config.update(extra)
    return config


SECRETS = ("sshPrivateKey", "s3AccessKeyId", "s3SecretAccessKey", "mirrorS3AccessKeyId", "mirrorS3SecretAccessKey")
MIRROR_ACCESS_KEY = "AKIAMOCKMIRRORHOST01"
MIRROR_SECRET_KEY = "mock/mirror/host/secret/000000000000000000"


def run_hosts(**extra):
    return run_program(hosts_config(**extra), secret_keys=SECRETS)


def config_problems(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        run_program(config, secret_keys=SECRETS)
    assert info.value.registered == [], "a config error must stop the program before any resource"
    return info.value.problems


@pytest.fixture(scope="module")
def s3_run():
    return run_hosts()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return run_hosts(
        backupTarget="local",
        backupDirectory=str(tmp_path_factory.mktemp("backups")),
        s3AccessKeyId=None,
        s3SecretAccessKey=None,
    )


def assignment(script: str, name: str) -> str | None:
    m = re.search(rf"^{name}=(.*)$", script, re.M)
    return shlex.split(m.group(1))[0] if m and m.group(1) else ("" if m else None)


def test_no_network_instances_or_key_pair(s3_run):
    types = {r.type for r in s3_run.resources}
    assert not {t for t in types if t.startswith("aws:ec2/") or t.startswith("aws:iam/") or t.startswith("tls:")}
    # The bucket is still created, protected, as on EC2.
    bucket = s3_run.of_type("aws:s3/bucket:Bucket")
    assert len(bucket) == 1 and bucket[0].protect


def test_each_host_is_provisioned_over_ssh_with_the_same_user_data(s3_run):
    for plan in HOSTS:
        provision = s3_run.command(f"provision-{plan['name']}")
        assert provision.inputs["create"] == PROVISION
        conn = provision.inputs["connection"]
        assert conn["host"] == plan["address"] and conn["port"] == plan.get("port", 22)
        assert conn["user"] == plan.get("user", "ubuntu")
        script = provision.inputs["stdin"]
        assert script.startswith("#!/usr/bin/env bash") and "# @SWARM_SETTINGS@" not in script
        assert assignment(script, "SWARM_NODE_NAME") == plan["name"]
        assert assignment(script, "SWARM_ADVERTISE_ADDR") == plan.get("privateAddress", plan["address"])
        assert assignment(script, "SWARM_BACKUP_TARGET") == "s3"
        # Without a key of its own the mirror caches on the manager: never with the backup keys.
        assert assignment(script, "SWARM_MIRROR_STORAGE") == "filesystem"
        # The S3 keys go to managers only: a worker backs up, restores and mirrors nothing.
        manager = plan["role"] == "manager"
        assert assignment(script, "SWARM_AWS_ACCESS_KEY_ID") == (ACCESS_KEY if manager else None)
        assert assignment(script, "SWARM_AWS_SECRET_ACCESS_KEY") == (SECRET_KEY if manager else None)
        # The keys ride in stdin, which is secret in the state and in the outputs.
        assert "stdin" in provision.secret_inputs and "stdin" in provision.additional_secret_outputs
        assert SECRET_KEY not in provision.inputs["create"]
        assert "connection" in provision.secret_inputs


def test_the_provision_script_never_reads_the_rest_of_itself_from_stdin():
    # Written to a root-only file and run with stdin closed.
    assert "umask 077" in PROVISION and 'bash "$f" </dev/null' in PROVISION
    assert PROVISION.startswith("sudo ")


def test_the_formation_waits_for_provisioning_and_uses_each_hosts_login(s3_run):
    for plan in HOSTS:
        ready = s3_run.command(f"ready-{plan['name']}")
        assert s3_run.depends_on(ready, s3_run.command(f"provision-{plan['name']}"))
        assert ready.inputs["connection"]["port"] == plan.get("port", 22)
    join = s3_run.command("join-nuc")
    assert join.inputs["create"].endswith(" 192.168.1.10:2377")  # manager 0's advertised address


def test_destroy_backs_up_first_then_every_node_leaves(s3_run):
    backup, teardown = s3_run.command("-backup"), s3_run.command("-teardown")
    assert backup.inputs["delete"].endswith("swarm-node backup")
    assert s3_run.depends_on(backup, teardown)
    leaves = [s3_run.command(f"leave-{h['name']}") for h in HOSTS]
    for plan, leave in zip(HOSTS, leaves, strict=True):
        assert leave.inputs["delete"].endswith("swarm-node leave")
        assert leave.inputs["connection"]["host"] == plan["address"]
        # Destroy deletes dependents first: the backup runs while every node is still in.
        assert s3_run.depends_on(teardown, leave)
        # A host leaves itself after a manager has drained and removed it (its retire
        # depends on it) and before it joins again (its join depends on its retire).
        assert leave.delete_before_replace
        name = plan["name"]
        if name != "pi-0":
            retire = s3_run.command(f"retire-{name}")
            assert s3_run.depends_on(retire, leave) and retire.delete_before_replace
            assert s3_run.depends_on(s3_run.command(f"join-{name}"), retire)


def test_a_host_that_leaves_for_a_new_address_is_provisioned_again_before_it_joins(s3_run):
    for h in HOSTS:
        leave, provision = s3_run.command(f"leave-{h['name']}"), s3_run.command(f"provision-{h['name']}")
        # Nothing runs at `up` (a machine not provisioned yet has nothing to wait for),
        # so pulumi-command dials nothing: the leave is only its delete hook.
        assert leave.inputs.get("create") is None and "leave" in leave.inputs["delete"]
        assert s3_run.depends_on(provision, leave)
        assert s3_run.depends_on(s3_run.command(f"ready-{h['name']}"), provision)


def test_only_a_new_private_address_makes_a_host_a_new_node(s3_run):
    """SSH address, port and user only change how Pulumi reaches a host: a change there
    updates its commands; a new private address retires it and joins it afresh."""
    for h in HOSTS:
        leave = s3_run.command(f"leave-{h['name']}")
        advertised = h.get("privateAddress") or h["address"]
        assert leave.inputs["triggers"] == [advertised]


def test_ec2_mode_has_no_leave_commands():
    run = run_program()
    assert not [c for c in run.commands() if "-leave-" in c.name]


def test_outputs_describe_the_hosts(s3_run):
    out = s3_run.outputs
    assert out["mode"] == "hosts" and out["backupTarget"] == "s3"
    assert out["dockerHost"] == "ssh://pi@192.168.1.10"
    assert out["managerPrivateIps"] == ["192.168.1.10"] and out["managerPublicIps"] == ["192.168.1.10"]
    assert out["workerPrivateIps"] == ["192.168.1.11", "192.168.1.12"]
    assert out["vpcId"] == "" and out["subnetIds"] == [] and out["clusterSecurityGroupId"] == ""
    assert [n["name"] for n in out["nodes"]] == ["pi-0", "pi-1", "nuc"]
    assert out["registryMirrors"] == ["http://192.168.1.10:5000"]
    assert "sshPrivateKey" not in out  # the user's own key is not echoed back
    assert {"workerJoinToken", "managerJoinToken"} <= s3_run.secret_outputs


def test_docker_host_carries_a_non_default_port():
    hosts = [{"name": "box", "address": "127.0.0.1", "privateAddress": "10.0.2.15", "role": "manager", "port": 2222}]
    run = run_hosts(hosts=hosts, backupTarget="none", s3AccessKeyId=None, s3SecretAccessKey=None)
    assert run.outputs["dockerHost"] == "ssh://ubuntu@127.0.0.1:2222"


def test_an_existing_bucket_is_used_not_created():
    run = run_hosts(existingStateBucket="team-backups")
    assert run.of_type("aws:s3/bucket:Bucket") == []
    assert run.outputs["stateBucket"] == "team-backups"
    assert assignment(run.command("provision-pi-0").inputs["stdin"], "SWARM_BUCKET") == "team-backups"


def test_an_existing_bucket_on_ec2_scopes_the_role_to_it():
    run = run_program({"existingStateBucket": "team-backups"})
    assert run.of_type("aws:s3/bucket:Bucket") == []
    policy = run.named("swarm-dev-node-state-access").inputs["policy"]
    assert "arn:aws:s3:::team-backups/swarm/dev/*" in policy


def test_local_backups_go_to_the_pulumi_machine(local_run, tmp_path):
    assert local_run.of_type("aws:s3/bucket:Bucket") == []
    [backup] = [r for r in local_run.of_type("command:local:Command") if r.name.endswith("-backup")]
    create, delete = shlex.split(backup.inputs["create"]), shlex.split(backup.inputs["delete"])
    assert create[:3] == ["python3", "scripts/swarm_backup_local.py", "check"]
    assert delete[:3] == ["python3", "scripts/swarm_backup_local.py", "fetch"]
    assert delete[delete.index("--host") + 1] == "192.168.1.10" and delete[delete.index("--user") + 1] == "pi"
    assert delete[delete.index("--prefix") + 1] == "swarm/dev/"
    # Run where Pulumi starts its providers, the project directory, in whichever checkout.
    assert "dir" not in backup.inputs and (ROOT / "scripts/swarm_backup_local.py").is_file()
    # The key reaches the helper in its environment only, secret in the state.
    assert backup.inputs["environment"]["SWARM_SSH_PRIVATE_KEY"] == PRIVATE_KEY
    assert "environment" in backup.secret_inputs and "environment" in backup.additional_secret_outputs
    assert "PRIVATE KEY" not in backup.inputs["delete"]
    for h in HOSTS:
        assert local_run.depends_on(backup, local_run.command(f"leave-{h['name']}"))
    assert local_run.outputs["backupTarget"] == "local" and local_run.outputs["stateBucket"] == ""


def test_a_teardown_from_another_checkout_or_user_runs_what_the_state_holds():
    """The delete runs with the inputs frozen at the last `up`: none may hold this
    checkout's path or this user's home, expanded (issue 19, item 16)."""
    run = run_hosts(backupTarget="local", s3AccessKeyId=None, s3SecretAccessKey=None)
    frozen = [json.dumps(r.inputs) for r in run.of_type("command:local:Command")]
    assert frozen and not any(str(ROOT) in text or str(Path.home()) in text for text in frozen)
    [backup] = [r for r in run.of_type("command:local:Command") if r.name.endswith("-backup")]
    delete = shlex.split(backup.inputs["delete"])
    assert delete[delete.index("--dir") + 1] == "~/.swarm/backups"  # as written; the helper expands it


def test_a_local_backup_is_staged_before_bootstrap(local_run):
    [stage] = [r for r in local_run.of_type("command:local:Command") if r.name.endswith("-stage-restore")]
    argv = shlex.split(stage.inputs["create"])
    assert argv[2] == "push" and argv[argv.index("--restore") + 1] == "latest"
    assert local_run.depends_on(local_run.command("-bootstrap"), stage)


def test_local_target_keeps_the_mirror_cache_on_the_managers(local_run):
    script = local_run.command("provision-pi-0").inputs["stdin"]
    assert assignment(script, "SWARM_BACKUP_TARGET") == "local"
    assert assignment(script, "SWARM_MIRROR_STORAGE") == "filesystem"
    assert assignment(script, "SWARM_AWS_ACCESS_KEY_ID") is None
    assert assignment(script, "SWARM_BUCKET") == ""


def test_no_backup_target_means_a_new_swarm_every_morning():
    run = run_hosts(backupTarget="none", s3AccessKeyId=None, s3SecretAccessKey=None)
    assert run.of_type("aws:s3/bucket:Bucket") == [] and run.of_type("command:local:Command") == []
    assert not [c for c in run.commands() if c.name.endswith("-backup")]
    assert run.command("-bootstrap").inputs["create"].endswith("bootstrap --restore none --autolock false")
    # The nodes still leave the swarm at destroy.
    assert len([c for c in run.commands() if "-leave-" in c.name]) == len(HOSTS)


def test_no_aws_region_is_needed_without_s3():
    run = run_hosts(**{"aws:region": None, "backupTarget": "local", "s3AccessKeyId": None, "s3SecretAccessKey": None})
    assert assignment(run.command("provision-pi-0").inputs["stdin"], "SWARM_REGION") == ""


BAD = [
    ("even managers", {"hosts": [{**HOSTS[0]}, {**HOSTS[1], "role": "manager"}]}, "odd number"),
    ("no manager", {"hosts": [HOSTS[1]]}, "has 0 manager(s)"),
    ("duplicate name", {"hosts": [HOSTS[0], {**HOSTS[1], "name": "pi-0"}]}, "hosts[1].name repeats 'pi-0'"),
    ("duplicate login", {"hosts": [HOSTS[0], {**HOSTS[1], "address": "192.168.1.10", "privateAddress": "10.0.0.2"}]},
     "192.168.1.10:22 is also hosts[0]'s SSH address"),
    ("duplicate advertised address", {"hosts": [HOSTS[0], {**HOSTS[1], "privateAddress": "192.168.1.10"}]},
     "192.168.1.10 is also advertised by hosts[0]"),
    ("name address needs a private IP", {"hosts": [{**HOSTS[0], "address": "pi0.lan"}]},
     "hosts[0].privateAddress is required"),
    ("unknown field", {"hosts": [{**HOSTS[0], "adress": "x"}]}, "unknown field(s) adress"),
    ("bad role", {"hosts": [{**HOSTS[0], "role": "leader"}]}, "hosts[0].role must be manager or worker"),
    ("bad port", {"hosts": [{**HOSTS[0], "port": 70000}]}, "hosts[0].port must be a TCP port"),
    ("bad name", {"hosts": [{**HOSTS[0], "name": "Pi_0"}]}, "hosts[0].name must be a lowercase host name"),
    ("not a list", {"hosts": {"name": "pi-0"}}, "swarm:hosts must be a list"),
    ("missing key", {"sshPrivateKey": None}, "swarm:sshPrivateKey is required with swarm:hosts"),
    ("missing S3 keys", {"s3SecretAccessKey": None}, "swarm:s3SecretAccessKey is required with swarm:hosts"),
    ("EC2-only setting", {"instanceType": "t3.large"}, "swarm:instanceType applies only when the program creates EC2"),
    ("local keys unused", {"backupTarget": "local"}, "swarm:s3AccessKeyId is not used with swarm:backupTarget local"),
    ("pinned restore without backups", {"backupTarget": "none", "s3AccessKeyId": None, "s3SecretAccessKey": None,
     "restoreFrom": "backups/20261101T000000Z.tar.gz"}, "swarm:restoreFrom names a backup"),
    ("two buckets", {"existingStateBucket": "a-bucket", "stateBucketName": "b-bucket"}, "keep one"),
    ("unknown target", {"backupTarget": "nfs"}, "swarm:backupTarget must be s3, local or none"),
]  # fmt: skip


@pytest.mark.parametrize("config, expected", [(c, e) for _, c, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_hosts_config_stops_before_any_resource(config, expected):
    problems = config_problems(hosts_config(**config))
    assert any(expected in p for p in problems), problems
    # Every line says how to fix it.
    assert all("fix: pulumi config" in p for p in problems), problems


def test_the_same_address_on_two_ports_is_two_machines():
    hosts = [
        {"name": "vm-0", "address": "127.0.0.1", "port": 2222, "privateAddress": "10.0.0.10", "role": "manager"},
        {"name": "vm-1", "address": "127.0.0.1", "port": 2200, "privateAddress": "10.0.0.11", "role": "worker"},
    ]
    run = run_hosts(hosts=hosts)
    assert run.command("join-vm-1").inputs["connection"]["port"] == 2200


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"backupTarget": "local"}, "swarm:backupTarget is local, which is for machines you bring"),
        ({"s3AccessKeyId": ACCESS_KEY}, "swarm:s3AccessKeyId is for machines you bring"),
    ],
)
def test_host_only_settings_are_refused_on_ec2(config, expected):
    problems = config_problems(config)
    assert any(expected in p for p in problems), problems


def test_no_credentials_or_key_in_plain_outputs(s3_run):
    text = repr({k: v for k, v in s3_run.outputs.items() if k not in s3_run.secret_outputs})
    for secret in (ACCESS_KEY, SECRET_KEY, "PRIVATE KEY"):
        assert secret not in text


def test_nothing_the_nodes_run_is_x86_only():
    """ARM hosts (Raspberry Pis, Graviton) run the same scripts and the same mirror image."""
    files = [p for p in (ROOT / "agent").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [ROOT / "components/user-data.sh", *(ROOT / "scripts/stacks").iterdir()]
    pattern = re.compile(r"amd64|x86_64|x86-64|i[3-6]86|platform:|--platform", re.I)
    offenders = [f"{f.name}: {line}" for f in files for line in f.read_text().splitlines() if pattern.search(line)]
    assert offenders == []
    # The mirror image is pinned by the digest of registry 2.8.3's multi-arch index.
    assert DEFAULTS["mirrorImage"].startswith("registry:2.8.3@sha256:")
    # Docker and the AWS CLI come from the distribution's packages, which exist for arm64.
    user_data = (ROOT / "components/user-data.sh").read_text()
    assert "get.docker.com" not in user_data and "awscli-exe-linux" not in user_data


def test_a_machine_you_bring_is_trusted_on_first_use_and_checked_by_every_other_command(s3_run):
    for host in hosts_config()["hosts"]:
        name = host["name"]
        read = s3_run.command(f"-host-key-{name}")
        assert "hostKey" not in read.inputs["connection"]  # the one read, before anything is sent
        assert read.inputs["connection"]["dialErrorLimit"] == 60
        others = [c for c in s3_run.commands() if c.inputs["connection"]["host"] == host["address"] and c is not read]
        assert others, name
        for command in others:
            assert command.inputs["connection"]["hostKey"] == HOST_PUBLIC_KEY, command.name
            assert s3_run.depends_on(command, read), command.name


def test_machines_you_bring_keep_their_host_keys_which_are_read_and_exported(s3_run):
    hosts = hosts_config()["hosts"]
    lines = s3_run.outputs["sshKnownHosts"].splitlines()
    for host in hosts:
        read = s3_run.command(f"-host-key-{host['name']}")
        assert read.inputs["create"] == READ_HOST_KEY and "stdin" not in read.inputs
        port = host.get("port", 22)
        name = host["address"] if port == 22 else f"[{host['address']}]:{port}"
        assert f"{name} {HOST_PUBLIC_KEY}" in lines, lines


def mirror_stdin_files(run) -> dict[str, bytes]:
    (deploy,) = [c for c in run.commands() if c.name.endswith("-mirror-deploy")]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(deploy.inputs["stdin"])))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_the_mirror_caches_in_s3_only_with_a_key_of_its_own(s3_run):
    """The hosts' backup keys are never the mirror's: without swarm:mirrorS3AccessKeyId it
    caches on the manager; with it, that key (and only it) comes on the deploy's stdin."""
    assert "aws-credentials" not in mirror_stdin_files(s3_run)
    run = run_hosts(mirrorS3AccessKeyId=MIRROR_ACCESS_KEY, mirrorS3SecretAccessKey=MIRROR_SECRET_KEY)
    shipped = mirror_stdin_files(run)["aws-credentials"].decode()
    assert MIRROR_ACCESS_KEY in shipped and MIRROR_SECRET_KEY in shipped and ACCESS_KEY not in shipped
    script = run.command("provision-pi-0").inputs["stdin"]
    assert assignment(script, "SWARM_MIRROR_STORAGE") == "s3" and MIRROR_SECRET_KEY not in script
    assert not [r for r in run.resources if r.type.startswith("aws:iam/")]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"mirrorS3AccessKeyId": MIRROR_ACCESS_KEY}, "swarm:mirrorS3SecretAccessKey is missing"),
        ({"mirrorS3AccessKeyId": MIRROR_ACCESS_KEY, "mirrorS3SecretAccessKey": MIRROR_SECRET_KEY,
          "backupTarget": "none", "s3AccessKeyId": None, "s3SecretAccessKey": None},
         "swarm:mirrorS3AccessKeyId is not used with swarm:backupTarget none"),
    ],
)  # fmt: skip
def test_the_mirror_s_key_settings_are_checked(extra, fragment):
    problems = config_problems(hosts_config(**extra))
    assert any(fragment in p and "fix: " in p for p in problems), problems


def test_on_ec2_the_program_makes_the_mirror_s_key():
    with pytest.raises(ConfigError) as info:
        run_program({"mirrorS3AccessKeyId": MIRROR_ACCESS_KEY}, secret_keys=SECRETS)
    assert any("is for machines you bring" in p and "pulumi config rm swarm:mirrorS3AccessKeyId" in p
               for p in info.value.problems), info.value.problems  # fmt: skip
