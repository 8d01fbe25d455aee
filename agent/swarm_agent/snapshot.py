"""A fresh Raft snapshot just before the nightly backup, so the morning's restore is quick.

Why (moby v26.1.5's vendored swarmkit and etcd raft v3.5.6, read and reproduced):
`swarm init --force-new-cluster` appends one ConfChangeRemoveNode entry per other manager
at the end of the restored log and marks them committed. swarmkit then campaigns once,
after raft's first batch of committed entries (at most 64 KiB: MaxSizePerMsg) is applied;
etcd raft refuses to campaign while a committed ConfChange is unapplied ("cannot campaign
at term 2 since there are still 2 pending configuration changes to apply"), and only the
election timer (10 to 19 one-second ticks) tries again. The removals land in the first
batch only when little was logged since the last snapshot, and with the default interval
of 10,000 entries that is rarely so: hence a wait of 10 to 19 s on most mornings, and none
on some. A snapshot taken just before the stop leaves almost nothing after it.

`docker swarm update --snapshot-interval 1` makes every manager snapshot within about a
second; the interval is then set back (the backup must not carry 1 into the morning),
and that write is covered by one more snapshot. Best effort: a backup without a fresh
snapshot is still a good backup, only a slower morning.
"""

from __future__ import annotations

import glob
import os

from swarm_agent import dockerd, paths, run
from swarm_agent.run import AgentError

SNAPSHOT_WAIT = 10  # seconds for a manager to write the snapshot asked for


def newest() -> tuple[float, str]:
    """(mtime, name) of the newest Raft snapshot file, (0, "") when there is none."""
    found = []
    for path in glob.glob(os.path.join(paths.SWARM_DIR, "raft", "snap-v3-encrypted", "*.snap")):
        try:
            found.append((os.stat(path).st_mtime, os.path.basename(path)))
        except OSError:
            continue
    return max(found) if found else (0.0, "")


def interval() -> int:
    raft = ((dockerd.swarm_info().get("Cluster") or {}).get("Spec") or {}).get("Raft") or {}
    value = raft.get("SnapshotInterval")
    return value if isinstance(value, int) and value > 0 else 0


def _wait_newer(than: tuple[float, str], timeout: float) -> bool:
    try:
        run.wait_until(lambda: newest() > than, timeout, lambda: "no new snapshot")
    except AgentError:
        return False
    return True


def fresh_snapshot() -> str:
    """Ask for a snapshot now and wait (bounded) until it is on disk; say what happened."""
    wanted = interval()
    if not wanted:
        return "snapshot: the swarm's snapshot interval is unknown; none asked for"
    before = newest()
    dockerd.raft_retry("swarm", "update", "--snapshot-interval", "1")
    try:
        taken = _wait_newer(before, SNAPSHOT_WAIT)
        mark = newest()
    finally:
        # Always back: the backup (and so every morning after it) carries the interval.
        dockerd.raft_retry("swarm", "update", "--snapshot-interval", str(wanted))
    if not taken:
        return f"snapshot: none written within {SNAPSHOT_WAIT}s; the morning's restore may wait an election"
    # Setting it back is applied while 1 is still in force: one more snapshot covers it.
    _wait_newer(mark, 3)
    return f"snapshot: fresh Raft snapshot {newest()[1]} (interval back at {wanted})"
