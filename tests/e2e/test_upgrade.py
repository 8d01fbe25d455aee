"""A live stack takes the Python agent: formed and backed up by the release before it.

The release before is a git worktree of LAST_BASH_AGENT (the bash agent inside
user-data), run by the same engine. Two stacks, one after the other, on the same part
of the bed:
- `upgrade` (3 managers + 1 worker), formed by the old release; mid-day the new program
  installs the agent on the running nodes and changes nothing else (no machine, dockerd,
  retire, backup, bootstrap or join); then an agent change that edits one module and
  removes another reaches every node, whose installed tree (contents, modes, owner)
  equals the repository's; then a night and a morning on the new agent alone.
- `upgrade-morning` (1 manager), formed and backed up by the old release: the first
  morning of the new one restores the bash agent's backup.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from testbed.bed import LOCAL_BUSYBOX
from testbed.engine import MAIN, ROOT, scenario_engine
from testbed.verify import fp, nodes, wait_service

from components import agent as agent_delivery

pytestmark = pytest.mark.e2e

# main before the agent left user-data (the last commit with scripts/node/swarm-node).
LAST_BASH_AGENT = "1ad2c64983062fef59cf8a691c380f24aefc7d14"
PART = (160, 19)
SWARM_LIB = "/usr/local/lib/swarm"
# The bed's config keys the release before does not know (it refuses unknown keys); its
# stacks run without them, on the new release too (no service on ECR, no worker group).
NEWER_SETTINGS = ("swarm:ecrEndpoint", "swarm:ssmEndpoint", "swarm:autoscalingEndpoint", "swarm:logsEndpoint",
                  "swarm:monitoringEndpoint")  # fmt: skip
# What the first `up` of the new release creates on a live stack (URN parts).
NEW_IN_THIS_RELEASE = (
    "-store-check",
    "-registry-auth",
    "swarm:index:MirrorKey",
    "swarm:index:ManagerAddresses",  # the component and its Elastic IPs
    "$aws:ec2/eipAssociation:EipAssociation::",
    "$random:index/randomShuffle:RandomShuffle::",  # the AMI record
    "swarm:index:LogStore",  # swarm:logs cloudwatch: the component, the group, the topic
    "::swarm-upgrade-logs-",  # ... and the alarms (children of the topic: their URNs name it alone)
    "::swarm-upgrade-worker",  # the pinned workers' logs-only role, its policy and profile
)


@pytest.fixture(scope="module")
def old_release(tmp_path_factory):
    path = tmp_path_factory.mktemp("release") / "swarm"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{LAST_BASH_AGENT[:7]}^{{commit}}"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if commit.returncode != 0:
        pytest.fail(f"this clone lacks {LAST_BASH_AGENT[:7]} (a shallow clone?): {commit.stderr.strip()}")
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", str(path), commit.stdout.strip()], check=True, capture_output=True)
    try:
        yield path / "__main__.py"
    finally:
        subprocess.run([*git, "remove", "--force", str(path)], check=False, capture_output=True)


@pytest.fixture(scope="module")
def live(bed, log_dir, old_release):
    for engine in scenario_engine(bed, log_dir, "upgrade", (3, 1), PART):
        engine.program = old_release
        for key in NEWER_SETTINGS:
            engine.config.pop(key)
        yield engine


def machine_marks(engine) -> dict[str, tuple[str, str]]:
    """Per node: its boot id (a restarted machine has a new one) and dockerd's start."""
    marks = {}
    for host in engine.hosts():
        boot = host.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.decode().strip()
        started = host.run(["systemctl", "show", "-P", "ExecMainStartTimestampMonotonic", "docker.service"])
        marks[host.name] = (boot, started.stdout.decode().strip())
    return marks


def installed_tree(host) -> list[str]:
    """What is under /usr/local/lib/swarm/current on the node: path, mode, owner, sha256."""
    script = f"cd {SWARM_LIB}/current/ && find . -type f -printf '%P %m %U:%G ' -exec sha256sum {{}} \\; | sort"
    lines = host.run(["sh", "-c", script]).stdout.decode().splitlines()
    return sorted(" ".join(line.split()[:4]) for line in lines)


