"""Swarm formation: command order, secrets kept secret, the backup hook, the mirror, user-data."""

from __future__ import annotations

import base64
import email
import gzip
import io
import subprocess
import tarfile

import pytest
import yaml
from harness import (
    BACKUP_KEY,
    MANAGER_TOKEN,
    MIRROR_KEY_ID,
    MIRROR_SECRET,
    PRIVATE_KEY,
    UNLOCK_KEY,
    WORKER_TOKEN,
    require_tool,
    run_program,
)

from agent.swarm_agent.install import tree_digest
from components.agent import AGENT_DIR, agent_bundle, agent_digest
from components.hostkeys import derive_host_key
from components.payload import STACK_FILES, USER_DATA_BUDGET, USER_DATA_LIMIT, credentials_file, digest
from components.rights import node_policy
from components.settings import BACKUP_DIAL_ERROR_LIMIT, DIAL_ERROR_LIMIT

SECRETS = (WORKER_TOKEN, MANAGER_TOKEN, PRIVATE_KEY.strip().splitlines()[1])


@pytest.fixture(scope="module")
def run():
    return run_program({"managerCount": 3, "workerCount": 3})


def leaks(value) -> bool:
    """Whether any mock secret occurs in `value` (never shows the secret itself)."""
    text = str(value)
    return any(secret in text for secret in SECRETS)


def test_commands_run_in_order(run):
    bootstrap = run.command("-bootstrap")
    tokens = run.command("-tokens")
    reconcile = run.command("-reconcile")
    manager_joins = [run.command(f"-join-swarm-dev-manager-{i}") for i in (1, 2)]
    worker_joins = [run.command(f"-join-swarm-dev-worker-{i}") for i in (0, 1, 2)]

    assert run.depends_on(tokens, bootstrap)
    # Managers join one at a time, in a chain after the tokens.
    assert run.depends_on(manager_joins[0], tokens)
    assert run.depends_on(manager_joins[1], manager_joins[0])
    assert not run.depends_on(manager_joins[0], manager_joins[1])
    # Workers join in parallel: after the tokens, not after each other or the managers.
    for worker in worker_joins:
        assert run.depends_on(worker, tokens)
        assert not any(run.depends_on(worker, other) for other in worker_joins + manager_joins if other is not worker)
    # Reconcile waits for every join.
    for join in manager_joins + worker_joins:
        assert run.depends_on(reconcile, join)
    # Every node is waited for before anything runs on it.
    for name in ("manager-0", "manager-1", "worker-2"):
        ready = run.command(f"-ready-swarm-dev-{name}")
        instance = run.named(f"swarm-dev-nodes-{name}")
        assert run.depends_on(ready, instance)
    assert run.depends_on(bootstrap, run.command("-ready-swarm-dev-manager-0"))
    assert run.depends_on(worker_joins[2], run.command("-ready-swarm-dev-worker-2"))


def test_verbs_and_their_arguments(run):
    assert run.command("-bootstrap").inputs["create"] == (
        "sudo /usr/local/sbin/swarm-node bootstrap --restore latest --autolock false"
    )
    assert run.command("-tokens").inputs["create"] == "sudo /usr/local/sbin/swarm-node tokens"
    assert run.command("-join-swarm-dev-manager-1").inputs["create"] == (
        "sudo /usr/local/sbin/swarm-node join manager 10.42.0.10:2377"
    )
    assert run.command("-join-swarm-dev-worker-0").inputs["create"] == (
        "sudo /usr/local/sbin/swarm-node join worker 10.42.0.10:2377"
    )
    assert run.command("-reconcile").inputs["create"] == (
        "sudo /usr/local/sbin/swarm-node reconcile --managers swarm-dev-manager-0,swarm-dev-manager-1,"
        "swarm-dev-manager-2 --workers swarm-dev-worker-0,swarm-dev-worker-1,swarm-dev-worker-2"
    )
    assert run.command("-probe-swarm-dev-manager-1").inputs["create"] == "sudo /usr/local/sbin/swarm-node probe"
    assert run.command("-retire-swarm-dev-manager-1").inputs["delete"] == (
        "sudo /usr/local/sbin/swarm-node retire --name swarm-dev-manager-1 --addr 10.42.16.10"
    )
    teardown = run.command("-teardown")
    assert teardown.inputs["create"] == "sudo /usr/local/sbin/swarm-node teardown-mark --clear"
    assert teardown.inputs["delete"] == "sudo /usr/local/sbin/swarm-node teardown-mark"


