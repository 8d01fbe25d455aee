"""The stack's shared file system (swarm:sharedFiles): EFS, mounted at /var/data/shared.

`shared-mount` runs from Pulumi on every node after `ready` (and after the node's data
volume, when it has one: /var/data/shared sits on it), before the node bootstraps or
joins, so no task of the swarm starts here without the shared files. It installs the
NFS client when it is missing (nfs-common on Debian and Ubuntu; amazon-efs-utils on
Amazon Linux 2023, whose `efs` mount type adds TLS), writes one /etc/fstab line for the
mount point (a second run changes nothing; a line for another file system is replaced),
and mounts it, retrying for a bounded time: DNS answers for a morning's new mount targets
a minute or two after they are made. Every later boot mounts it before dockerd: a
drop-in makes docker.service require the mount, so a file system that cannot be reached
keeps dockerd down rather than let tasks write into the empty directory on the root
disk; another orders the mount after the data volume's unit, which would hide it.

`shared-release` is the mount command's `delete` (each night, when the node is
replaced, and when swarm:sharedFiles is turned off): dockerd is stopped, which stops
every task that writes there, the client's cached writes are flushed to EFS and the file
system unmounted before its mount targets go; then the fstab line and the drop-ins are
removed and dockerd is started again, so a node that stays keeps working.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import NamedTuple

from swarm_agent import data, dockerd, lock, nodefs, paths, run
from swarm_agent.run import AgentError

FILE_SYSTEM_RE = re.compile(r"^fs-[0-9a-f]{8,17}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
# AWS's recommended NFS options for EFS; nofail: a boot without EFS still comes up (dockerd does not).
NFS_OPTIONS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,_netdev,nofail"
EFS_OPTIONS = "_netdev,tls,nofail"
MOUNT_TIMEOUT = 150  # one attempt: mount.nfs itself retries for 2 minutes before giving up
RETRY_INTERVAL = 10
UMOUNT_TIMEOUT = 60  # a hard mount whose server is gone does not answer: then it goes lazily
DROP_IN = "swarm-shared.conf"


class Client(NamedTuple):
    """How a distribution mounts EFS: the package, the mount helper it brings, its fstab fields."""

    package: str
    helper: str
    installer: str  # apt-get | dnf
    fstype: str
    options: str


DEBIAN = Client("nfs-common", "mount.nfs4", "apt-get", "nfs4", NFS_OPTIONS)
AMAZON_LINUX = Client("amazon-efs-utils", "mount.efs", "dnf", "efs", EFS_OPTIONS)
FEDORA = Client("nfs-utils", "mount.nfs4", "dnf", "nfs4", NFS_OPTIONS)  # RHEL too: no efs-utils package there


def shared_mount(args) -> None:
    """Mount the stack's EFS file system at /var/data/shared, now and at every boot."""
    file_system, region = checked(args.fs or "", args.region or "")
    with lock.held("shared-mount", 120):
        client = client_for(os_release())
        line = fstab_line(file_system, region, client)
        mounted = mounted_source()
        _refuse_another(mounted, line)
        ensure_client(client)
        changed = write_fstab(line)
        changed |= _write_drop_ins()
        if changed and dockerd.has_systemd():
            run.systemctl("daemon-reload")  # systemd makes the mount unit from the new fstab line
        os.makedirs(paths.SHARED_MOUNT, mode=0o755, exist_ok=True)
        if mounted is not None:
            print(f"shared: {file_system} is mounted at {paths.SHARED_MOUNT}", flush=True)
            return
        mount_with_retry(args.timeout)
        print(f"shared: mounted {file_system} at {paths.SHARED_MOUNT} ({client.fstype})", flush=True)


def checked(file_system: str, region: str) -> tuple[str, str]:
    if not FILE_SYSTEM_RE.match(file_system):
        raise AgentError(f"shared-mount: '{file_system}' is not an EFS file system ID (fs-0123456789abcdef0)")
    if not REGION_RE.match(region):
        raise AgentError(f"shared-mount: '{region}' is not an AWS region (eu-west-1)")
    return file_system, region


