"""This node's membership of the swarm: asked about, joined, left.

`probe` runs on every other manager before manager 0 bootstraps (its answer tells
bootstrap whether a live swarm exists and brings the manager join token); `tokens` runs
on manager 0 after bootstrap and gives Pulumi the join tokens and the unlock key; `join`
runs on every other node with the token on stdin; `leave` runs at `pulumi destroy` on
machines the user brings, which stay, so they are left clean and reusable. A join token
travels on stdin and in the body of a POST to Docker's API socket, never in an argv.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sys

from swarm_agent import contract, dockerd, env, lock, paths, run
from swarm_agent.env import NodeEnv
from swarm_agent.run import AgentError, CallFailed

LEADER_RE = re.compile(r"^[A-Za-z0-9.:_-]+:[0-9]+$")
CONTAINER_ID_RE = re.compile(r"^[a-z0-9]+$")
# A token an error message quotes is never shown (the message reaches Pulumi's log).
TOKEN_IN_TEXT = re.compile(r'SWMTKN-[^"\s]*')
JOIN_TRIES = 10


def probe(args) -> None:
    """A manager's answer to a manager 0 that bootstraps: one line, which Pulumi keeps
    secret (it carries the manager join token when this node is a manager of a swarm
    with quorum)."""
    node = env.load()
    info = dockerd.swarm_info() if dockerd.is_up() else {}
    state = info.get("LocalNodeState") or "down"  # {}: dockerd does not answer
    if state not in contract.SWARM_STATES:
        run.note(f"probe: docker reports the swarm state '{state}'; answering 'error'")
        state = "error"
    manager = state == "active" and bool(info.get("ControlAvailable"))
    quorum, token = False, None
    # `docker node ls` answers only where the managers have a leader: a quorum.
    if manager and dockerd.has_leader():
        quorum = True
        token = _join_token("probe", "manager")
    addr = f"{node.advertise_addr or 'unknown'}:2377"
    # A dockerd that does not answer may still hold a swarm: say whether its state is here.
    on_disk = os.path.isdir(os.path.join(paths.SWARM_DIR, "raft")) if state == "down" else None
    record = {"addr": addr, "state": state, "manager": manager, "quorum": quorum, "token": token}
    print(contract.line("swarm-probe", **record, raft_on_disk=on_disk))


def tokens(args) -> None:
    """The join tokens and, with autolock, the unlock key, as one line Pulumi keeps secret."""
    from swarm_agent import keys  # written beside this module; imported when needed

    env.load()
    dockerd.require_manager("tokens")
    worker = _join_token("tokens", "worker")
    manager = _join_token("tokens", "manager")
    unlock = keys.read_unlock_key()
    print(contract.line("swarm-tokens", worker=worker, manager=manager, unlock=unlock or None))


def _join_token(verb: str, role: str) -> str:
    token = run.docker("swarm", "join-token", "-q", role).stdout.strip()
    if not contract.TOKEN_RE.match(token):
        raise AgentError(f"{verb}: docker returned something that is not a join token")
    return token


@lock.exclusive(600)
def join(args) -> None:
    """Join the swarm as args.role through args.leader (HOST:PORT); the token on stdin."""
    role, leader = args.role, args.leader
    if role not in ("manager", "worker"):
        raise AgentError("join: role must be manager or worker")
    if not LEADER_RE.match(leader):
        raise AgentError(f"join: leader must be HOST:PORT, got '{leader}'")
    token = re.sub(r"[\r\n\t ]", "", sys.stdin.readline())
    if not contract.TOKEN_RE.match(token):
        raise AgentError("join: stdin did not carry a swarm join token (SWMTKN-...)")
    node = env.load()
    dockerd.wait_up(120)
    info = dockerd.swarm_info()
    state = info.get("LocalNodeState", "")
    if state == "active" and not same_swarm(token):
        state = _leave_another_swarm(info)
    if state == "active":
        now_role = "manager" if info.get("ControlAvailable") else "worker"
        if now_role != role:
            raise AgentError(
                f"join: this node is already a {now_role}; change it on a manager with "
                f"'docker node promote|demote {socket.gethostname()}'"
            )
        print(f"join: already a {role}")
        return
    if state == "locked":
        raise AgentError("join: the swarm on this node is locked; run 'docker swarm leave --force', then retry")
    if state in ("pending", "error"):
        _quietly("swarm", "leave", "--force")
    join_swarm(node, role, leader, token)
    print(f"join: joined {leader} as {role} (node {dockerd.swarm_info().get('NodeID', '')})")


def token_ca_digest(token: str) -> str:
    """The sha256 (hex) of the root CA a join token names: swarmkit's GenerateJoinToken puts
    it, in base 36, before the secret (SWMTKN-1-<ca>-<secret>, FIPS: SWMTKN-2-1-<ca>-<secret>)."""
    return format(int(token.split("-")[-2], 36), "064x")


def node_ca_digest() -> str | None:
    """The sha256 of this node's swarm root CA, as swarmkit digests it (the PEM's bytes)."""
    try:
        with open(os.path.join(paths.SWARM_DIR, "certificates", "swarm-root-ca.crt"), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def same_swarm(token: str) -> bool:
    """Whether this node's swarm is the one the token joins (its CA; unknown counts as yes)."""
    mine = node_ca_digest()
    try:
        return mine is None or mine == token_ca_digest(token)
    except ValueError:
        return True  # a token whose CA part is not base 36: Docker itself refuses it


