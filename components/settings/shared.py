"""Shared files (`swarm:sharedFiles`): one kept EFS file system, mounted on every node.

Opt-in, EC2 only: with `swarm:hosts` the key is refused like every EC2-only key
(`refuse_ec2_only_keys`), since the program makes no network for the file system's mount
targets there. Turning it off later deletes nothing: components/shared_files.py keeps
the file system registered (README, "What outlives the night").
"""

from __future__ import annotations

from components.settings.base import Reader


def read_shared_files(r: Reader, hosts_mode: bool) -> bool:
    """Whether the nodes mount the stack's EFS file system at /var/data/shared."""
    wanted = r.boolean("sharedFiles")
    # With swarm:hosts a `true` is already a problem (EC2_ONLY_KEYS), reported with the fix.
    return wanted and not hosts_mode
