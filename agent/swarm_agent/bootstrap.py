"""Manager 0's first verb: nothing to do, join the live swarm, restore a backup, or init.

Pulumi runs `bootstrap` on manager 0 once the node is ready, with the other managers'
probes on stdin (one swarm-probe JSON line each). It never makes a second swarm: it joins
through a manager of a swarm with quorum, refuses while one is in a swarm without quorum,
and otherwise restores the chosen backup or starts a new swarm (restore.py). Its stdout
is one swarm-bootstrap line; notes go to stderr. With backups on the machine running
Pulumi (target local), `stage-restore` runs first and stages the copy it pushes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile

from swarm_agent import contract, dockerd, env, lock, metrics, paths, restore, run
from swarm_agent.env import NodeEnv
from swarm_agent.run import AgentError, note

LEADER_RE = re.compile(r"^[A-Za-z0-9.:_-]+:[0-9]+$")
STAGED_RE = re.compile(r"^backups/(latest|[A-Za-z0-9._-]+\.tar\.gz(\.sha256|\.meta)?)$")


def bootstrap(args) -> None:
    """The verb, and the metrics the morning's alarms read: MorningFailed, and on success
    MorningSeconds, how long this machine took from user-data's start to a working swarm."""
    try:
        with lock.held(getattr(args, "verb", None) or "bootstrap", 900):
            _bootstrap(args)
    except Exception:
        metrics.report({"MorningFailed": 1})
        raise
    took = metrics.morning_seconds()
    metrics.report({"MorningFailed": 0, **({"MorningSeconds": took} if took is not None else {})})


def _bootstrap(args) -> None:
    node = env.load()
    dockerd.wait_up(120)
    info = dockerd.swarm_info()
    state = info.get("LocalNodeState", "")
    if state == "active":
        if not dockerd.is_active_manager(info):
            raise AgentError("bootstrap: this node is an active swarm worker; run bootstrap on manager 0")
        apply_autolock(args.autolock)
        _report("already-active", f"bootstrap: already active (node {info.get('NodeID', '')})")
        return
    if state == "locked":
        raise AgentError(
            "bootstrap: the swarm on this node is locked; run 'docker swarm unlock' (the key: 'pulumi stack output "
            "--show-secrets unlockKey') or 'docker swarm leave --force', then retry"
        )
    if state != "inactive":
        raise AgentError(
            f"bootstrap: swarm state is '{state}'; run 'docker swarm leave --force' on this node, then retry"
        )
    node.require_addr()
    # Never a second swarm: the other managers' probes come on stdin (Pulumi ran them).
    joined = join_live_swarm(node, _read_probes())
    if joined:
        action, result, restored_from = "joined", joined, None
    else:
        wanted = "none" if node.target == "none" else args.restore
        unsigned = getattr(args, "allow_unsigned", False)
        action, result, restored_from = restore.restore_or_init(node, wanted, allow_unsigned=unsigned)
    apply_autolock(args.autolock)
    _report(action, result, restored_from)


def _report(action: str, result: str, restored_from: str | None = None) -> None:
    print(contract.line("swarm-bootstrap", action=action, result=result, restored_from=restored_from), flush=True)


def _read_probes() -> list[dict]:
    """The swarm-probe lines on stdin; none when stdin is a terminal (a person running it)."""
    if sys.stdin is None or sys.stdin.isatty():
        return []
    try:
        return contract.read_all("swarm-probe", sys.stdin.read())
    except contract.ContractError as error:
        raise AgentError(f"bootstrap: stdin is not the other managers' probes: {error}") from None


