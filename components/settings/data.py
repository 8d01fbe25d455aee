"""Data volumes (`swarm:dataVolumes`): which nodes carry a kept EBS volume at /var/data.

Each entry names the volume (the node's `swarm.data` label, so a stack pins a service to
its data by that name, not by a machine), the node that carries it (`manager-<i>` or
`worker-<i>`), its size and type, and optionally the snapshot a new volume starts from.
An entry whose node is not in today's `managerCount`/`workerCount` is not an error: its
volume is kept, unattached, until the node comes back (components/data.py warns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.settings.base import NAMESPACE, Reader, SnapshotSchedule, fix

DATA_KEYS = ("name", "node", "size", "type", "snapshotId")
DEFAULT_SIZE = 20  # GiB
# Single-attach types; io1/io2 need an IOPS figure this setting does not take yet.
VOLUME_TYPES = {"gp3": 1, "gp2": 1, "st1": 125, "sc1": 125}  # type -> smallest size (GiB)
MAX_SIZE = 16384
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_NODE = re.compile(r"^(manager|worker)-(0|[1-9][0-9]{0,3})$")
_SNAPSHOT = re.compile(r"^snap-[0-9a-f]{8,17}$")
EXAMPLE = '\'{"name":"postgres","node":"worker-0","size":50}\''
_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
MAX_SNAPSHOTS = 1000  # DLM's largest retain count


def read_snapshot_schedule(r: Reader) -> SnapshotSchedule:
    time = r.string("dataSnapshotTime") or ""
    if not _TIME.match(time):
        r.problem("dataSnapshotTime", f"must be a UTC time HH:MM, after your nightly teardown (got {time!r})", "20:00")
    keep = r.integer("dataSnapshotKeep", "7", lambda n: 0 <= n <= MAX_SNAPSHOTS, f"from 0 (none) to {MAX_SNAPSHOTS}")
    return SnapshotSchedule(time, keep)


@dataclass(frozen=True)
class DataVolume:
    name: str  # the node label's value: node.labels.swarm.data == <name>
    role: str  # manager | worker
    index: int
    size: int  # GiB
    volume_type: str
    snapshot_id: str | None  # only when the volume is created; ignored after

    @property
    def node(self) -> str:
        return f"{self.role}-{self.index}"


def read_data_volumes(r: Reader) -> list[DataVolume]:
    entries = r.json_list("dataVolumes", "a list of volumes with name and node", EXAMPLE)
    volumes: list[DataVolume] = []
    for i, entry in enumerate(entries):
        volume = _read_entry(r, i, entry)
        if volume is None:
            continue
        for j, other in enumerate(volumes):
            if other.name == volume.name:
                _bad(r, i, "name", f"repeats {volume.name!r} from dataVolumes[{j}]; names are unique", "uploads")
            if other.node == volume.node:
                what = f"puts a second volume on {volume.node} (dataVolumes[{j}]): one per node"
                _bad(r, i, "node", what, "worker-1")
        volumes.append(volume)
    return volumes


def _read_entry(r: Reader, i: int, entry: object) -> DataVolume | None:
    if not isinstance(entry, dict):
        r.problem("dataVolumes", f"[{i}] must be a map with name and node (got {entry!r})", EXAMPLE, f"[{i}]")
        return None
    unknown = sorted(set(entry) - set(DATA_KEYS))
    if unknown:
        r.problems.append(
            f"{NAMESPACE}:dataVolumes[{i}] has unknown field(s) {', '.join(unknown)} (known: {', '.join(DATA_KEYS)}); "
            f"fix: pulumi config rm --path '{NAMESPACE}:dataVolumes[{i}].{unknown[0]}'"
        )
    name, node = str(entry.get("name") or "").strip(), str(entry.get("node") or "").strip()
    volume_type = str(entry.get("type") or "gp3").strip()
    snapshot = str(entry.get("snapshotId") or "").strip() or None
    size = entry.get("size", DEFAULT_SIZE)
    ok = True
    if not NAME_RE.match(name):
        ok = _bad(r, i, "name", f"must be 1-32 lowercase letters, digits and '-' (got {name!r})", "postgres")
    found = _NODE.match(node)
    if not found:
        ok = _bad(r, i, "node", f"must be manager-<i> or worker-<i>, as the nodes are named (got {node!r})", "worker-0")
    if volume_type not in VOLUME_TYPES:
        ok = _bad(r, i, "type", f"must be one of {', '.join(VOLUME_TYPES)} (got {volume_type!r})", "gp3")
    smallest = VOLUME_TYPES.get(volume_type, 1)
    if not isinstance(size, int) or isinstance(size, bool) or not smallest <= size <= MAX_SIZE:
        rule = f"a whole number of GiB from {smallest} to {MAX_SIZE}" + (f" for {volume_type}" if smallest > 1 else "")
        ok = _bad(r, i, "size", f"must be {rule} (got {size!r})", str(max(DEFAULT_SIZE, smallest)))
    if snapshot is not None and not _SNAPSHOT.match(snapshot):
        example = "snap-0123456789abcdef0"
        ok = _bad(r, i, "snapshotId", f"must look like {example} (got {snapshot!r})", example)
    if not ok or found is None:
        return None
    return DataVolume(name, found[1], int(found[2]), int(size), volume_type, snapshot)


def _bad(r: Reader, i: int, field_name: str, what: str, example: str) -> bool:
    command = fix("dataVolumes", example, f"[{i}].{field_name}")
    r.problems.append(f"{NAMESPACE}:dataVolumes[{i}].{field_name} {what}; fix: {command}")
    return False