def repository_tree(root: Path) -> list[str]:
    files = [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]

    def mode(p: Path) -> int:
        return 755 if p.stat().st_mode & 0o111 else 644

    return sorted(f"{p.relative_to(root)} {mode(p)} 0:0 {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files)


def assert_only_the_agent_changed(result, log_from: int, engine, first: bool = False) -> None:
    """Only `ready` updated (it installs the agent). On the first `up` of the new release
    every command is updated too (each connection now checks the node's host key, with new
    dial limits; an update runs a command's create again, and each verb finds its work
    done: bootstrap `already active`, joins `already a worker`), the morning's store
    check and ECR refresh are new, the role's policy may list versions, and the mirror's own key (its IAM
    user, policy and access key) is new, with which the mirror redeploys behind the bridge
    (its deploy replaced: its stack files changed), and so are the managers' Elastic IPs,
    their associations with the running machines (each manager's public address changes
    this once, then never) and the AMI record. Never another replacement, a deletion, a
    delete hook or a terminated machine."""
    changed = result.changed()
    if first:
        created = [urn for urn, op in changed.items() if op == "create"]
        assert [urn for urn in created if not any(part in urn for part in NEW_IN_THIS_RELEASE)] == []
        assert sum("$aws:ec2/eip:Eip::" in urn for urn in created) == 3, created
        assert sum("$aws:ec2/eipAssociation:EipAssociation::" in urn for urn in created) == 3, created
        assert sum("$aws:iam/accessKey:AccessKey::" in urn for urn in created) == 1, created
        # This release changes the mirror's stack files, its deploy's trigger: it is replaced,
        # which for a command without a delete hook is its create run again.
        replaced = [urn for urn, op in changed.items() if op == "replace"]
        assert all(urn.endswith("-mirror-deploy") for urn in replaced), replaced
        assert set(changed.values()) <= {"update", "create", "replace"}, changed
        others = [
            u
            for u in changed
            if "$command:remote:Command::" not in u
            and not u.endswith("-node-state-access")
            # The worker is given its logs-only profile in place (EC2 associates it, no restart).
            and not u.endswith("-nodes-worker-0")
            and not any(part in u for part in NEW_IN_THIS_RELEASE[1:])
        ]
        assert others == [], others
    else:
        others = {urn: op for urn, op in changed.items() if "-ready-" not in urn}
        assert others == {}, others
        assert set(changed.values()) == {"update"}, changed
    log = engine.log_path.read_text()[log_from:]
    assert "delete hook of" not in log and "terminate " not in log
    assert "another swarm" not in log  # every worker and manager found it is in this one


def test_a_stack_of_the_last_release_forms_with_the_bash_agent(live):
    live.up()
    leader = live.host_of("manager-0")
    leader.run(["docker", "secret", "create", "kept-secret", "-"], input=b"kept")
    leader.docker("service", "create", "--detach", "--quiet", "--name", "kept", "--replicas", "2",
                  "--endpoint-mode", "dnsrr", LOCAL_BUSYBOX, "sleep", "86400")  # fmt: skip
    wait_service(leader, "kept", 2)
    assert leader.run(["test", "-f", f"{SWARM_LIB}/swarm-node"]).returncode == 0  # the bash agent's layout


def test_mid_day_the_new_program_installs_the_agent_and_changes_nothing_else(live):
    before = machine_marks(live)
    live.program = MAIN
    # The new release knows where the bed's CloudWatch is (running machines learn it at
    # their rebuild: user-data is not applied to them).
    live.config.update({"swarm:logsEndpoint": live.bed.s3_endpoint, "swarm:monitoringEndpoint": live.bed.s3_endpoint})
    log_from = len(live.log_path.read_text())
    result = live.up()
    assert_only_the_agent_changed(result, log_from, live, first=True)
    assert sum("-ready-" in urn for urn in result.changed()) == 4
    assert machine_marks(live) == before  # no machine restarted, no dockerd restarted
    for host in live.hosts():
        assert installed_tree(host) == repository_tree(ROOT / "agent"), host.name
        left = host.run(["ls", SWARM_LIB]).stdout.decode().split()
        assert sorted(set(left) - {"incoming"}) == ["current", "releases"], (host.name, left)
        link = host.run(["readlink", "-f", "/usr/local/sbin/swarm-node"]).stdout.decode().strip()
        assert link.startswith(f"{SWARM_LIB}/releases/"), link
    wait_service(live.host_of("manager-0"), "kept", 2)


def test_an_agent_change_reaches_every_node_and_a_removed_module_is_gone(live, tmp_path, monkeypatch):
    tree = tmp_path / "agent"
    shutil.copytree(ROOT / "agent", tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "swarm_agent" / "farewell.py").write_text('"""A module that the next release removes."""\n')
    monkeypatch.setattr(agent_delivery, "AGENT_DIR", tree)
    for step in ("add a module", "change one, remove the other"):
        if step != "add a module":
            (tree / "swarm_agent" / "farewell.py").unlink()
            ready = tree / "swarm_agent" / "ready.py"
            ready.write_text(ready.read_text() + "# changed by test_upgrade\n")
        agent_delivery.agent_digest.cache_clear()
        agent_delivery.agent_bundle.cache_clear()
        before = machine_marks(live)
        log_from = len(live.log_path.read_text())
        result = live.up()
        assert_only_the_agent_changed(result, log_from, live)
        assert sum("-ready-" in urn for urn in result.changed()) == 4
        assert machine_marks(live) == before
        for host in live.hosts():
            assert installed_tree(host) == repository_tree(tree), (step, host.name)
    agent_delivery.agent_digest.cache_clear()
    agent_delivery.agent_bundle.cache_clear()


def test_a_night_and_a_morning_on_the_new_agent_keep_the_swarm(live):
    tokens = fp(live.up().outputs["workerJoinToken"])  # back to the repository's agent
    live.destroy()
    result = live.up()
    assert fp(result.outputs["workerJoinToken"]) == tokens
    assert result.outputs["bootstrapResult"].startswith("bootstrap: restored from backups/")
    leader = live.host_of("manager-0")
    assert "kept-secret" in leader.docker("secret", "ls", "--format", "{{.Name}}").split()
    wait_service(leader, "kept", 2)
    assert all(n["Status"] == "Ready" for n in nodes(leader))


@pytest.fixture(scope="module")
def morning(bed, log_dir, old_release, live):
    # After `live` (same part of the bed): its machines are gone by now.
    for host in live.hosts():
        bed.wipe_host(host.key)
    for engine in scenario_engine(bed, log_dir, "upgrade-morning", (1, 0), PART):
        engine.program = old_release
        for key in NEWER_SETTINGS:
            engine.config.pop(key)
        yield engine


def test_the_first_morning_of_the_new_release_restores_the_bash_agents_backup(morning):
    first = morning.up()
    leader = morning.host_of("manager-0")
    leader.run(["docker", "secret", "create", "from-bash", "-"], input=b"kept")
    morning.destroy()  # the bash agent's backup
    morning.program = MAIN
    result = morning.up()
    assert result.outputs["bootstrapResult"].startswith("bootstrap: restored from backups/")
    assert fp(result.outputs["managerJoinToken"]) == fp(first.outputs["managerJoinToken"])
    leader = morning.host_of("manager-0")
    assert "from-bash" in leader.docker("secret", "ls", "--format", "{{.Name}}").split()


def test_a_lone_manager_replaced_by_day_hands_the_day_over_to_its_successor(morning):
    """One manager: no other to retire it or to join through. Its handover backs it up as its
    machine goes, and the successor restores that, not last night's (issue 19, item 11)."""
    leader = morning.host_of("manager-0")
    leader.run(["docker", "secret", "create", "made-today", "-"], input=b"today")
    leader.docker("service", "create", "--detach", "--name", "today", "--replicas", "1", LOCAL_BUSYBOX,
                  "sleep", "3600")  # fmt: skip
    result = morning.up(replace=[morning.urn("-nodes-manager-0")])
    assert result.outputs["bootstrapResult"].startswith("bootstrap: restored from backups/"), result.outputs
    successor = morning.host_of("manager-0")
    assert "made-today" in successor.docker("secret", "ls", "--format", "{{.Name}}").split()
    assert "today" in successor.docker("service", "ls", "--format", "{{.Name}}").split()
    assert all(n["Status"] == "Ready" for n in nodes(successor))
    handed = [line for line in morning.log_path.read_text().splitlines() if "-handover-" in line and "backup:" in line]
    assert any("backup: wrote backups/" in line for line in handed), handed
    night_from = len(morning.log_path.read_text())
    morning.destroy()  # the night: the handover adds nothing to the teardown's backup
    night = morning.log_path.read_text()[night_from:]
    assert "backup: the teardown's own backup is taken; nothing to hand over" in night
