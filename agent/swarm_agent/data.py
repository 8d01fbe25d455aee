"""The node's kept data volume (swarm:dataVolumes): found, formatted once, mounted at /var/data.

`data-mount` runs from Pulumi once the volume is attached to this machine and before the
node bootstraps or joins, so no task of the swarm starts here without its data. It
finds the disk by its volume ID (NVMe device names change from boot to boot), formats it
only when it holds no file system at all (`blkid -p` exits 2), mounts it, grows the file
system to the volume's size, and makes every later boot do the same before dockerd:
`swarm-data.service` runs `data-mount --boot`, and a drop-in makes docker.service
require it, so a disk that does not appear stops dockerd rather than let tasks write to
the root disk, which goes at night.

`data-release` is the mount command's `delete`, before the volume is detached and the
machine goes (each night, and when the node is replaced): dockerd is stopped, which
stops every task that writes there, then the file system is synced and unmounted, so
what the services wrote is on the volume when it leaves.
"""

from __future__ import annotations

import glob
import json
import os
import re

from swarm_agent import dockerd, env, lock, nodefs, paths, run
from swarm_agent.run import AgentError

BY_ID = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_"
VOLUME_ID_RE = re.compile(r"^vol-[0-9a-f]{8,17}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")  # the volume's name, its node's swarm.data label
LABEL = "swarm.data"  # the node label that says which data is mounted at /var/data
FSTYPE = "ext4"  # in every image (e2fsprogs); AL2023 has xfsprogs, Debian does not
DEVICE_WAIT = 300  # seconds: an attachment can take a minute or two to show
RELEASE_STOP_WAIT = 150  # seconds for dockerd and its tasks to stop before the unmount
UNIT = "swarm-data.service"
UNIT_TEXT = f"""[Unit]
Description=The node's kept data volume at {paths.DATA_MOUNT} (swarm:dataVolumes), before dockerd
After=local-fs.target
Before=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/swarm-node data-mount --boot
TimeoutStartSec={DEVICE_WAIT + 60}

[Install]
WantedBy=multi-user.target
"""
DROP_IN_TEXT = f"""[Unit]
# swarm:dataVolumes: no task starts before its data is mounted (agent/swarm_agent/data.py).
Requires={UNIT}
After={UNIT}
"""


def data_mount(args) -> None:
    """Mount this node's volume at /var/data; with --boot, the one data-mount recorded.
    At boot nothing else runs yet, so no lock: Pulumi's run holds it while it starts
    swarm-data.service, whose --boot run would otherwise wait for it. With --existing (a
    host the user brings), only check that its data is there: nothing is mounted."""
    env.load()
    if getattr(args, "existing", False):
        _check_existing(args.name or "")
        return
    volume_id, name = _which_volume(args)
    if args.boot:
        _mount(volume_id, name, args.timeout)
        return
    with lock.held("data-mount", 120):
        _mount(volume_id, name, args.timeout)
        _record(volume_id, name)
    _every_boot()


def _check_existing(name: str) -> None:
    if not NAME_RE.match(name):
        raise AgentError(f"data-mount: '{name}' is not a data name (swarm:hosts[].data)")
    if not os.path.isdir(paths.DATA_MOUNT):
        raise AgentError(
            f"data-mount: swarm:hosts[].data names '{name}' for this host, but {paths.DATA_MOUNT} is not a directory "
            f"here; mount its disk there, or link it to the data's directory (ln -s /srv/{name} {paths.DATA_MOUNT}), "
            "or drop the host's data field"
        )
    print(f"data: {name} is this host's own {paths.DATA_MOUNT} (nothing mounted by the program)", flush=True)


def _mount(volume_id: str, name: str, timeout: float) -> None:
    device = wait_for_device(volume_id, timeout)
    if _mounted_device() is None:
        _format_if_empty(device, name)
        os.makedirs(paths.DATA_MOUNT, mode=0o755, exist_ok=True)
        run.call("mount", "-t", FSTYPE, "-o", "noatime", device, paths.DATA_MOUNT)
        run.call("resize2fs", device)  # a volume made larger since: online, a no-op otherwise
        print(f"data: mounted {volume_id} ({device}) at {paths.DATA_MOUNT}", flush=True)
    else:
        print(f"data: {volume_id} ({device}) is mounted at {paths.DATA_MOUNT}", flush=True)


def _which_volume(args) -> tuple[str, str]:
    if args.boot:
        try:
            with open(paths.DATA_RECORD) as handle:
                record = json.load(handle)
        except (OSError, ValueError) as error:
            raise AgentError(f"data-mount --boot: no record of this node's volume ({error})") from None
        volume_id, name = str(record.get("volume", "")), str(record.get("name", ""))
    else:
        volume_id, name = args.volume or "", args.name or ""
    if not VOLUME_ID_RE.match(volume_id):
        raise AgentError(f"data-mount: '{volume_id}' is not an EBS volume ID (vol-0123456789abcdef0)")
    if not NAME_RE.match(name):
        raise AgentError(f"data-mount: '{name}' is not a data volume name (swarm:dataVolumes[].name)")
    return volume_id, name


