"""The backups' keys on a manager: the stack's signing key and the swarm's unlock key.

`install-backup-keys` runs on every manager when Pulumi creates it (and when the key is
made): it keeps the hex key that signs this stack's backups, root-only. Managers alone
back up and restore, so only they hold it. The rest is what `backup` (and a restore)
do with the keys: read the signing key, read the unlock key of an autolocked swarm,
seal it beside a backup, check that it opens a backup's node key, and unlock dockerd
after a backup's restart. The cryptography is keytool's, called in process; a key
never reaches an argv.
"""

from __future__ import annotations

import os
import re
import sys

from swarm_agent import contract, dockerd, keytool, paths, run
from swarm_agent.keytool import KeytoolError
from swarm_agent.run import AgentError

HEX_KEY = re.compile(r"[0-9a-f]{64}")


def install_backup_keys(args) -> None:
    """stdin's first line: the 64-hex signing key. Old programs sent swarm-keytool as a
    second line; the keytool is now part of the agent, so that line is ignored."""
    key = sys.stdin.readline().rstrip("\n")
    if not HEX_KEY.fullmatch(key):
        raise AgentError("install-backup-keys: stdin's first line is not a 64-digit hex key")
    write_root_only(paths.SIGNING_KEY, key + "\n")
    print("install-backup-keys: installed")


def write_root_only(path: str, text: str) -> None:
    """`text` into `path`, mode 0600 from its first byte, replaced in one step (a reader
    sees the old key or the new one, never half of one)."""
    scratch = path + ".new"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a .new left over from before may have had another mode
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(scratch, path)


def read_signing_key() -> bytes:
    """The stack's signing key. Never empty: keytool would fall back to its own path."""
    try:
        with open(paths.SIGNING_KEY) as handle:
            text = handle.read().strip()
    except OSError:
        raise AgentError(f"the backup signing key is missing ({paths.SIGNING_KEY}): run 'pulumi up'") from None
    if not HEX_KEY.fullmatch(text):
        raise AgentError(f"the backup signing key in {paths.SIGNING_KEY} is not 64 hex digits: run 'pulumi up'")
    return bytes.fromhex(text)


def read_unlock_key() -> str:
    """Autolock: the swarm's unlock key as it is now (so a rotated one is picked up), held
    in this process only; "" when autolock is off."""
    if not dockerd.autolock_enabled():
        return ""
    key = run.docker("swarm", "unlock-key", "-q").stdout.strip()
    if not contract.UNLOCK_RE.match(key):
        raise AgentError("'docker swarm unlock-key -q' did not print an unlock key")
    return key


def unlock_after_restart(unlock_key: str) -> None:
    """With autolock, dockerd comes back locked: unlock it through the API socket, the
    key in the request's body (no argv ever holds it)."""
    if not unlock_key:
        return
    seen = {"state": ""}

    def settled() -> str:
        seen["state"] = dockerd.local_state()
        return seen["state"] if seen["state"] in ("locked", "active") else ""

    def why() -> str:
        return f"backup: the swarm is '{seen['state']}', neither locked nor active, 60s after docker started"

    state = run.wait_until(settled, 60, why)
    if state != "locked":
        return
    status, _ = dockerd.api_post("/swarm/unlock", {"UnlockKey": unlock_key}, 60)
    if status != 200:
        raise AgentError(
            f"backup: unlocking manager 0 after the backup failed (HTTP {status:03d}); run 'docker swarm unlock' on it"
        )
    run.note("backup: unlocked manager 0 again (autolock)")


# -- sealing: the unlock key beside a backup, bound to its name ----------------------------
# The signing key is always passed: keytool's default would read its own fixed path.
def seal_unlock_key(name: str, unlock_key: str, signing_key: bytes) -> str:
    """The unlock key encrypted and authenticated with the signing key, for KEY.meta."""
    return keytool.wrap_unlock(name, unlock_key, _nonempty(signing_key))


def unseal_unlock_key(name: str, sealed: str, signing_key: bytes) -> str:
    return keytool.unwrap_unlock(name, sealed, _nonempty(signing_key))


def open_state(state_dir: str, unlock_key: str) -> str:
    """Rewrite state_dir's node key without its encryption ("unlocked", or "not locked");
    KeytoolError when the unlock key does not open it."""
    try:
        return keytool.unlock_state(state_dir, unlock_key)
    except (ValueError, IndexError, OSError) as error:  # a node key keytool cannot parse
        raise KeytoolError(f"the node key in {state_dir} cannot be read ({error})") from error


def open_sealed_state(name: str, sealed: str, state_dir: str, signing_key: bytes) -> str:
    """A restore of an autolocked backup: unseal the key from its .meta, open the node key."""
    return open_state(state_dir, unseal_unlock_key(name, sealed, signing_key))


def _nonempty(signing_key: bytes) -> bytes:
    if not signing_key:
        raise AgentError(f"the backup signing key is empty ({paths.SIGNING_KEY}): run 'pulumi up'")
    return signing_key