def test_restore_source_reaches_bootstrap():
    run = run_program({"restoreFrom": "backups/20261121T230000Z.tar.gz"})
    assert " --restore backups/20261121T230000Z.tar.gz " in run.command("-bootstrap").inputs["create"]
    assert "--allow-unsigned" not in run.command("-bootstrap").inputs["create"]


def test_an_unsigned_restore_is_asked_for_by_its_own_setting_and_for_the_named_backup_alone():
    run = run_program({"restoreFrom": "backups/20261121T230000Z.tar.gz", "restoreUnsigned": True})
    create = run.command("-bootstrap").inputs["create"]
    assert " --restore backups/20261121T230000Z.tar.gz --allow-unsigned " in create


def test_no_secret_in_any_command_string(run):
    commands = run.commands()
    # ready (which installs the agent) and retire per node, probes, backup keys,
    # bootstrap, tokens, joins, reconcile, teardown, backup, mirror, the store's round trip, registry-auth
    assert len(commands) == 6 + 6 + 2 + 3 + 1 + 1 + 5 + 1 + 1 + 1 + 1 + 1 + 1
    leaking = [c.name for c in commands for verb in ("create", "update", "delete") if leaks(c.inputs.get(verb))]
    assert leaking == []


def test_tokens_travel_on_stdin_as_secrets(run):
    for i in (1, 2):
        join = run.command(f"-join-swarm-dev-manager-{i}")
        assert join.inputs["stdin"] == MANAGER_TOKEN
        assert "stdin" in join.secret_inputs and "stdin" in join.additional_secret_outputs
    for i in (0, 1, 2):
        join = run.command(f"-join-swarm-dev-worker-{i}")
        assert join.inputs["stdin"] == WORKER_TOKEN
        assert "stdin" in join.secret_inputs


def test_token_command_is_silent_and_secret(run):
    tokens = run.command("-tokens")
    assert tokens.inputs["logging"] == "none"
    assert {"stdout", "stderr"} <= set(tokens.additional_secret_outputs)


def test_token_outputs_are_secret(run):
    assert run.outputs["workerJoinToken"] == WORKER_TOKEN
    assert run.outputs["managerJoinToken"] == MANAGER_TOKEN
    assert {"workerJoinToken", "managerJoinToken", "sshPrivateKey"} <= run.secret_outputs
    plain = {k: v for k, v in run.outputs.items() if k not in run.secret_outputs}
    assert not leaks(plain)


def test_private_key_only_in_secret_connections(run):
    for command in run.commands():
        connection = command.inputs["connection"]
        assert connection["privateKey"] == PRIVATE_KEY
        assert "connection" in command.secret_inputs
        assert connection["dialErrorLimit"] > 0 and connection["perDialTimeout"] > 0
        assert command.inputs.get("addPreviousOutputInEnv") is False


def test_backup_hook_gives_up_quickly_on_an_unreachable_leader(run):
    # Booting nodes get DIAL_ERROR_LIMIT dials; at night the leader has been up all day,
    # so the teardown stops within seconds (not ten minutes) when it does not answer.
    assert run.command("-backup").inputs["connection"]["dialErrorLimit"] == BACKUP_DIAL_ERROR_LIMIT
    assert run.command("-bootstrap").inputs["connection"]["dialErrorLimit"] == DIAL_ERROR_LIMIT
    assert 0 < BACKUP_DIAL_ERROR_LIMIT < DIAL_ERROR_LIMIT