def find_device(volume_id: str) -> str | None:
    """The disk whose NVMe serial is the volume ID without its dash (what EBS reports);
    else the by-id link udev makes from it (AL2023, Ubuntu), read fresh each time."""
    serial = volume_id.replace("-", "")
    for path in sorted(glob.glob(os.path.join(paths.SYS_BLOCK, "nvme*n*", "device", "serial"))):
        try:
            with open(path) as handle:
                if handle.read().strip() == serial:
                    return "/dev/" + path.split(os.sep)[-3]
        except OSError:
            continue
    link = BY_ID + serial
    return os.path.realpath(link) if os.path.exists(link) else None


def wait_for_device(volume_id: str, timeout: float) -> str:
    return run.wait_until(
        lambda: find_device(volume_id),
        timeout,
        lambda: (
            f"data-mount: no disk with serial {volume_id.replace('-', '')} appeared within {timeout:g}s; "
            f"see 'aws ec2 describe-volumes --volume-ids {volume_id}' (attached to this instance?)"
        ),
        interval=1.0,
    )


def _format_if_empty(device: str, name: str) -> None:
    probe = run.call("blkid", "-p", "-o", "value", "-s", "TYPE", device, check=False)
    if probe.returncode == 2:  # no signature at all: a new volume
        run.call("mkfs." + FSTYPE, "-q", "-L", name[:16], "-m", "0", device)
        print(f"data: {device} held no file system; made {FSTYPE}", flush=True)
        return
    found = probe.stdout.strip()
    if probe.returncode != 0 or found != FSTYPE:
        # Never formatted over: whatever is there may be someone's data.
        raise AgentError(
            f"data-mount: {device} holds {found or 'something blkid cannot read'} (blkid exit {probe.returncode}), "
            f"not {FSTYPE}; nothing was changed. Mount it by hand to look, or give the node a new volume"
        )


def _record(volume_id: str, name: str) -> None:
    nodefs.replace(paths.DATA_RECORD, json.dumps({"volume": volume_id, "name": name}))


def _every_boot() -> None:
    """swarm-data.service and docker.service's drop-in, written once and enabled."""
    if not dockerd.has_systemd():
        run.note("data-mount: no systemd here; after a reboot, run 'swarm-node data-mount --boot' before dockerd")
        return
    drop_in = os.path.join(paths.UNIT_DIR, "docker.service.d", "swarm-data.conf")
    changed = nodefs.write_if_changed(os.path.join(paths.UNIT_DIR, UNIT), UNIT_TEXT)
    changed |= nodefs.write_if_changed(drop_in, DROP_IN_TEXT)
    if changed:
        run.systemctl("daemon-reload")
    # Started now (a no-op: mounted) so docker.service's Requires= holds from here on.
    run.systemctl("enable", "--now", UNIT)


def _holders() -> str:
    """Who keeps the mount busy, if psmisc's fuser is there to say."""
    try:
        found = run.call("fuser", "-vm", paths.DATA_MOUNT, check=False)
    except AgentError:
        return "unknown (no fuser on this node)"
    return (found.stderr + found.stdout).strip()[:300] or "unknown"


def _mounted_device() -> str | None:
    """What is mounted at /var/data now (its source)."""
    mounted = nodefs.mount_at(paths.DATA_MOUNT)
    return mounted[0] if mounted else None


@lock.exclusive(120)
def data_release(args) -> None:
    """Stop every writer (dockerd and its tasks), sync and unmount /var/data."""
    env.load()
    device = _mounted_device()
    if device is None:
        print(f"data: nothing is mounted at {paths.DATA_MOUNT}; nothing to release", flush=True)
        return
    if not dockerd.is_down():
        # dockerd gives each task its stop grace period (a database's may be long) plus 5 s;
        # systemd's stop job for docker.service ends it at its own timeout (90 s by default).
        dockerd.stop(timeout=RELEASE_STOP_WAIT)
        print("data: dockerd stopped (its tasks with it)", flush=True)
    run.call("sync")
    unmounted = run.call("umount", paths.DATA_MOUNT, check=False)
    if unmounted.returncode != 0:
        raise AgentError(
            f"data-release: {paths.DATA_MOUNT} did not unmount ({unmounted.stderr.strip()[:200]}); still using it: "
            f"{_holders()}. Nothing was detached; stop those, then run the update again"
        )
    print(f"data: unmounted {paths.DATA_MOUNT} ({device})", flush=True)
