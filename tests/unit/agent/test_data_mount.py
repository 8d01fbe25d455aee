"""data.py: the node's kept volume, on fakes (mount, mkfs, blkid and friends are stand-ins
that record their calls; the bed mounts a real disk: tests/e2e/test_data.py).

What is proven here: the disk is found by the volume ID in its NVMe serial, formatted only
when it holds no file system and never over another one, mounted once, made to come back
before dockerd at every boot; and the release stops dockerd before it unmounts, and
refuses to pretend when the unmount fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from node_fakes import FAKE_TOOL
from swarm_agent import data, dockerd, paths
from swarm_agent.run import AgentError

VOLUME_ID = "vol-0123456789abcdef0"
TOOLS = ("blkid", "mkfs.ext4", "mount", "umount", "resize2fs", "sync", "fuser")


@pytest.fixture
def node(fakes, monkeypatch):
    """A systemd node whose attached volume shows as nvme1n1, its serial the volume ID."""
    for tool in TOOLS:
        shutil.copy(FAKE_TOOL, fakes.bin / tool)
        (fakes.bin / tool).chmod(0o755)
    for tool in ("mount", "umount", "resize2fs", "sync", "mkfs.ext4"):
        fakes.on(tool)
    Path(paths.SYSTEMD_RUN).mkdir(parents=True)
    fakes.on("systemctl")
    plug("nvme1n1", VOLUME_ID.replace("-", ""))
    mounts()
    order: list[str] = []
    monkeypatch.setattr(dockerd, "is_down", lambda: any(o.startswith("dockerd stopped") for o in order))
    monkeypatch.setattr(dockerd, "stop", lambda timeout=60: order.append(f"dockerd stopped within {timeout}s"))
    fakes.order = order
    return fakes


def plug(name: str, serial: str) -> None:
    device = Path(paths.SYS_BLOCK, name, "device")
    device.mkdir(parents=True)
    (device / "serial").write_text(serial.ljust(20) + "\n")  # NVMe pads the serial with spaces


def mounts(*lines: str) -> None:
    Path(paths.PROC, "self").mkdir(parents=True, exist_ok=True)
    Path(paths.PROC, "self", "mounts").write_text("".join(f"{line}\n" for line in lines))


def mount_args(**extra) -> SimpleNamespace:
    values = {"volume": VOLUME_ID, "name": "ledger", "boot": False, "existing": False, "timeout": 30}
    return SimpleNamespace(**{**values, **extra})


def test_an_empty_disk_found_by_its_serial_is_formatted_mounted_and_made_to_come_back_before_dockerd(node):
    node.on("blkid", rc=2)  # no signature at all
    data.data_mount(mount_args())
    assert node.argvs("mkfs.ext4") == [["-q", "-L", "ledger", "-m", "0", "/dev/nvme1n1"]]
    assert node.argvs("mount") == [["-t", "ext4", "-o", "noatime", "/dev/nvme1n1", paths.DATA_MOUNT]]
    assert json.loads(Path(paths.DATA_RECORD).read_text()) == {"volume": VOLUME_ID, "name": "ledger"}
    unit = Path(paths.UNIT_DIR, data.UNIT).read_text()
    assert "Before=docker.service" in unit and "ExecStart=/usr/local/sbin/swarm-node data-mount --boot" in unit
    drop_in = Path(paths.UNIT_DIR, "docker.service.d", "swarm-data.conf").read_text()
    assert f"Requires={data.UNIT}" in drop_in and f"After={data.UNIT}" in drop_in
    assert ["enable", "--now", data.UNIT] in node.argvs("systemctl")


def test_a_disk_that_holds_ext4_is_mounted_as_it_is(node):
    node.on("blkid", stdout="ext4\n")
    data.data_mount(mount_args())
    assert node.argvs("mkfs.ext4") == [] and len(node.argvs("mount")) == 1


def test_a_disk_that_holds_something_else_is_never_formatted_over(node):
    node.on("blkid", stdout="xfs\n")
    with pytest.raises(AgentError, match=r"holds xfs .* not ext4; nothing was changed"):
        data.data_mount(mount_args())
    assert node.argvs("mkfs.ext4") == [] and node.argvs("mount") == []


def test_a_mounted_volume_is_not_mounted_twice(node):
    mounts(f"/dev/nvme1n1 {paths.DATA_MOUNT} ext4 rw,noatime 0 0")
    data.data_mount(mount_args())
    assert node.argvs("mount") == [] and node.argvs("blkid") == []


def test_a_volume_that_never_appears_fails_within_its_bound_naming_the_serial(node):
    with pytest.raises(AgentError, match="no disk with serial vol0fffffffffffffff0 appeared within 30s"):
        data.data_mount(mount_args(volume="vol-0fffffffffffffff0"))
    assert 30 <= node.clock.slept <= 32


def test_bad_arguments_and_a_boot_without_a_record_are_refused(node):
    with pytest.raises(AgentError, match="not an EBS volume ID"):
        data.data_mount(mount_args(volume="/dev/sdf; rm -rf /"))
    with pytest.raises(AgentError, match="not a data volume name"):
        data.data_mount(mount_args(name="Bad Name"))
    with pytest.raises(AgentError, match="no record of this node's volume"):
        data.data_mount(mount_args(boot=True, volume=None, name=None))


def test_the_release_stops_dockerd_before_it_syncs_and_unmounts(node):
    mounts(f"/dev/nvme1n1 {paths.DATA_MOUNT} ext4 rw,noatime 0 0")
    data.data_release(SimpleNamespace())
    # A task's stop grace period (a database's may be long) is waited for, beyond dockerd's own 60 s.
    assert node.order == [f"dockerd stopped within {data.RELEASE_STOP_WAIT}s"] and data.RELEASE_STOP_WAIT > 90
    calls = [c["tool"] for c in node.calls() if c["tool"] in ("sync", "umount")]
    assert calls == ["sync", "umount"] and node.argvs("umount") == [[paths.DATA_MOUNT]]


def test_a_release_with_nothing_mounted_touches_nothing(node):
    data.data_release(SimpleNamespace())
    assert node.order == [] and node.argvs("umount") == []


def test_an_unmount_that_fails_says_who_holds_it_and_that_nothing_was_detached(node):
    mounts(f"/dev/nvme1n1 {paths.DATA_MOUNT} ext4 rw,noatime 0 0")
    node.rules = [r for r in node.rules if r["tool"] != "umount"]
    node.on("umount", stderr="umount: target is busy.\n", rc=32)
    node.on("fuser", stderr=f"{paths.DATA_MOUNT}: root 4242 ..c.. backup-agent\n", rc=0)
    with pytest.raises(AgentError, match=r"did not unmount .*target is busy.*backup-agent.*Nothing was detached"):
        data.data_release(SimpleNamespace())


def test_an_own_hosts_data_is_checked_not_mounted(node):
    with pytest.raises(AgentError, match=r"names 'pg' for this host, but .* is not a directory"):
        data.data_mount(mount_args(existing=True, name="pg", volume=None))
    Path(paths.DATA_MOUNT).mkdir(parents=True)
    data.data_mount(mount_args(existing=True, name="pg", volume=None))
    assert node.argvs("mount") == [] and node.argvs("blkid") == []
