"""dockerd itself: its service and socket, whether it is up, its swarm state, its API.

Debian's, Ubuntu's and Docker's own packages start dockerd through docker.socket:
stopping docker.service alone leaves the socket listening, and the next client (a
`docker info` included) starts the daemon again. So the socket is stopped and started
with the service, and "down" is told by the init system and the process list, never by
asking the daemon. Where there is no systemd, the SysV init script does the same job.
"""

from __future__ import annotations

import http.client
import json
import os
import socket

from swarm_agent import paths, run
from swarm_agent.run import AgentError, CallFailed, call, docker, systemctl, wait_until, which

UNITS = ("docker.socket", "docker.service")


def has_systemd() -> bool:
    if not os.path.isdir(paths.SYSTEMD_RUN):
        return False
    try:
        which("systemctl")
    except AgentError:
        return False
    return True


def docker_units() -> list[str]:
    """The docker units systemd knows (the socket is missing on some packagings)."""
    return [u for u in UNITS if systemctl("show", "-P", "LoadState", u, check=False).stdout.strip() == "loaded"]


def service(action: str) -> None:
    """start | stop | restart | enable dockerd and its socket, as the init system does it."""
    if action not in ("start", "stop", "restart", "enable"):
        raise AgentError(f"docker-service: unknown action '{action}' (start, stop, restart, enable)")
    if has_systemd():
        units = docker_units()
        if not units:
            raise AgentError(f"cannot {action} docker: systemd has no docker.service")
        if action in ("start", "restart"):
            # docker.service allows 3 starts a minute (StartLimitBurst): a boot, user-data's
            # restart and a backup's stop and start can use them up. Starts asked for here
            # are deliberate, so they do not count against it.
            systemctl("reset-failed", *units, check=False)
        if action == "restart":
            systemctl("restart", "docker.service")  # the socket keeps listening meanwhile
        else:
            systemctl(action, *units)
        return
    if os.access("/etc/init.d/docker", os.X_OK):
        if action != "enable":  # sysvinit boot order is the package's job
            call("service", "docker", action, timeout=120)
        return
    raise AgentError(f"cannot {action} docker: no systemd and no /etc/init.d/docker")


def dockerd_running() -> bool:
    """Whether a dockerd process exists: a look at /proc, no client that could wake it."""
    for entry in os.listdir(paths.PROC):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(paths.PROC, entry, "comm")) as handle:
                if handle.read().strip() == "dockerd":
                    return True
        except OSError:
            continue
    return False


def active_units() -> list[str]:
    if not has_systemd():
        return []
    return [u for u in docker_units() if systemctl("is-active", "--quiet", u, check=False).returncode == 0]


def is_down() -> bool:
    return not active_units() and not dockerd_running()


def is_up() -> bool:
    return docker("info", "--format", "{{.ServerVersion}}", check=False).returncode == 0


def wait_up(timeout: float = 120) -> None:
    wait_until(is_up, timeout, lambda: f"dockerd did not answer 'docker info' within {timeout:g}s")


def wait_down(timeout: float = 60) -> None:
    def why() -> str:
        left = " ".join(active_units()) or ("a dockerd process" if dockerd_running() else "nothing")
        return f"dockerd did not stop within {timeout:g}s (still there: {left})"

    wait_until(is_down, timeout, why, interval=0.5)


def stop(timeout: float = 60) -> None:
    service("stop")
    wait_down(timeout)


def start(timeout: float = 120) -> None:
    service("start")
    wait_up(timeout)


# -- the swarm as this daemon sees it ------------------------------------------------------
def swarm_info() -> dict:
    """`docker info`'s Swarm section as JSON (LocalNodeState, NodeID, ControlAvailable,
    Cluster...); an empty dict when the daemon does not answer."""
    result = docker("info", "--format", "{{json .Swarm}}", check=False)
    if result.returncode != 0:
        return {}
    try:
        return json.loads(result.stdout or "{}") or {}
    except json.JSONDecodeError:
        raise AgentError(f"docker info printed something that is not JSON: {result.stdout[:200]!r}") from None


def local_state() -> str:
    return swarm_info().get("LocalNodeState", "") or "unknown"


def in_no_swarm(timeout: float = 60) -> bool:
    """dockerd is up and this node is in no swarm: a lone manager whose morning failed before
    its swarm formed (a backup refused). The delete hooks of that morning's steps (the
    handover, the workers' retires) have nothing to do then, and must let the teardown go."""
    wait_up(timeout)
    return local_state() == "inactive"


def is_active_manager(info: dict | None = None) -> bool:
    info = swarm_info() if info is None else info
    return info.get("LocalNodeState") == "active" and bool(info.get("ControlAvailable"))


def require_manager(verb: str) -> dict:
    wait_up(60)
    info = swarm_info()
    if not is_active_manager(info):
        state = info.get("LocalNodeState", "unknown")
        raise AgentError(f"{verb}: this node is not an active swarm manager (state: {state})")
    return info


def has_leader() -> bool:
    """`docker node ls` answers only where the managers have a leader: a quorum."""
    return docker("node", "ls", "-q", check=False).returncode == 0


def wait_leader(timeout: float) -> None:
    wait_until(
        has_leader,
        timeout,
        lambda: (
            f"the swarm has no leader after {timeout:g}s: it has lost its quorum "
            "('docker node ls' on a manager says why)"
        ),
    )


def wait_active_manager(timeout: float = 120) -> None:
    wait_until(is_active_manager, timeout, lambda: f"swarm did not become active on this manager within {timeout:g}s")


def server_version() -> str:
    result = docker("version", "--format", "{{.Server.Version}}", check=False)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def autolock_enabled() -> bool:
    spec = ((swarm_info().get("Cluster") or {}).get("Spec") or {}).get("EncryptionConfig") or {}
    return bool(spec.get("AutoLockManagers"))


def raft_retry(*args: str, timeout: float = 30) -> None:
    """A manager's write, retried for up to `timeout` s while Raft elects a leader
    ("raft proposal dropped", "does not have a leader"); other errors stop at once."""
    deadline = run.now() + timeout
    while True:
        try:
            docker(*args)
            return
        except CallFailed as error:
            transient = any(s in error.stderr for s in ("proposal dropped", "have a leader", "leadership"))
            if not transient:
                raise
            if run.now() >= deadline:
                raise AgentError(f"docker {' '.join(args)}: still no leader after {timeout:g}s: {error}") from None
        run.pause(1)


# -- Docker's API through its socket: a body with a secret never reaches an argv ----------
class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def api_post(path: str, body: dict, timeout: float) -> tuple[int, str]:
    """POST `body` as JSON to Docker's API; (HTTP status, response text), 0 when none."""
    connection = _UnixConnection(paths.DOCKER_SOCKET, timeout)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as error:
        return 0, str(error)
    finally:
        connection.close()
