"""EBS volumes on the bed, as EC2 handles them: block devices kept apart from the machines.

A volume is a sparse file under the bed's root, kept for as long as the bed (through
`pulumi destroy --exclude-protected`, which never deletes it, as on AWS). Attaching it to
a host is what EC2 does on a Nitro instance: a loop device on this machine appears in the
host as an NVMe disk (`/dev/nvme<N>n1`), with the link AL2023's udev rules make,
`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<id without the dash>`, so a node
finds its volume by ID, never by a device name (those are not stable on EC2 either).

What can break the product is modelled as EC2 answers it:
- one attachment at a time (`VolumeInUse`), and only in the volume's zone
  (`InvalidVolume.ZoneMismatch`);
- a detach while the file system is mounted in the host is refused here
  (`VolumeBusy`): on EC2 it hangs in `busy` until the unmount, and forcing it loses
  what the page cache held; either way the product must unmount first;
- the attachment survives a reboot and a stop and start (the disk is plugged again at
  each boot); a terminated machine's volume is detached and kept (DeleteOnTermination
  is false for an attached volume);
- a snapshot is a copy of the file at that moment; a volume made from it starts as
  that copy.
A killed run's loop devices are found by their backing files and detached by the next
run (`reap`).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from testbed.host import BedError, sh

MIB = 1 << 20
GIB = 1 << 30
BY_ID = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_"


class VolumeError(BedError):
    """What EC2 answers to a call it refuses (the code first, as the AWS provider prints it)."""


@dataclass
class Volume:
    volume_id: str
    zone: str
    size_gib: int
    path: Path
    tags: dict[str, str] = field(default_factory=dict)
    host_key: str | None = None  # attached to
    loop: str | None = None  # /dev/loopN on this machine, while attached
    device: str | None = None  # /dev/nvmeXn1 in the host
    volume_type: str = "gp2"  # EC2's default when CreateVolume names none


@dataclass
class Snapshot:
    snapshot_id: str
    volume_id: str
    path: Path
    tags: dict[str, str] = field(default_factory=dict)


class BlockVolumes:
    """The bed's EBS: volumes, their attachments to hosts, and snapshots."""

    def __init__(self, root: Path):
        self.root = root / "ebs"
        self.volumes: dict[str, Volume] = {}
        self.snapshots: dict[str, Snapshot] = {}  # in the order they were taken
        self._lock = threading.Lock()

    def create(self, zone: str, size_gib: int, snapshot_id: str = "", tags: dict | None = None) -> Volume:
        """CreateVolume: a new, empty (sparse) disk, or a copy of a snapshot."""
        self.root.mkdir(parents=True, exist_ok=True)
        volume_id = "vol-" + secrets.token_hex(9)[:17]  # as EC2 spells them
        path = self.root / f"{volume_id}.img"
        if snapshot_id:
            if snapshot_id not in self.snapshots:
                raise VolumeError(f"InvalidSnapshot.NotFound: the snapshot '{snapshot_id}' does not exist")
            sh("cp", "--sparse=always", str(self.snapshots[snapshot_id].path), str(path))
        with open(path, "ab") as disk:
            disk.truncate(max(size_gib * GIB, path.stat().st_size))
        volume = Volume(volume_id, zone, size_gib, path, dict(tags or {}))
        with self._lock:
            self.volumes[volume_id] = volume
        return volume

    def describe(self, tags: dict[str, str]) -> list[Volume]:
        """DescribeVolumes with tag filters (exact values), as the provider's lookups ask."""
        with self._lock:
            return [v for v in self.volumes.values() if all(v.tags.get(k) == want for k, want in tags.items())]

    def delete(self, volume_id: str) -> None:
        volume = self._get(volume_id)
        if volume.host_key is not None:
            raise VolumeError(f"VolumeInUse: {volume_id} is attached to an instance")
        volume.path.unlink(missing_ok=True)
        with self._lock:
            del self.volumes[volume_id]

    def attach(self, volume_id: str, host) -> str:
        """AttachVolume: the disk appears in the running host; its device name there."""
        with self._lock:
            volume = self._get(volume_id)
            if volume.host_key is not None:
                raise VolumeError(f"VolumeInUse: {volume_id} is already attached to an instance ({volume.host_key})")
            zone = getattr(host, "zone", None)
            if zone and zone != volume.zone:
                raise VolumeError(
                    f"InvalidVolume.ZoneMismatch: the volume '{volume_id}' is not in the same availability zone "
                    f"as instance '{host.key}' ({volume.zone}, not {zone})"
                )
            volume.loop = sh("losetup", "--find", "--show", str(volume.path)).strip()
            volume.host_key = host.key
        self.plug(host)
        return volume.device

    def detach(self, volume_id: str, host, force: bool = False) -> None:
        """DetachVolume: refused while its file system is mounted in the host (see the module)."""
        with self._lock:
            volume = self._get(volume_id)
            if volume.host_key != host.key:
                raise VolumeError(f"IncorrectState: {volume_id} is not attached to {host.key}")
            if not force and host.alive and self._mounted(volume, host):
                raise VolumeError(f"VolumeBusy: {volume_id} is mounted in {host.key} ({volume.device}); unmount first")
            if host.alive and volume.device:
                host.run(["rm", "-f", volume.device, BY_ID + volume_id.replace("-", "")], check=False)
            self._release(volume)

    def plug(self, host) -> None:
        """Make the host's attached disks appear in its /dev (at attach, and after each
        boot: nspawn gives a booting machine a fresh /dev, EC2 keeps the attachment)."""
        mine = sorted((v for v in self.volumes.values() if v.host_key == host.key), key=lambda v: v.volume_id)
        for number, volume in enumerate(mine, 1):
            major, minor = Path(f"/sys/class/block/{Path(volume.loop).name}/dev").read_text().strip().split(":")
            volume.device = f"/dev/nvme{number}n1"
            link = BY_ID + volume.volume_id.replace("-", "")
            host.run(
                f"rm -f {volume.device} && mknod -m 0660 {volume.device} b {major} {minor} && "
                f"mkdir -p {Path(BY_ID).parent} && ln -sfn ../../{Path(volume.device).name} {link}"
            )

    def terminated(self, host) -> None:
        """A terminated instance: its volumes are detached, and kept."""
        with self._lock:
            for volume in self.volumes.values():
                if volume.host_key == host.key:
                    self._release(volume)

    def snapshot(self, volume_id: str, tags: dict[str, str] | None = None) -> str:
        """CreateSnapshot: what the disk holds now (a write in flight may or may not be in it)."""
        volume = self._get(volume_id)
        snapshot_id = "snap-" + secrets.token_hex(8)
        target = self.root / f"{snapshot_id}.img"
        sh("cp", "--sparse=always", str(volume.path), str(target))
        with self._lock:
            self.snapshots[snapshot_id] = Snapshot(snapshot_id, volume_id, target, dict(tags or {}))
        return snapshot_id

    def delete_snapshot(self, snapshot_id: str) -> None:
        with self._lock:
            snapshot = self.snapshots.pop(snapshot_id)
        snapshot.path.unlink(missing_ok=True)

    def close(self) -> None:
        for volume in list(self.volumes.values()):
            with contextlib.suppress(BedError):
                self._release(volume)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- inside --------------------------------------------------------------------------
    def _get(self, volume_id: str) -> Volume:
        if volume_id not in self.volumes:
            raise VolumeError(f"InvalidVolume.NotFound: the volume '{volume_id}' does not exist")
        return self.volumes[volume_id]

    def _mounted(self, volume: Volume, host) -> bool:
        major_minor = Path(f"/sys/class/block/{Path(volume.loop).name}/dev").read_text().strip()
        mountinfo = Path(f"/proc/{host.init_pid}/mountinfo").read_text()
        return any(line.split()[2] == major_minor for line in mountinfo.splitlines())

    def _release(self, volume: Volume) -> None:
        if volume.loop:
            sh("losetup", "--detach", volume.loop, check=False)
        volume.loop = volume.host_key = volume.device = None


def reap(root: Path) -> list[str]:
    """Detach the loop devices whose backing files are under `root` (a killed run's)."""
    detached = []
    for line in sh("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE", check=False).splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(str(root)):
            sh("losetup", "--detach", name, check=False)
            detached.append(name)
    return detached