def os_release() -> dict[str, str]:
    values = {}
    try:
        with open(paths.OS_RELEASE) as handle:
            for line in handle:
                key, sep, raw = line.strip().partition("=")
                if sep and key.isidentifier():
                    words = shlex.split(raw)
                    values[key] = words[0] if words else ""
    except (OSError, ValueError) as error:
        raise AgentError(f"shared-mount: cannot tell the distribution ({paths.OS_RELEASE}: {error})") from None
    return values


def client_for(release: dict[str, str]) -> Client:
    """As user-data picks its package manager: by ID, then by what the distribution is like."""
    ids = [release.get("ID", ""), *release.get("ID_LIKE", "").split()]
    for known, client in (("amzn", AMAZON_LINUX), ("debian", DEBIAN), ("ubuntu", DEBIAN), ("fedora", FEDORA)):
        if known in ids:
            return client
    if "rhel" in ids:
        return FEDORA
    name = release.get("PRETTY_NAME") or release.get("ID") or "this distribution"
    raise AgentError(f"shared-mount: no NFS client known for {name} (Amazon Linux 2023, Debian and Ubuntu have one)")


def fstab_line(file_system: str, region: str, client: Client) -> str:
    if client.fstype == "efs":
        source = f"{file_system}:/"  # the helper finds the name and the region itself
    else:
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        source = f"{file_system}.efs.{region}.{suffix}:/"
    return f"{source} {paths.SHARED_MOUNT} {client.fstype} {client.options} 0 0"


def ensure_client(client: Client) -> None:
    if _installed(client.helper):
        return
    if client.installer == "apt-get":
        quiet = {"DEBIAN_FRONTEND": "noninteractive"}
        run.call("apt-get", "update", "-q", env=quiet)
        # A boot's unattended-upgrades may hold dpkg's lock for a while: wait for it.
        run.call("apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q", client.package, env=quiet)
    else:
        run.call("dnf", "install", "-y", client.package)
    if not _installed(client.helper):
        raise AgentError(f"shared-mount: {client.package} is installed but {client.helper} is not there")
    print(f"shared: installed {client.package}", flush=True)


def _installed(program: str) -> bool:
    try:
        run.which(program)
    except AgentError:
        return False
    return True


def _mounts_here(line: str) -> bool:
    fields = line.split()
    return len(fields) > 1 and not fields[0].startswith("#") and fields[1] == paths.SHARED_MOUNT


def write_fstab(line: str) -> bool:
    """The one line for the mount point: kept where it is, replaced, or appended. Changed?"""
    try:
        with open(paths.FSTAB) as handle:
            text = handle.read()
    except FileNotFoundError:
        text = ""
    lines = text.splitlines()
    if [existing for existing in lines if _mounts_here(existing)] == [line]:
        return False
    wanted: list[str] = []
    for existing in lines:
        if not _mounts_here(existing):
            wanted.append(existing)
        elif line not in wanted:  # the first line for the mount point becomes ours, the others go
            wanted.append(line)
    if line not in wanted:
        wanted.append(line)
    nodefs.replace(paths.FSTAB, "".join(f"{kept}\n" for kept in wanted), mode=0o644)
    print(f"shared: {paths.FSTAB}: {line}", flush=True)
    return True


def forget_fstab() -> bool:
    try:
        with open(paths.FSTAB) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return False
    kept = [existing for existing in lines if not _mounts_here(existing)]
    if kept == lines:
        return False
    nodefs.replace(paths.FSTAB, "".join(f"{existing}\n" for existing in kept), mode=0o644)
    return True


def mount_unit(path: str) -> str:
    """systemd's name for the mount unit of `path` (as `systemd-escape --path --suffix=mount`)."""
    escaped = []
    for index, char in enumerate(path.strip("/")):
        if char == "/":
            escaped.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_.") and not (index == 0 and char == "."):
            escaped.append(char)
        else:
            escaped.extend(f"\\x{byte:02x}" for byte in char.encode())
    return "".join(escaped) + ".mount"