def _leave_another_swarm(info: dict) -> str:
    """A worker in a swarm other than the token's (its manager was replaced and started a new
    one, or restored another) leaves it; a manager is never left behind silently."""
    if info.get("ControlAvailable"):
        raise AgentError(
            "join: this node is a manager of another swarm than the one it is asked to join (its root CA is not "
            "the token's): run 'docker swarm leave --force' on it if that swarm is to go, then 'pulumi up'"
        )
    run.note("join: this worker is in another swarm than the token's (another root CA): leaving it")
    _quietly("swarm", "leave", "--force")
    return "inactive"


def join_swarm(env: NodeEnv, role: str, leader: str, token: str) -> None:
    """Join as `role` through `leader` by Docker's API socket (the token in the body only),
    tried up to 10 times; then wait (60 s) until this node's swarm is active."""
    if not contract.TOKEN_RE.match(token):
        raise AgentError("join: that is not a swarm join token (SWMTKN-...)")
    if not LEADER_RE.match(leader):
        raise AgentError(f"join: leader must be HOST:PORT, got '{leader}'")
    listen = f"{env.require_addr()}:2377" if role == "manager" else "0.0.0.0:2377"
    body = {"ListenAddr": listen}
    if env.advertise_addr:
        body["AdvertiseAddr"] = env.advertise_addr
    body.update({"RemoteAddrs": [leader], "JoinToken": token})
    code = 0
    for attempt in range(1, JOIN_TRIES + 1):
        code, text = dockerd.api_post("/swarm/join", body, 120)
        if code == 200:
            break
        message = TOKEN_IN_TEXT.sub("SWMTKN-<redacted>", text)[:400]
        # 503 "already part of a swarm" can mean an earlier try did succeed.
        if dockerd.local_state() == "active":
            break
        run.note(f"join: try {attempt}/{JOIN_TRIES} got HTTP {code:03d}: {message or 'no response'}")
        if "InvalidArgument" in message or "invalid join token" in message:
            break
        run.pause(3)
    run.wait_until(
        lambda: dockerd.local_state() == "active",
        60,
        lambda: f"join: could not join {leader} as {role} (last HTTP {code:03d})",
    )


@lock.exclusive(600)
def leave(args) -> None:
    """`pulumi destroy` on machines the user brings: they stay, so leave them clean and reusable."""
    dockerd.wait_up(60)
    state = dockerd.local_state()
    if state != "inactive":
        run.docker("swarm", "leave", "--force")
    run.wait_until(
        lambda: dockerd.local_state() == "inactive",
        60,
        lambda: f"leave: still '{dockerd.local_state()}' after 60s",
        interval=2,
    )
    remove_task_containers()
    for path in (paths.CREDS_FILE, paths.SIGNING_KEY, paths.RESTORE_DIR, paths.STACK_DIR, paths.READY):
        _remove(path)
    print(f"leave: left the swarm (was {state}); credentials and staged backups removed")


def remove_task_containers() -> None:
    """Swarm removes its task containers when a node leaves, but not one its agent was still
    starting at that moment (seen right after a backup's restart of dockerd): they belong
    to no swarm now."""
    deadline = run.now() + 60
    while True:
        listed = run.docker("ps", "-aq", "--filter", "label=com.docker.swarm.task.id").stdout.split()
        if not listed:
            return
        bad = [c for c in listed if not CONTAINER_ID_RE.match(c)]
        if bad:
            raise AgentError(f"leave: 'docker ps -q' printed {bad[0][:40]!r}, not a container id")
        if run.now() >= deadline:
            raise AgentError(f"leave: swarm task containers remain after 60s: {' '.join(listed)}")
        _quietly("rm", "-f", *listed)
        run.pause(1)


def _quietly(*args: str) -> None:
    """A docker call whose failure changes nothing (bash's `|| true`)."""
    try:
        run.docker(*args, check=False)
    except CallFailed:  # timed out
        pass


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
