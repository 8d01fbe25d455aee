"""The node's own files and mounts, as the storage verbs (data.py, shared.py) touch them.

Files are written whole, by rename, so a crash leaves the old file or the new one, never
half of one (a unit file, a drop-in, /etc/fstab, a record read at every boot); what is
mounted where comes from the kernel's table, never from a command that could hang on a
dead NFS server.
"""

from __future__ import annotations

import os

from swarm_agent import paths


def replace(path: str, text: str, mode: int = 0o644) -> None:
    """Write `path` whole, by rename."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scratch = path + ".swarm-new"
    with open(scratch, "w") as out:
        out.write(text)
    os.chmod(scratch, mode)
    os.replace(scratch, path)


def write_if_changed(path: str, text: str, mode: int = 0o644) -> bool:
    """`replace`, unless `path` already says `text`; True when it was written."""
    try:
        with open(path) as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    replace(path, text, mode)
    return True


def mount_at(mount_point: str) -> tuple[str, str] | None:
    """(source, file system type) of what is mounted at `mount_point` now: the last entry
    of the kernel's table for it, the one on top."""
    found = None
    with open(os.path.join(paths.PROC, "self", "mounts")) as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 2 and fields[1] == mount_point:
                found = (fields[0], fields[2])
    return found
