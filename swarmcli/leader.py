"""How the CLI reaches a stack's leader from its outputs: the login in `dockerHost`, the
stack's key and host keys written root-only for ssh, and ssh's options (host keys checked
strictly against `sshKnownHosts`, never accepted on first sight)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from swarmcli.errors import SwarmCliError


def leader_login(outputs: dict) -> tuple[str, str, int]:
    """(user, host, port) of `dockerHost` (ssh://user@host[:port])."""
    parts = urlsplit(outputs.get("dockerHost") or "")
    if parts.scheme != "ssh" or not parts.hostname:
        raise SwarmCliError("the stack has no dockerHost output (ssh://user@host): run pulumi up on it")
    return parts.username or outputs.get("sshUser") or "root", parts.hostname, parts.port or 22


def client_files(directory: Path, outputs: dict, identity: str | None) -> tuple[Path, Path]:
    """The key and known_hosts files ssh needs, root-only in `directory`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    known = directory / "known_hosts"
    if not outputs.get("sshKnownHosts"):
        raise SwarmCliError("the stack has no sshKnownHosts output: run pulumi up on it (host keys are checked)")
    write_private(known, outputs["sshKnownHosts"])
    if identity:
        return Path(identity), known
    if not outputs.get("sshPrivateKey"):
        raise SwarmCliError("the stack exports no sshPrivateKey (it uses your own key): pass --identity FILE")
    key = directory / "id"
    write_private(key, outputs["sshPrivateKey"])
    return key, known


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")


def ssh_options(key: Path, known: Path) -> list[str]:
    return ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=15"]  # fmt: skip