def join_live_swarm(node: NodeEnv, probes: list[dict]) -> str:
    """Join as a manager through the first other manager of this environment that is in a
    swarm with quorum (its probe brought the token): the result line, or "" if none is in
    a swarm. Refuses if one is, but without quorum: a restore or an init here would make a
    second swarm beside it."""
    stuck = ""
    for probe in probes:
        addr, state = probe["addr"], probe["state"]
        if state == "active" and probe["manager"] and probe["quorum"] and probe.get("token"):
            if not LEADER_RE.match(addr):
                raise AgentError(f"bootstrap: a manager's probe gives the address {addr!r}, not HOST:PORT")
            from swarm_agent import membership  # here: bootstrap needs it only to join

            membership.join_swarm(node, "manager", addr, probe["token"])
            return f"bootstrap: joined the live swarm through {addr} as a manager; nothing restored"
        if state == "down" and probe.get("raft_on_disk") is not False:
            # No answer is not "no swarm": its disk holds one (or an older probe cannot say).
            _refuse_beside_a_silent_manager(addr)
        if state not in ("inactive", "down"):
            manager, quorum = _flag(probe["manager"]), _flag(probe["quorum"])
            stuck += f" {addr} (swarm {state}, manager {manager}, quorum {quorum})"
    if stuck:
        raise AgentError(
            f"bootstrap: refusing to start a second swarm beside the one these managers are in:{stuck}. Bring that "
            "swarm's quorum back (its other managers), or on one of them run 'docker swarm init --force-new-cluster "
            "--advertise-addr <its address>', then 'pulumi up' again."
        )
    return ""


def _refuse_beside_a_silent_manager(addr: str) -> None:
    raise AgentError(
        f"bootstrap: refusing to restore or start a swarm: the manager at {addr} has a dockerd that does not "
        f"answer and a swarm's state on its disk ({paths.SWARM_DIR}/raft), so a swarm may be live there. Start "
        "Docker on it ('sudo swarm-node docker-service start') and 'pulumi up' again: manager 0 then joins that "
        "swarm if it has quorum. If that state is to go, 'sudo docker swarm leave --force' there first."
    )


def _flag(value: bool) -> str:
    return "true" if value else "false"


def apply_autolock(autolock: str | None) -> None:
    """swarm:autolock, cluster-wide (nothing when unset or already so). Enabling prints the
    unlock key: run.docker keeps it, so it goes nowhere but `tokens`, which Pulumi keeps secret."""
    if not autolock:
        return
    if autolock not in ("true", "false"):
        raise AgentError("bootstrap: --autolock wants true or false")
    if _flag(dockerd.autolock_enabled()) == autolock:
        return
    run.docker("swarm", "update", f"--autolock={autolock}")
    note(f"bootstrap: autolock is now {autolock}")


@lock.exclusive(600)
def stage_restore(args) -> None:
    """Backup target local: the machine running Pulumi pushes backups/latest and the backup
    it names (with its .sha256 and .meta) as a plain tar on stdin; bootstrap then verifies
    them as it verifies S3 objects."""
    node = env.load()
    if node.target != "local":
        raise AgentError(f"stage-restore: this swarm's backups go to {node.target}, not to the Pulumi machine")
    work = tempfile.mkdtemp(dir=paths.WORK_DIR, prefix="swarm-stage.")
    try:
        archive = os.path.join(work, "stage.tar")
        with open(archive, "wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
        listing = run.call("tar", "-tf", archive, check=False)
        if listing.returncode != 0:
            raise AgentError("stage-restore: stdin is not a tar")
        names = listing.stdout.splitlines()
        if any(not STAGED_RE.match(name) for name in names):
            raise AgentError(
                "stage-restore: the archive may only hold backups/latest and backups/<name>.tar.gz[.sha256|.meta]"
            )
        _fresh_restore_dir(node.store)
        run.call("tar", "-xf", archive, "--no-same-owner", "-C", node.store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"stage-restore: staged {sum(1 for name in names if name)} file(s) in {node.store}")


def _fresh_restore_dir(store_dir: str) -> None:
    """An empty RESTORE_DIR with the store's directory in it, both root-only (install -d -m 0700)."""
    shutil.rmtree(paths.RESTORE_DIR, ignore_errors=True)
    for directory in (paths.RESTORE_DIR, store_dir):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o700)