def test_backup_hook_runs_on_delete_before_the_machines_go(run):
    backup = run.command("-backup")
    assert backup.inputs["delete"] == "sudo /usr/local/sbin/swarm-node backup"
    assert "backup" not in backup.inputs["create"]
    # Deleted before what it depends on: everything the swarm is made of.
    assert run.depends_on(backup, run.command("-reconcile"))
    for instance in run.of_type("aws:ec2/instance:Instance"):
        assert run.depends_on(backup, instance)
    # Never replaced (a replacement would back up against yesterday's machine).
    assert backup.inputs.get("triggers") in (None, [])


def test_teardown_keeps_ssh_routes_and_s3_access_until_the_backup_ran(run):
    """Rules, route associations and the role policy are leaves nothing references: unless
    the machines depend on them, destroy deletes them in parallel with the backup hook."""
    backup = run.command("-backup")
    leaves = [
        *run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"),
        *run.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"),
        *run.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation"),
        *run.of_type("aws:iam/rolePolicy:RolePolicy"),
    ]
    # ... and the pinned workers' logs-only role's policy (swarm:logs cloudwatch, the default).
    assert len(leaves) == 6 + 1 + 1 + 3 + 1 + 1
    for leaf in leaves:
        assert run.depends_on(backup, leaf), leaf.name
        for instance in run.of_type("aws:ec2/instance:Instance"):
            assert run.depends_on(instance, leaf), (instance.name, leaf.name)


def test_backup_on_destroy_false_keeps_the_resource_and_makes_its_delete_a_no_op():
    """Dropping the resource would run its old `delete` (the backup) at the next `up`."""
    enabled, disabled = run_program(), run_program({"backupOnDestroy": False})
    assert enabled.command("-backup").urn == disabled.command("-backup").urn
    assert enabled.command("-backup").inputs["delete"] == "sudo /usr/local/sbin/swarm-node backup"
    assert "swarm-node" not in disabled.command("-backup").inputs["delete"]
    assert disabled.command("-backup").inputs["triggers"] == []  # an update, never a replacement


def test_a_pinned_backup_is_spared_by_pruning():
    run = run_program({"restoreFrom": "backups/20261121T230000Z.tar.gz"})
    assert run.command("-backup").inputs["delete"] == (
        "sudo /usr/local/sbin/swarm-node backup --keep backups/20261121T230000Z.tar.gz"
    )


def test_machine_replacement_reruns_what_depends_on_it(run):
    instance_id = "swarm-dev-nodes-worker-1-id"
    assert instance_id in run.command("-join-swarm-dev-worker-1").inputs["triggers"]
    assert instance_id in run.command("-reconcile").inputs["triggers"]
    assert "swarm-dev-nodes-manager-0-id" in run.command("-bootstrap").inputs["triggers"]


def test_mirror_deploys_the_stack_files_and_redeploys_on_change(run):
    deploy = run.command("-mirror-deploy")
    assert deploy.inputs["create"] == (
        "sudo /usr/local/sbin/swarm-node mirror-deploy --image "
        "registry:2.8.3@sha256:a3d8aaa63ed8681a604f1dea0aa03f100d5895b6a58ace528858a7b332415373"
    )
    assert run.depends_on(deploy, run.command("-reconcile"))
    assert digest(STACK_FILES) in deploy.inputs["triggers"] and MIRROR_KEY_ID not in deploy.inputs["triggers"]
    shipped = shipped_stack_files(deploy)
    # The stack files, and the mirror's own key (its IAM user's): the stdin is secret.
    assert shipped.pop("aws-credentials") == credentials_file(MIRROR_KEY_ID, MIRROR_SECRET)
    assert shipped == {p.name: p.read_bytes() for p in STACK_FILES.iterdir() if p.is_file()}
    assert "stdin" in deploy.secret_inputs
    # One writer, behind Docker's bridge (the metadata service's hop limit of 1 ends there),
    # answering on the manager's own address.
    stack = yaml.safe_load(shipped["mirror.yml"])
    service = stack["services"]["mirror"]
    assert service["deploy"]["replicas"] == 1
    assert service["networks"] == ["bridge"] and stack["networks"]["bridge"] == {"external": True, "name": "bridge"}
    assert service["ports"] == [
        {"target": "${SWARM_MIRROR_PORT:-5000}", "published": "${SWARM_MIRROR_PORT:-5000}", "protocol": "tcp",
         "mode": "host"}
    ]  # fmt: skip


