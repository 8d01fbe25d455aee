"""What a backup tarball must hold, checked before upload and again before a restore.

A swarm backup is a tar.gz of `swarm/` alone that holds the Raft log and the
certificates: a tar without them restores as a new cluster (a new CA and new tokens).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile

SEALED_KEY = re.compile(r"^(-----BEGIN ENCRYPTED PRIVATE KEY|Proc-Type: 4,ENCRYPTED)", re.MULTILINE)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def members(path: str) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()


def content_problem(path: str) -> str:
    """Why the tarball is not a swarm backup, or "" when it is one."""
    try:
        names = [n.rstrip("/") for n in members(path)]
    except (OSError, tarfile.TarError, EOFError):
        return "not a tar.gz"
    if any(n != "swarm" and not n.startswith("swarm/") for n in names):
        return "not a tar.gz of swarm/ alone"
    has_raft = any(n.startswith("swarm/raft/") for n in names)
    has_certificates = any(n.startswith("swarm/certificates/") for n in names)
    if not (has_raft and has_certificates):
        return "without swarm/raft/ or swarm/certificates/ (a hollow backup)"
    return ""


def node_key_sealed(state_dir: str) -> bool:
    """The node key of the swarm state in `state_dir` is encrypted (autolock)."""
    try:
        with open(os.path.join(state_dir, "certificates", "swarm-node.key")) as handle:
            return bool(SEALED_KEY.search(handle.read()))
    except OSError:
        return False