def drop_ins() -> dict[str, str]:
    """Where each drop-in goes, and what it says."""
    mount = paths.SHARED_MOUNT
    docker = (
        "[Unit]\n# swarm:sharedFiles: no task starts before the shared file system is mounted, and none\n"
        f"# when it cannot be (agent/swarm_agent/shared.py).\nRequiresMountsFor={mount}\nAfter=remote-fs.target\n"
    )
    after_data = (
        f"[Unit]\n# A data volume (swarm:dataVolumes) is mounted at /var/data by {data.UNIT}: this mount\n"
        f"# comes after it, or the volume would hide it.\nAfter={data.UNIT}\n"
    )
    return {
        os.path.join(paths.UNIT_DIR, "docker.service.d", DROP_IN): docker,
        os.path.join(paths.UNIT_DIR, mount_unit(mount) + ".d", DROP_IN): after_data,
    }


def _write_drop_ins() -> bool:
    if not dockerd.has_systemd():
        run.note(f"shared-mount: no systemd here; after a reboot, mount {paths.SHARED_MOUNT} before dockerd starts")
        return False
    changed = False
    for path, text in drop_ins().items():
        changed |= nodefs.write_if_changed(path, text)
    return changed


def mounted_source() -> str | None:
    """What is mounted at the mount point now (its source; its type too when not NFS)."""
    mounted = nodefs.mount_at(paths.SHARED_MOUNT)
    if mounted is None:
        return None
    source, fstype = mounted
    return source if fstype.startswith("nfs") else f"{source} ({fstype})"


def _refuse_another(mounted: str | None, line: str) -> None:
    """Something else at the mount point is never mounted over (efs-utils' TLS mounts read
    127.0.0.1:/, whatever the file system: those are taken as this one)."""
    wanted = line.split()[0]
    if mounted is None or mounted == wanted or mounted.startswith("127.0.0.1:"):
        return
    raise AgentError(
        f"shared-mount: {paths.SHARED_MOUNT} holds {mounted}, not {wanted}; nothing was changed. "
        "Release it first (swarm-node shared-release), then run the update again"
    )


def mount_with_retry(timeout: float) -> None:
    last = {"error": "no attempt"}

    def attempt() -> bool:
        result = run.call("mount", paths.SHARED_MOUNT, check=False, timeout=MOUNT_TIMEOUT)
        last["error"] = (result.stderr or result.stdout).strip()[-300:] or f"exit {result.returncode}"
        return result.returncode == 0

    run.wait_until(
        attempt,
        timeout,
        lambda: (
            f"shared-mount: {paths.SHARED_MOUNT} did not mount within {timeout:g}s ({last['error']}); are the file "
            "system's mount targets 'available' (aws efs describe-mount-targets) and does the VPC resolve DNS "
            "hostnames? dockerd will not start at the next boot until it mounts"
        ),
        interval=RETRY_INTERVAL,
    )


@lock.exclusive(120)
def shared_release(args) -> None:
    """Stop every writer (dockerd and its tasks), flush and unmount /var/data/shared, forget
    the mount, and start dockerd again if it ran: a node that stays keeps working."""
    stopped = False
    if mounted_source() is None:
        print(f"shared: nothing is mounted at {paths.SHARED_MOUNT}", flush=True)
    else:
        if not dockerd.is_down():
            dockerd.stop(timeout=data.RELEASE_STOP_WAIT)  # each task's stop grace period, as data-release
            stopped = True
            print("shared: dockerd stopped (its tasks with it)", flush=True)
        run.call("sync")  # NFS writes back what the client still holds, and commits it
        _unmount()
    changed = forget_fstab()
    for path in drop_ins():
        if os.path.exists(path):
            os.remove(path)
            changed = True
    if changed and dockerd.has_systemd():
        run.systemctl("daemon-reload")
    if stopped:
        dockerd.start()
        print("shared: dockerd started again", flush=True)


def _unmount() -> None:
    result = run.call("umount", paths.SHARED_MOUNT, check=False, timeout=UMOUNT_TIMEOUT)
    if result.returncode == 0:
        print(f"shared: unmounted {paths.SHARED_MOUNT}", flush=True)
        return
    # After the sync what the tasks wrote is on EFS: a shell still in there must not hold
    # up the night. Detached now, the mount goes when its last user lets go of it.
    run.call("umount", "-l", paths.SHARED_MOUNT, timeout=UMOUNT_TIMEOUT)
    run.note(f"shared-release: {paths.SHARED_MOUNT} was busy ({result.stderr.strip()[:200]}); detached lazily")