def shipped_stack_files(deploy) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(deploy.inputs["stdin"])))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_the_mirror_s_iam_user_holds_the_mirror_s_rights_and_goes_each_night(run):
    """Its own user, policy and key: none protected (a new key each morning), the policy the
    mirror's statements of components/rights.py on this stack's bucket."""
    user, policy, key = (
        run.of_type(f"aws:iam/{t}")[0] for t in ("user:User", "userPolicy:UserPolicy", "accessKey:AccessKey")
    )
    assert user.inputs["path"] == "/swarm/" and user.inputs["forceDestroy"] is True
    assert policy.inputs["user"] == user.name == key.inputs["user"]  # (the mocks name a user as its resource)
    bucket_arn = "arn:aws:s3:::swarm-dev-state-bucket-0a1b2c3"
    assert policy.inputs["policy"] == node_policy(bucket_arn, "swarm/dev/", "mirror")
    assert not any(r.protect for r in (user, policy, key))
    assert run.depends_on(key, policy)


def test_no_mirror_command_when_disabled():
    run = run_program({"mirror": False})
    assert not [c for c in run.commands() if "mirror" in c.name]


def user_data_parts(run, name: str) -> dict[str, str]:
    """EC2 user-data as cloud-init reads it: MIME parts by content type."""
    raw = gzip.decompress(base64.b64decode(run.named(f"swarm-dev-nodes-{name}").inputs["userDataBase64"]))
    message = email.message_from_bytes(raw)
    assert message.is_multipart(), "user-data is not MIME multipart"
    return {part.get_content_type(): part.get_payload() for part in message.get_payload()}


def user_data_of(run, name: str) -> str:
    return user_data_parts(run, name)["text/x-shellscript"]


def test_user_data_renders_mirrors_env_and_fits_ec2_limit(run):
    text = user_data_of(run, "worker-0")
    assert text.splitlines()[0] in ("#!/bin/bash", "#!/usr/bin/env bash")
    assert "SWARM_REGISTRY_MIRRORS='http://10.42.0.10:5000 http://10.42.16.10:5000 http://10.42.32.10:5000'" in text
    assert "SWARM_NODE_NAME=swarm-dev-worker-0" in text and "SWARM_ROLE=worker" in text
    assert "SWARM_BUCKET=swarm-dev-state-bucket-0a1b2c3" in text and "SWARM_PREFIX=swarm/dev/" in text
    assert "SWARM_REGION=eu-west-1" in text
    assert "# @SWARM_SETTINGS@" not in text
    # EC2 counts the bytes before base64: the gzip.
    compressed = base64.b64decode(run.named("swarm-dev-nodes-worker-0").inputs["userDataBase64"])
    assert compressed[:2] == b"\x1f\x8b" and len(compressed) < USER_DATA_LIMIT
    manager = user_data_of(run, "manager-1")
    assert "SWARM_ADVERTISE_ADDR=10.42.16.10" in manager and "SWARM_ROLE=manager" in manager
    assert not leaks(text) and not leaks(manager)


def test_user_data_without_mirror_has_no_mirror_addresses():
    run = run_program({"mirror": False})
    assert "SWARM_REGISTRY_MIRRORS=''" in user_data_of(run, "worker-0")


def test_the_image_store_is_the_stacks_choice_whatever_the_engine_defaults_to(run):
    """Written either way: Docker 29 turns the containerd store on by itself on fresh installs."""
    assert "SWARM_CONTAINERD_STORE=false" in user_data_of(run, "worker-0")
    on = run_program({"containerdImageStore": True})
    assert "SWARM_CONTAINERD_STORE=true" in user_data_of(on, "manager-0")
    assert '"features": {"containerd-snapshotter": $SWARM_CONTAINERD_STORE}' in user_data_of(on, "manager-0")


def test_user_data_does_only_what_must_happen_before_the_first_ssh(run):
    text = user_data_of(run, "manager-0")
    # No agent inside: it comes over SSH (install-agent); no verb of it is called here.
    assert "swarm-node" not in text.replace("The node agent (swarm-node)", "")
    assert "/usr/local/lib/swarm" not in text
    assert "daemon.json" in text and "/etc/swarm/env" in text


