"""The node as a machine: ready for the swarm, its SSH keys, its dockerd, its disk.

`wait-ready` runs first on every node (Pulumi's `ready` command); `authorize-key` adds
your own key pair when you switch to it; `docker-service` is dockerd's start and stop
for people and scripts; `cleanup-images` is the daily timer's prune.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import sys

from swarm_agent import dockerd, engines, env, lock, paths, run
from swarm_agent.run import AgentError

PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp[0-9]+) [A-Za-z0-9+/=]+( .*)?$")


def wait_ready(args) -> None:
    """Until user-data has finished and dockerd answers; stops at once if user-data failed
    (its trap leaves the failing line in /etc/swarm/failed)."""

    def ready():
        if os.path.exists(paths.FAILED):
            with open(paths.FAILED) as handle:
                why = handle.read().strip()
            raise AgentError(f"user-data failed: {why}; see /var/log/swarm-user-data.log")
        if not os.path.exists(paths.READY):
            return ""
        # One docker call: it answers and says which version it is.
        result = run.docker("info", "--format", "{{.ServerVersion}}", check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def why() -> str:
        state = "dockerd not answering" if os.path.exists(paths.READY) else "user-data still running"
        return f"wait-ready: not ready after {args.timeout}s ({state})"

    version = run.wait_until(ready, args.timeout, why)
    refused = engines.refusal(version, env.load().get("SWARM_ROLE"))
    if refused:
        raise AgentError(f"wait-ready: {refused}")
    print(f"wait-ready: docker {version} ready")


def authorize_key(args) -> None:
    """Add the OpenSSH public key on stdin to the SSH user's authorized_keys, once."""
    key = sys.stdin.readline().strip()
    if not PUBLIC_KEY.match(key):
        raise AgentError("authorize-key: stdin is not an OpenSSH public key line")
    user = env.load().require("SWARM_SSH_USER")
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise AgentError(f"authorize-key: there is no user {user}") from None
    ssh_dir = os.path.join(account.pw_dir, ".ssh")
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    os.chown(ssh_dir, account.pw_uid, account.pw_gid)
    path = os.path.join(ssh_dir, "authorized_keys")
    body = key.split()[1]
    existing = open(path).read() if os.path.exists(path) else ""
    if any(line.split()[1:2] == [body] for line in existing.splitlines() if line.strip()):
        print("authorize-key: already authorized")
        return
    with open(path, "a") as handle:
        handle.write(key + "\n")
    os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(path, 0o600)
    print(f"authorize-key: authorized for {user} (group {grp.getgrgid(account.pw_gid).gr_name})")


@lock.exclusive(600)
def docker_service(args) -> None:
    dockerd.service(args.action)


def cleanup_images(args) -> None:
    """Prune images unused for 24 hours (those labelled swarm.keep are spared). A stopped
    dockerd is left stopped: calling docker would start it through its socket. Under the
    node's lock, taken first, so a backup cannot stop dockerd between the check and the prune."""
    try:
        with lock.held("cleanup-images", 0):  # a backup or bootstrap first; the next timer prunes
            if dockerd.has_systemd() and "docker.service" not in dockerd.active_units():
                print("cleanup-images: docker.service is not running; nothing pruned")
                return
            _prune()
    except lock.Busy as busy:
        print(f"cleanup-images: nothing pruned: {busy}")


def _prune() -> None:
    dockerd.wait_up(60)
    result = run.docker(
        "image", "prune", "-a", "-f", "--filter", "until=24h", "--filter", "label!=swarm.keep",
        timeout=run.DOCKER_LONG_TIMEOUT,
    )  # fmt: skip
    sys.stdout.write(result.stdout)
