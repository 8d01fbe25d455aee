"""The node agent's delivery: agent/ as it is in the repository, onto every node, by SSH.

User-data only prepares the machine (host keys, Docker, daemon.json, /etc/swarm/env);
the agent arrives over the channel the formation already uses, before the first verb:
each node's `ready` command (components/swarm.py) starts by installing it, its stdin's
first line agent/ as a deterministic tar.gz and its command the tree's digest (so the
copy is no extra SSH session on the formation's chain). Root unpacks it, and
`agent/swarm_agent/install.py` checks the digest, installs it as a release of its own
and switches to it atomically (see that file).

Why a command and not `remote.CopyToRemote`: pulumi-command's CopyToRemote (v1.2.1,
provider/pkg/provider/remote/copy.go) writes over SFTP as the SSH user, sets no file
modes, never removes a file that left the archive and has no delete, so it would need a
root command after it anyway, and a window in which the SSH user's files are what root
installs. Here root receives the bytes and checks them before anything is switched.

What an agent change does at the next `up`: `ready`'s stdin and command change, which
pulumi-command treats as an update (only `triggers` replace), so it runs again on the
running machine (installing, then finding the node ready) and nothing else changes: no
machine, dockerd, bootstrap, join, retire or backup is touched, because no other
command's inputs mention the agent, and an update of `ready` runs none of its
dependents. A new machine gets a new `ready` (its trigger is the machine).
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import shlex
import tarfile

from agent.swarm_agent.install import BASE, entries, tree_digest
from components.payload import ROOT

AGENT_DIR = ROOT / "agent"


@functools.cache
def agent_digest() -> str:
    return tree_digest(str(AGENT_DIR))


@functools.cache
def agent_bundle() -> str:
    """base64 of a tar.gz of agent/: sorted, root-owned, zero mtimes, so that an unchanged
    agent never looks like a change to Pulumi and a changed one always does."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        directories = set()
        for rel, mode, _ in entries(str(AGENT_DIR)):
            parts = rel.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in directories:
                    directories.add(directory)
                    tar.addfile(_info(directory, 0o755, tarfile.DIRTYPE))
            data = (AGENT_DIR / rel).read_bytes()
            info = _info(rel, mode, tarfile.REGTYPE)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode()


def _info(name: str, mode: int, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def install_command(digest: str) -> str:
    """Unpack stdin's first line (the bundle) as root into a fresh directory beside the
    releases, then let the agent's installer check and switch it. What follows on stdin
    (a key to authorize) is left for the next command; the directory goes whatever happens."""
    incoming = f"{BASE}/incoming"
    script = (
        "set -eu; umask 022; "
        f"mkdir -p {incoming}; d=$(mktemp -d {incoming}/XXXXXXXX); "
        "trap 'rm -rf \"$d\"' EXIT; "
        'IFS= read -r bundle; printf %s "$bundle" | base64 -d | tar -xzf - --no-same-owner -C "$d"; '
        f'python3 -B "$d/swarm_agent/install.py" "$d" {digest}'
    )
    return f"sudo sh -c {shlex.quote(script)}"