def test_every_node_gets_the_agent_in_its_ready_command_before_any_verb(run):
    for name in ("manager-0", "manager-2", "worker-1"):
        ready = run.command(f"-ready-swarm-dev-{name}")
        assert run.depends_on(ready, run.named(f"swarm-dev-nodes-{name}"))
        # A new machine gets it again; an agent change is an update (stdin and command).
        assert ready.inputs["triggers"] == [f"swarm-dev-nodes-{name}-id"] and "delete" not in ready.inputs
        create = ready.inputs["create"]
        assert agent_digest() in create and ready.inputs["stdin"] == agent_bundle() + "\n"
        # user-data first (it installs python3 where missing), then the agent, then its first verb.
        order = [create.index(s) for s in ("/etc/swarm/ready", "install.py", "swarm-node wait-ready")]
        assert order == sorted(order)
        # Each step stops the chain when it fails.
        assert create.index("install.py") < create.index(" && sudo /usr/local/sbin/swarm-node wait-ready")


def test_the_agent_bundle_is_agent_dir_byte_for_byte(tmp_path):
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(agent_bundle())))) as tar:
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in tar.getmembers())
        tar.extractall(tmp_path, filter="data")
    assert tree_digest(str(tmp_path)) == tree_digest(str(AGENT_DIR)) == agent_digest()
    shipped = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "swarm-node" in shipped and "swarm_agent/cli.py" in shipped and not any("pycache" in s for s in shipped)
    # Stable: the same bytes each time, so an unchanged agent is no diff.
    assert agent_bundle.__wrapped__() == agent_bundle()


def test_no_command_but_ready_mentions_the_agent(run):
    """An agent change must update the ready commands alone: no retire, backup, bootstrap or
    join may carry the digest or the bundle, or it would run (or its delete would) again."""
    for command in run.commands():
        if "-ready-" in command.name:
            continue
        inputs = str(command.inputs)
        assert agent_digest() not in inputs and agent_bundle()[:200] not in inputs, command.name


def test_rendered_user_data_passes_shellcheck(run, tmp_path):
    require_tool("shellcheck")
    path = tmp_path / "user-data.sh"
    path.write_text(user_data_of(run, "manager-0"))
    result = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_largest_user_data_is_within_half_of_ec2s_limit():
    """The largest config: 7 managers, autolock, a 63-character bucket, long tags."""
    config = {"managerCount": 7, "autolock": True, "stateBucketName": "a" * 63}
    run = run_program({**config, "tags": {"team": "v" * 200, "cost-centre": "c" * 200, "owner": "o" * 200}})
    sizes = [len(base64.b64decode(i.inputs["userDataBase64"])) for i in run.of_type("aws:ec2/instance:Instance")]
    assert max(sizes) <= USER_DATA_BUDGET < USER_DATA_LIMIT, sizes


# -- day two: the graph that lets nodes go and come during the day ------------------------------
def host_of(run, node: str) -> str:
    """Where Pulumi's SSH reaches a node (its `ready` check connects to the node itself)."""
    return run.command(f"-ready-swarm-dev-{node}").inputs["connection"]["host"]


def test_bootstrap_hears_every_other_manager_first_and_keeps_their_tokens_secret(run):
    bootstrap = run.command("-bootstrap")
    for i in (1, 2):
        probe = run.command(f"-probe-swarm-dev-manager-{i}")
        assert run.depends_on(bootstrap, probe)
        assert run.depends_on(probe, run.command(f"-ready-swarm-dev-manager-{i}"))
        assert probe.inputs["logging"] == "none" and {"stdout", "stderr"} <= set(probe.additional_secret_outputs)
        assert probe.inputs["connection"]["host"] == host_of(run, f"manager-{i}")
        # Asked again whenever manager 0 is new: that is when bootstrap runs.
        assert "swarm-dev-nodes-manager-0-id" in probe.inputs["triggers"]
    assert MANAGER_TOKEN in bootstrap.inputs["stdin"] and "stdin" in bootstrap.secret_inputs
    assert "stdin" in bootstrap.additional_secret_outputs
    assert not leaks(bootstrap.inputs["create"])


