"""Docker engines known to break the swarm's morning, refused before they join it.

Each entry is a range of Docker Engine releases, the role it breaks, and what to do. A
manager refused here fails its `ready` step with the message, before bootstrap or any join
runs, so the swarm of the day before is never put at risk.

- Docker 29.1.0 to 29.4.x vendor swarmkit 17b8d222e7dd: its move to go.etcd.io/raft/v3
  (swarmkit 2cd3a035) made a Raft message's snapshot a pointer, and `splitSnapshotData`
  (manager/state/raft/transport/peer.go) still copies the message by value, so each chunk
  of a snapshot larger than one gRPC message overwrites the original: the leader panics
  (`slice bounds out of range`) or sends a corrupt snapshot when a manager joins
  (moby/swarmkit#3231). Every morning, managers 1 and 2 join a restored manager 0. Fixed
  by swarmkit 069a0300 (v2.1.2), first in Docker 29.5.0; 29.0.x (swarmkit v2.1.1) and
  28.x (v2.0.0) copy a plain value and are not affected. Checked against the moby and
  swarmkit histories: moby docker-v29.1.0-rc.1 to docker-v29.4.3 vendor 17b8d222e7dd,
  docker-v29.5.0-rc.1 vendors v2.1.2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Broken:
    first: tuple[int, int, int]  # the first release that has the bug
    fixed: tuple[int, int, int]  # the first release that does not
    role: str  # which nodes it breaks
    why: str


KNOWN_BROKEN = (
    Broken(
        (29, 1, 0),
        (29, 5, 0),
        "manager",
        "its leader panics or sends a corrupt Raft snapshot when a manager joins (moby/swarmkit#3231)",
    ),
)


def parse(version: str) -> tuple[int, int, int] | None:
    """`29.2.1`, `29.1.0-rc.1`, Debian's `26.1.5+dfsg1`: the release numbers, or None."""
    match = _VERSION.match(version.strip())
    return tuple(int(part) for part in match.groups()) if match else None


def refusal(version: str, role: str) -> str | None:
    """Why a node of `role` must not run Docker `version`, with the fix; None if it may."""
    release = parse(version)
    if release is None:
        return None
    for broken in KNOWN_BROKEN:
        if broken.role == role and broken.first <= release < broken.fixed:
            first, fixed = (".".join(map(str, v)) for v in (broken.first, broken.fixed))
            return (
                f"Docker {version} on this {role}: {broken.why}; Docker {first} up to (not including) {fixed} are "
                f"refused on {role}s, and every morning managers join. Nothing was joined or changed. Fix: boot an "
                f"image with Docker {fixed} or later (or 29.0.x or 28.x): pulumi config set swarm:amiId <ami>, "
                "then scripts/swarm roll, or a machine of your own with that engine"
            )
    return None
