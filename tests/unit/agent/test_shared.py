"""shared.py: the stack's EFS file system at /var/data/shared, on fakes.

This machine's kernel has no NFS client, so nothing here (nor on the bed) mounts for
real: `mount`, `umount`, `sync`, the package managers and systemctl are stand-ins, and
what is proven is what the verb asks of them and writes: the fstab line, once; the
package each distribution needs; a bounded retry; the drop-ins; and the release's order.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from node_fakes import FAKE_TOOL
from swarm_agent import cli, data, paths, shared

REAL_MOUNT_POINT = paths.SHARED_MOUNT  # read before the fixture points every path at a temporary node
FS = "fs-0123456789abcdef0"
NFS = "nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,_netdev,nofail"
DEBIAN_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'
AL2023_RELEASE = 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nID_LIKE="fedora"\nPRETTY_NAME="Amazon Linux 2023"\n'
UBUNTU_RELEASE = 'PRETTY_NAME="Ubuntu 24.04 LTS"\nID=ubuntu\nID_LIKE=debian\n'
OLD_FSTAB = "# /etc/fstab\nLABEL=root / ext4 defaults 0 1\n"


@pytest.fixture
def node(fakes):
    """A systemd node with no NFS client yet: the package managers install its helper."""
    for tool in ("mount", "umount", "sync"):
        _fake(fakes, tool)
    for installer in ("apt-get", "dnf"):
        _installer(fakes, installer)
    Path(paths.SYSTEMD_RUN).mkdir(parents=True)
    Path(paths.FSTAB).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.FSTAB).write_text(OLD_FSTAB)
    release(DEBIAN_RELEASE)
    mounts()
    return fakes


def _fake(fakes, tool: str) -> None:
    shutil.copy(FAKE_TOOL, fakes.bin / tool)
    (fakes.bin / tool).chmod(0o755)


def _installer(fakes, tool: str) -> None:
    """A fake package manager whose `install` leaves the mount helpers behind, as the package does."""
    real = fakes.root / "installers"
    real.mkdir(exist_ok=True)
    shutil.copy(FAKE_TOOL, real / tool)
    (real / tool).chmod(0o755)
    helpers = " ".join(str(fakes.bin / h) for h in ("mount.nfs4", "mount.efs"))
    script = (
        f'#!/bin/sh\n"{real / tool}" "$@" || exit $?\n'
        f'case " $* " in *" install "*) touch {helpers}; chmod +x {helpers};; esac\n'
    )
    (fakes.bin / tool).write_text(script)
    (fakes.bin / tool).chmod(0o755)


def release(text: str) -> None:
    Path(paths.OS_RELEASE).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.OS_RELEASE).write_text(text)


def mounts(*lines: str) -> None:
    Path(paths.PROC, "self").mkdir(parents=True, exist_ok=True)
    base = "/dev/nvme0n1p1 / ext4 rw,relatime 0 0\n"
    Path(paths.PROC, "self", "mounts").write_text(base + "".join(f"{line}\n" for line in lines))


def nfs_line(file_system: str = FS, region: str = "eu-west-1") -> str:
    return f"{file_system}.efs.{region}.amazonaws.com:/ {paths.SHARED_MOUNT} nfs4 {NFS} 0 0"


def mount_verb(file_system: str = FS, region: str = "eu-west-1", *extra: str) -> int:
    return cli.main(["shared-mount", "--fs", file_system, "--region", region, *extra])


def ready(fakes) -> None:
    fakes.on("mount")
    fakes.on("apt-get")
    fakes.on("dnf")
    fakes.on("systemctl")


def test_the_mount_point_is_under_var_data():
    assert REAL_MOUNT_POINT == "/var/data/shared"
    assert shared.mount_unit(REAL_MOUNT_POINT) == "var-data-shared.mount"


def test_debian_gets_nfs_common_one_fstab_line_a_mount_and_dockerd_waits_for_it(node, capsys):
    ready(node)
    assert mount_verb() == 0
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB + nfs_line() + "\n"
    assert node.argvs("apt-get") == [
        ["update", "-q"],
        ["-o", "DPkg::Lock::Timeout=120", "install", "-y", "-q", "nfs-common"],
    ]
    assert node.argvs("dnf") == []
    assert node.argvs("mount") == [[paths.SHARED_MOUNT]]  # from the fstab line: what every boot does
    assert os.path.isdir(paths.SHARED_MOUNT)
    docker = Path(paths.UNIT_DIR, "docker.service.d", "swarm-shared.conf").read_text()
    assert f"RequiresMountsFor={paths.SHARED_MOUNT}\n" in docker and "After=remote-fs.target" in docker
    unit = shared.mount_unit(paths.SHARED_MOUNT)
    assert f"After={data.UNIT}\n" in Path(paths.UNIT_DIR, unit + ".d", "swarm-shared.conf").read_text()
    # The mount unit and the drop-ins are read before the mount; dockerd is not restarted.
    assert node.argvs("systemctl") == [["daemon-reload"]]
    assert f"shared: mounted {FS} at {paths.SHARED_MOUNT} (nfs4)" in capsys.readouterr().out


def test_a_second_run_changes_nothing(node):
    ready(node)
    assert mount_verb() == 0
    fstab = Path(paths.FSTAB).read_text()
    drop_ins = {path: Path(path).read_text() for path in shared.drop_ins()}
    calls = len(node.calls())
    mounts(f"{FS}.efs.eu-west-1.amazonaws.com:/ {paths.SHARED_MOUNT} nfs4 rw,vers=4.1 0 0")
    assert mount_verb() == 0
    assert Path(paths.FSTAB).read_text() == fstab and fstab.count(paths.SHARED_MOUNT) == 1
    assert {path: Path(path).read_text() for path in shared.drop_ins()} == drop_ins
    assert node.calls()[calls:] == []  # no install, no daemon-reload, no second mount


def test_a_line_for_another_file_system_is_replaced_in_place(node):
    ready(node)
    stale = f"fs-00000000aaaaaaaa0.efs.eu-west-1.amazonaws.com:/ {paths.SHARED_MOUNT} nfs4 defaults 0 0"
    Path(paths.FSTAB).write_text(OLD_FSTAB + stale + "\n" + stale + "\ntmpfs /tmp tmpfs defaults 0 0\n")
    assert mount_verb() == 0
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB + nfs_line() + "\ntmpfs /tmp tmpfs defaults 0 0\n"


def test_amazon_linux_gets_efs_utils_and_its_tls_mount_type(node):
    ready(node)
    release(AL2023_RELEASE)
    assert mount_verb() == 0
    assert node.argvs("dnf") == [["install", "-y", "amazon-efs-utils"]]
    assert node.argvs("apt-get") == []
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB + f"{FS}:/ {paths.SHARED_MOUNT} efs _netdev,tls,nofail 0 0\n"


def test_an_installed_client_is_not_installed_again(node):
    ready(node)
    _fake(node, "mount.nfs4")
    assert mount_verb() == 0
    assert node.argvs("apt-get") == [] and node.argvs("mount") == [[paths.SHARED_MOUNT]]


@pytest.mark.parametrize(
    ("text", "client"),
    [
        (DEBIAN_RELEASE, shared.DEBIAN),
        (UBUNTU_RELEASE, shared.DEBIAN),
        (AL2023_RELEASE, shared.AMAZON_LINUX),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', shared.FEDORA),
        ("ID=fedora\n", shared.FEDORA),
    ],
)
def test_the_package_follows_the_distribution(fakes, text, client):
    release(text)
    assert shared.client_for(shared.os_release()) == client


def test_a_distribution_without_a_known_client_is_refused_before_anything_changes(node, capsys):
    ready(node)
    release('PRETTY_NAME="Alpine Linux v3.20"\nID=alpine\n')
    assert mount_verb() == 1
    assert "no NFS client known for Alpine Linux v3.20" in capsys.readouterr().err
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB and node.calls() == []


def test_china_regions_have_their_own_dns_suffix():
    line = shared.fstab_line(FS, "cn-north-1", shared.DEBIAN)
    assert line.startswith(f"{FS}.efs.cn-north-1.amazonaws.com.cn:/ ")


@pytest.mark.parametrize(
    ("file_system", "region", "said"),
    [
        ("fs-XYZ01234", "eu-west-1", "is not an EFS file system ID"),
        ("fs-0123", "eu-west-1", "is not an EFS file system ID"),
        ("vol-0123456789abcdef0", "eu-west-1", "is not an EFS file system ID"),
        (f"{FS};reboot", "eu-west-1", "is not an EFS file system ID"),
        (f"{FS}.efs.evil.example:/", "eu-west-1", "is not an EFS file system ID"),
        (FS, "eu west 1", "is not an AWS region"),
        (FS, "../../etc", "is not an AWS region"),
        (FS, "", "is not an AWS region"),
    ],
)
def test_bad_ids_and_regions_are_refused_and_nothing_is_touched(node, capsys, file_system, region, said):
    ready(node)
    assert mount_verb(file_system, region) == 1
    assert said in capsys.readouterr().err
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB
    assert node.calls() == []


def test_the_mount_is_retried_until_the_mount_targets_answer(node, capsys):
    unresolved = "mount.nfs4: Failed to resolve server fs-0123.efs: Name or service not known\n"
    node.on("mount", rc=32, times=3, stderr=unresolved)
    ready(node)
    assert mount_verb() == 0
    assert len(node.argvs("mount")) == 4
    assert node.clock.slept == 3 * shared.RETRY_INTERVAL


def test_a_mount_that_never_succeeds_gives_up_in_bounded_time_and_says_why(node, capsys):
    node.on("mount", rc=32, stderr="mount.nfs4: Connection timed out\n")
    ready(node)
    assert mount_verb(FS, "eu-west-1", "--timeout", "60") == 1
    error = capsys.readouterr().err
    assert "did not mount within 60s (mount.nfs4: Connection timed out)" in error
    assert "describe-mount-targets" in error
    assert 60 <= node.clock.slept <= 60 + shared.RETRY_INTERVAL
    assert len(node.argvs("mount")) == 7


def test_something_else_at_the_mount_point_is_never_mounted_over(node, capsys):
    ready(node)
    mounts(f"/dev/nvme1n1 {paths.SHARED_MOUNT} ext4 rw 0 0")
    assert mount_verb() == 1
    assert "holds /dev/nvme1n1 (ext4)" in capsys.readouterr().err
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB and node.calls() == []


def test_without_systemd_the_mount_is_made_and_the_boot_order_is_left_to_the_operator(node, capsys):
    ready(node)
    os.rmdir(paths.SYSTEMD_RUN)
    assert mount_verb() == 0
    assert "no systemd here" in capsys.readouterr().err
    assert not any(os.path.exists(path) for path in shared.drop_ins())
    assert node.argvs("systemctl") == []


# -- shared-release ---------------------------------------------------------------------------
def first(fakes, tool: str, *args: str, rc: int = 0, stderr: str = "", times=None) -> None:
    """A rule ahead of those already there (the first that matches answers)."""
    fakes.on(tool, *args, rc=rc, stderr=stderr, times=times)
    fakes.rules.insert(0, fakes.rules.pop())
    fakes._save()


def mounted_and_running(node) -> None:
    ready(node)
    assert mount_verb() == 0
    mounts(f"{FS}.efs.eu-west-1.amazonaws.com:/ {paths.SHARED_MOUNT} nfs4 rw,vers=4.1 0 0")
    first(node, "systemctl", "is-active", rc=3)  # then down
    first(node, "systemctl", "is-active", times=2)  # docker.socket and docker.service: up
    first(node, "systemctl", "show", "-P", "LoadState")
    node.rules[0]["stdout"] = "loaded\n"
    node._save()
    node.docker_up()
    node.on("sync")


def test_release_stops_the_writers_flushes_unmounts_forgets_and_starts_dockerd_again(node, capsys):
    mounted_and_running(node)
    node.on("umount")
    start = len(node.calls())
    assert cli.main(["shared-release"]) == 0
    steps = [" ".join([c["tool"], *c["args"]]) for c in node.calls()[start:] if c["tool"] != "docker"]
    steps = [s for s in steps if not s.startswith(("systemctl show", "systemctl is-active", "systemctl reset-failed"))]
    assert steps == [
        "systemctl stop docker.socket docker.service",
        "sync",
        f"umount {paths.SHARED_MOUNT}",
        "systemctl daemon-reload",
        "systemctl start docker.socket docker.service",
    ]
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB
    assert not any(os.path.exists(path) for path in shared.drop_ins())
    assert "shared: dockerd started again" in capsys.readouterr().out


def test_a_busy_mount_is_detached_lazily_rather_than_holding_up_the_night(node, capsys):
    mounted_and_running(node)
    node.on("umount", "-l")
    node.on("umount", rc=32, stderr="umount: target is busy.\n")
    assert cli.main(["shared-release"]) == 0
    assert node.argvs("umount") == [[paths.SHARED_MOUNT], ["-l", paths.SHARED_MOUNT]]
    assert "was busy (umount: target is busy.); detached lazily" in capsys.readouterr().err
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB


def test_release_with_nothing_mounted_only_forgets_the_mount(node, capsys):
    ready(node)
    assert mount_verb() == 0
    start = len(node.calls())
    assert cli.main(["shared-release"]) == 0
    assert [c["tool"] for c in node.calls()[start:] if c["tool"] != "systemctl"] == []
    assert ["stop", "docker.socket", "docker.service"] not in node.argvs("systemctl")
    assert Path(paths.FSTAB).read_text() == OLD_FSTAB
    assert "nothing is mounted" in capsys.readouterr().out