def test_every_node_is_retired_from_a_manager_that_stays_before_its_machine_goes(run):
    for name in ("manager-1", "manager-2", "worker-0", "worker-2"):
        retire = run.command(f"-retire-swarm-dev-{name}")
        # On manager 0, deleted before the node's machine (it depends on it), and created
        # before the node joins (a host with a new address is retired before it joins again).
        assert retire.inputs["connection"]["host"] == host_of(run, "manager-0")
        # No create: at `up` nothing dials manager 0 for it (fifteen sessions at once there
        # would meet sshd's MaxStartups), and a change of connection runs nothing.
        assert retire.inputs.get("create") is None
        assert run.depends_on(retire, run.named(f"swarm-dev-nodes-{name}"))
        assert run.depends_on(run.command(f"-join-swarm-dev-{name}"), retire)
        # Replaced with its machine: a pinned manager first (its successor takes its address).
        assert f"swarm-dev-nodes-{name}-id" in retire.inputs["triggers"]
        assert retire.delete_before_replace == name.startswith("manager")
    # Manager 0 itself is retired from manager 1.
    retire_0 = run.command("-retire-swarm-dev-manager-0")
    assert retire_0.inputs["connection"]["host"] == host_of(run, "manager-1")
    assert run.depends_on(run.command("-bootstrap"), retire_0)


def test_a_teardown_backs_up_then_marks_the_swarm_before_any_retire(run):
    """Destroy deletes dependents first: backup, then the marker, then the retires."""
    backup, teardown = run.command("-backup"), run.command("-teardown")
    assert run.depends_on(backup, teardown)
    for retire in [c for c in run.commands() if "-retire-" in c.name]:
        assert run.depends_on(teardown, retire)
    assert teardown.inputs["triggers"] == [] and backup.inputs["triggers"] == []


def test_a_lone_manager_has_no_retire_and_no_probe():
    run = run_program({"managerCount": 1, "workerCount": 1})
    assert not [c for c in run.commands() if "-probe-" in c.name]
    assert [c.name for c in run.commands() if "-retire-" in c.name] == ["swarm-dev-swarm-retire-swarm-dev-worker-0"]
    assert "stdin" not in run.command("-bootstrap").inputs


def test_the_backups_signing_key_is_kept_and_reaches_only_the_managers_on_a_secret_stdin(run):
    (key,) = [r for r in run.of_type("random:index/randomBytes:RandomBytes") if r.name.endswith("-backup-signing-key")]
    assert key.protect and key.inputs["length"] == 32
    installs = [c for c in run.commands() if "-backup-keys-" in c.name]
    assert sorted(c.name.rsplit("-", 1)[-1] for c in installs) == ["0", "1", "2"]
    assert all("manager" in c.name for c in installs)
    for install in installs:
        assert install.inputs["create"] == "sudo /usr/local/sbin/swarm-node install-backup-keys"
        assert install.inputs["stdin"] == f"{BACKUP_KEY}\n" and "stdin" in install.secret_inputs
    # Bootstrap verifies with it, the backup signs with it.
    assert run.depends_on(run.command("-bootstrap"), run.command("-backup-keys-swarm-dev-manager-0"))
    assert run.depends_on(run.command("-backup"), run.command("-backup-keys-swarm-dev-manager-0"))
    assert not any(BACKUP_KEY in (c.inputs.get(verb) or "") for c in run.commands() for verb in ("create", "delete"))


def test_autolock_reaches_bootstrap_and_its_key_is_a_secret_output():
    locked = run_program({"autolock": True})
    assert locked.command("-bootstrap").inputs["create"].endswith(" --autolock true")
    assert locked.outputs["unlockKey"] == UNLOCK_KEY and "unlockKey" in locked.secret_outputs
    assert not any(UNLOCK_KEY in (c.inputs.get(v) or "") for c in locked.commands() for v in ("create", "delete"))
    # Switching it asks for the tokens (and the unlock key) again.
    plain = run_program({})
    assert plain.outputs["unlockKey"] == ""
    assert plain.command("-tokens").inputs["triggers"] != locked.command("-tokens").inputs["triggers"]


def test_host_keys_are_derived_once_per_node_and_ssh_reads_them(tmp_path):
    ssh_keygen = require_tool("ssh-keygen")
    private, public = derive_host_key("ab" * 32, "swarm-dev-manager-0")
    assert derive_host_key("ab" * 32, "swarm-dev-manager-0") == (private, public)  # byte for byte: no diff
    assert derive_host_key("ab" * 32, "swarm-dev-manager-1")[1] != public
    assert derive_host_key("cd" * 32, "swarm-dev-manager-0")[1] != public
    path = tmp_path / "key"
    path.write_text(private)
    path.chmod(0o600)
    derived = subprocess.run([ssh_keygen, "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == public.split()


def test_every_connection_to_an_ec2_node_checks_its_host_key_and_fails_fast_after_ready(run):
    """pulumi-command checks `host_key` when given (x/crypto FixedHostKey); without it,
    whatever answers at the address gets the signing key, the tokens and the backups."""
    by_host = {node["privateIp"]: derive_host_key(BACKUP_KEY, node["name"])[1] for node in run.outputs["nodes"]}
    by_host.update({node["publicIp"]: by_host[node["privateIp"]] for node in run.outputs["nodes"]})
    commands = run.commands()
    assert commands
    for command in commands:
        connection = command.inputs["connection"]
        assert connection["hostKey"] == by_host[connection["host"]], command.name
        # A wrong key is retried like any dial error: the first command waits for the boot
        # (60 dials, about 4.5 min), every later one fails in about 12 s (10), a hook in 5.
        expected = 60 if "-ready-" in command.name else (5 if command.inputs.get("delete") else 10)
        assert connection["dialErrorLimit"] == expected, command.name


def test_every_ec2_node_gets_its_stable_host_key_and_clients_get_known_hosts(run):
    (seed,) = [r for r in run.of_type("random:index/randomBytes:RandomBytes") if r.name.endswith("-host-key-seed")]
    assert seed.protect
    lines = run.outputs["sshKnownHosts"].splitlines()
    assert "sshKnownHosts" not in run.secret_outputs
    for node in run.outputs["nodes"]:
        private, public = derive_host_key(BACKUP_KEY, node["name"])  # the mocked seed
        # cloud-init writes it before sshd first answers (cc_ssh, its network stage).
        config = yaml.safe_load(user_data_parts(run, node["name"].removeprefix("swarm-dev-"))["text/cloud-config"])
        assert config["ssh_keys"] == {"ed25519_private": private, "ed25519_public": public}
        for address in (node["publicIp"], node["privateIp"]):
            assert f"{address} {public}" in lines
    assert len(lines) == 2 * len(run.outputs["nodes"])
    assert not [c for c in run.commands() if "-host-key-" in c.name]  # nothing sent over an unchecked SSH
    instance = run.named("swarm-dev-nodes-manager-0")
    assert "userDataBase64" in instance.secret_inputs  # the host key makes user-data secret


def test_a_lone_manager_hands_its_state_over_before_its_machine_goes():
    """A one-manager swarm has no manager to retire manager 0 and no probe to join through:
    replacing it restored last night's backup and the day was lost (issue 19, item 11). Its
    delete backs it up first; at the night the teardown's mark makes it a no-op."""
    run = run_program({"managerCount": 1, "workerCount": 1})
    handover = run.command("-handover-swarm-dev-manager-0")
    assert handover.inputs.get("create") is None
    assert handover.inputs["delete"] == "sudo /usr/local/sbin/swarm-node backup --handover"
    assert handover.inputs["connection"]["host"] == host_of(run, "manager-0")
    assert handover.delete_before_replace and "swarm-dev-nodes-manager-0-id" in handover.inputs["triggers"]
    # The successor's bootstrap waits for it; the night marks the swarm before it runs.
    assert run.depends_on(run.command("-bootstrap"), handover)
    assert run.depends_on(run.command("-teardown"), handover)
    assert not [c for c in run.commands() if "-retire-swarm-dev-manager-0" in c.name]
