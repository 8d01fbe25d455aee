"""One machine of the bed: a Debian image booted with real systemd in a namespace of its own.

A host is `systemd-nspawn --boot` (systemd as PID 1, journald, dbus, sshd, containerd,
Docker with its `docker.socket`, cloud-init) in a network namespace the bed made, with
one veth on the bed's bridge. Its root is an overlay of a cached image (`image.py`), its
`/var/lib/docker` a private directory (Docker's overlay2 cannot sit on overlayfs), and
its processes live in cgroups of their own under the bed's (removed with the host).
nspawn runs in a mount namespace of its own, so the overlay and nspawn's own mounts
vanish with it, also when the run is killed.

Lifecycle, as an EC2 instance's: `create` (disks and network, and the NoCloud seed that
carries user-data and meta-data to cloud-init, as IMDS does on EC2), `boot`,
`power_off` (an orderly shutdown, as a stopped instance), `reboot`, `kill` (a crash:
PID 1 of the machine gets SIGKILL, every process dies at once, the link goes down) and
`wipe` (a terminated instance: nothing of it is left, its logs are kept if asked).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from testbed.image import HOST_PATH, Image

IMDS_ADDRESS = "169.254.169.254"
NSPAWN_RUN = Path("/run/systemd/nspawn")  # nspawn's own directory; a tmpfs per host covers it


class BedError(RuntimeError):
    """The bed itself could not do what was asked (not a failure of the program)."""


@dataclass(frozen=True)
class Surroundings:
    """What an EC2 instance finds around it that the bed must put on each machine: names
    AWS's DNS would resolve (lines of /etc/hosts: the bed has no DNS) and files, such as
    the CA certificates by which it trusts AWS's endpoints (path in the machine: text)."""

    hosts: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)


class Site(Protocol):
    """What a host needs of the bed that makes it."""

    run_id: str
    root: Path
    bridge: str | None
    gateway: str
    ssh_user: str
    imds_port: int

    @property
    def prefixlen(self) -> int: ...

    def surroundings(self) -> Surroundings: ...

    def booted(self, host: Host) -> None:
        """Called once a host's PID 1 runs: plug in what EC2 keeps attached across boots."""


def sh(*args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> str:
    """Run a command on this machine (not in a host); its output, or BedError with its stderr."""
    result = subprocess.run(args, input=input, capture_output=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise BedError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return result.stdout.decode(errors="replace")


def wait_until(what: str, predicate, timeout: float, interval: float = 0.25):
    """Poll `predicate` until it returns something truthy; BedError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BedError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def taken_networks() -> list[ipaddress.IPv4Network]:
    """Every network a route or an address on this machine covers (a bed must overlap none)."""
    taken = []
    for route in json.loads(sh("ip", "-4", "-j", "route", "show", "table", "all")):
        with contextlib.suppress(ValueError):
            if route.get("dst") not in (None, "default"):
                taken.append(ipaddress.ip_network(route["dst"], strict=False))
    for link in json.loads(sh("ip", "-4", "-j", "addr")):
        for addr in link.get("addr_info", []):
            taken.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return taken


# -- cgroups ---------------------------------------------------------------------------------
@functools.cache
def cgroup_hierarchies() -> dict[str, Path]:
    """Each cgroup hierarchy mounted here, with the directory this process sits in."""
    mine = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mine[controllers] = path
    found = {}
    root = Path("/sys/fs/cgroup")
    # cgroup v1 or hybrid: one mount per hierarchy below it; v2 alone: the root itself.
    for mount in [root, *root.iterdir()]:
        if not mount.is_dir() or mount.is_symlink():
            continue
        fstype = sh("findmnt", "-no", "FSTYPE", str(mount), check=False).strip()
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup":
            options = sh("findmnt", "-no", "OPTIONS", str(mount), check=False).strip().split(",")
            key = ",".join(o for o in options if o not in _MOUNT_OPTIONS)
        else:
            continue
        if key in mine:
            found[str(mount)] = mount / mine[key].lstrip("/")
    return found


_MOUNT_OPTIONS = {"rw", "ro", "nosuid", "nodev", "noexec", "relatime", "noatime"}


def make_cgroups(name: str) -> list[Path]:
    """A cgroup `name` under this process's own in every hierarchy (cpuset needs its sets)."""
    made = []
    for parent in cgroup_hierarchies().values():
        directory = parent / name
        directory.mkdir(exist_ok=True)
        for setting in ("cpuset.cpus", "cpuset.mems"):
            if (directory / setting).exists() and not (directory / setting).read_text().strip():
                (directory / setting).write_text((parent / setting).read_text())
        made.append(directory)
    return made


def remove_cgroups(pattern: str) -> None:
    """Remove the (empty) cgroup trees matching `pattern` under this process's own."""
    for parent in cgroup_hierarchies().values():
        for top in parent.glob(pattern):
            for directory in [*sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True), top]:
                if directory.is_dir():
                    with contextlib.suppress(OSError):
                        directory.rmdir()


def cgroup_left(pattern: str) -> list[str]:
    return [str(p) for parent in cgroup_hierarchies().values() for p in parent.glob(pattern)]


# -- the machine -----------------------------------------------------------------------------
class Host:
    """One machine. Make it with `Bed.create_host`; `Host.standalone` for an image's first boot."""

    def __init__(self, site: Site, name: str, key: str, ip: str | None, index: int, image: Image, imds: bool = True):
        self.site, self.name, self.key, self.ip, self.index = site, name, key, ip, index
        self.image, self.imds = image, imds
        self.dir = site.root / "hosts" / key
        self.docker_dir = self.dir / "docker"
        # containerd's state, as Docker's, on a real directory (its overlayfs snapshotter
        # cannot sit on the overlay root either).
        self.containerd_dir = self.dir / "containerd"
        self.netns = f"swarmbed-{site.run_id}-{key}"
        self.veth = f"sb{site.run_id}-{index}"
        self.cgroup = f"swarmbed-{site.run_id}-{key}"
        self.holder: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.background: list[subprocess.Popen] = []
        self.alive = False
        self.boots = 0
        self.zone: str | None = None  # an EC2 instance's availability zone (its volumes' too)

    @classmethod
    def standalone(cls, name: str, image: Image, root: Path) -> Host:
        """A host with no bed around it (no bridge, no address): an image's first boot."""

        class _Alone:
            run_id = f"b{os.getpid()}"
            bridge = None
            gateway = ""
            ssh_user = "root"
            imds_port = 0
            prefixlen = 32

            def surroundings(self) -> Surroundings:
                return Surroundings()  # an image is built with no bed, and must not depend on one

            def booted(self, host: Host) -> None:
                pass  # nothing is attached to an image's first boot

        site = _Alone()
        site.root = root
        return cls(site, name, name, None, 0, image, imds=False)

    # -- lifecycle ---------------------------------------------------------------------
    def create(self, *, user_data: bytes | None = None, meta_data: dict | None = None, user: str | None = None) -> None:
        """The machine's disks and network, not yet booted. With `user_data` (or
        `meta_data`) cloud-init finds them in its NoCloud seed at boot, as an EC2
        instance finds them at the metadata service; without, cloud-init is off."""
        for sub in ("up", "work", "root", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if self.image.docker_seed.is_dir():
            sh("cp", "-a", str(self.image.docker_seed), str(self.docker_dir))
        else:  # the image's first boot, which makes the seed
            self.docker_dir.mkdir()
        if self.image.containerd_seed.is_dir():
            sh("cp", "-a", str(self.image.containerd_seed), str(self.containerd_dir))
        else:
            self.containerd_dir.mkdir()
        self._network()
        up = self.dir / "up"
        hostname = (meta_data or {}).get("local-hostname") or self.name
        _write(up / "etc/hostname", f"{hostname}\n")
        surroundings = self.site.surroundings()
        names = "".join(f"{line}\n" for line in surroundings.hosts)
        _write(up / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n{names}")
        for path, text in surroundings.files.items():
            _write(up / path.lstrip("/"), text)
        if self.ip is None:
            # No link to wait for: network-online would wait out its two minutes.
            mask = up / "etc/systemd/system/systemd-networkd-wait-online.service"
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.symlink_to("/dev/null")
        else:
            route = f"\n[Route]\nDestination={IMDS_ADDRESS}/32\nScope=link\n"
            # IPv4 only: with IPv6 on, networkd 252 waits about 13 s for router advertisements.
            network = (
                f"[Match]\nName=eth0\n\n[Network]\nAddress={self.ip}/{self.site.prefixlen}\n"
                f"LinkLocalAddressing=no\nIPv6AcceptRA=no\n{route}"
            )
            _write(up / "etc/systemd/network/10-eth0.network", network)
        if user_data is None and meta_data is None:
            _write(up / "etc/cloud/cloud-init.disabled", "the bed made this machine without cloud-init\n")
        else:
            seed = up / "var/lib/cloud/seed/nocloud"
            _write(seed / "meta-data", json.dumps(meta_data or {}, indent=1) + "\n", 0o600)
            (seed / "user-data").write_bytes(user_data or b"")
            os.chmod(seed / "user-data", 0o600)
            if user:
                _write(up / "etc/cloud/cloud.cfg.d/91-bed-user.cfg", _default_user(user))

    def _network(self) -> None:
        sh("ip", "netns", "add", self.netns)
        if self.ip is not None:
            # The machine's systemd-networkd gives eth0 its address at boot (as DHCP would
            # on EC2); an address set from outside makes networkd 252 fail the link.
            sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            sh("ip", "link", "set", self.veth, "master", self.site.bridge, "up")
            if self.imds:
                # EC2's metadata address, answered by the bed's stand-in on the bridge.
                for chain in ("OUTPUT", "PREROUTING"):
                    sh(
                        "nsenter", f"--net=/run/netns/{self.netns}", "iptables", "-w", "10", "-t", "nat", "-A", chain,
                        "-d", IMDS_ADDRESS, "-p", "tcp", "--dport", "80", "-j", "DNAT",
                        "--to-destination", f"{self.site.gateway}:{self.site.imds_port}",
                    )  # fmt: skip
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")

    def boot(self) -> None:
        """Start the machine: nspawn, with systemd as PID 1. Returns once PID 1 runs."""
        if self.alive:
            raise BedError(f"host {self.key} is running already")
        if self.ip is not None:
            sh("ip", "link", "set", self.veth, "up", check=False)
        cgroups = make_cgroups(self.cgroup)
        NSPAWN_RUN.mkdir(parents=True, exist_ok=True)
        d = self.dir
        enter_cgroups = "".join(f"echo $$ >{c}/cgroup.procs\n" for c in cgroups)
        unified = "env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 " if self.image.unified_cgroups else ""  # see image.Recipe
        script = f"""set -e
{enter_cgroups}mount -t tmpfs -o mode=0755 tmpfs {NSPAWN_RUN}
mount -t overlay overlay -o lowerdir={self.image.rootfs},upperdir={d}/up,workdir={d}/work {d}/root
exec {unified}systemd-nspawn --quiet --register=no --keep-unit --boot --directory={d}/root --machine={self.key} \\
  --private-network --network-namespace-path=/run/netns/{self.netns} \\
  --capability=all --system-call-filter='@keyring bpf' --bind={self.docker_dir}:/var/lib/docker \\
  --bind={self.containerd_dir}:/var/lib/containerd \\
  --resolv-conf=off --timezone=off --link-journal=no --console=read-only
"""
        self.boots += 1
        console = open(d / "logs" / "console.log", "ab")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        console.close()
        self.init_pid = wait_until(f"host {self.key} to start systemd", self._find_init, 30, interval=0.05)
        self.alive = True
        self.site.booted(self)

    def _find_init(self) -> int | None:
        """PID 1 of the machine: the nspawn process's child that is PID 1 in its namespace."""
        if self.holder.poll() is not None:
            log = (self.dir / "logs" / "console.log").read_text(errors="replace")[-2000:]
            raise BedError(f"host {self.key}: systemd-nspawn exited ({self.holder.returncode}):\n{log}")
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text().split():
                status = Path(f"/proc/{child}/status").read_text()
                nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
                if nspid[-1:] == ["1"] and len(nspid) > 1:
                    return int(child)
        return None

    def wait_booted(self, timeout: float = 120) -> str:
        """Until systemd has finished starting up: 'running' (or 'degraded': see the log)."""

        def state():
            out = self.run(["systemctl", "is-system-running"], check=False, timeout=30).stdout.decode().strip()
            return out if out in ("running", "degraded") else None

        result = wait_until(f"host {self.key} to finish booting", state, timeout, interval=0.2)
        if result == "degraded":
            failed = self.run(["systemctl", "--failed", "--plain", "--no-legend"], check=False).stdout.decode()
            (self.dir / "logs" / "degraded.txt").write_text(failed)
        return result

    def wait_docker(self, timeout: float = 120) -> None:
        wait_until(f"dockerd on {self.key}", lambda: self.run(["docker", "info"], check=False).returncode == 0, timeout)

    def wait_cloud_init(self, timeout: float = 600) -> None:
        """Until cloud-init's final stage is done (user-data ran): boot-finished exists."""
        wait_until(
            f"cloud-init on {self.key}",
            lambda: self.run(["test", "-e", "/var/lib/cloud/instance/boot-finished"], check=False).returncode == 0,
            timeout,
            interval=0.5,
        )

    def kill(self) -> None:
        """A crash: every process of the machine dies at once and its address stops answering."""
        if self.init_pid is not None and self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, 9)
        self._reap()
        if self.ip is not None:
            sh("ip", "link", "set", self.veth, "down", check=False)

    def power_off(self, timeout: float = 90) -> None:
        """An orderly shutdown (a stopped instance): nspawn asks systemd to halt."""
        if self.alive and self.holder is not None and self.holder.poll() is None:
            self.holder.terminate()
            try:
                self.holder.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                (self.dir / "logs" / "degraded.txt").write_text(f"did not power off within {timeout:.0f}s; killed\n")
                self.kill()
                return
        self._reap()

    def reboot(self, timeout: float = 90) -> None:
        """Stop and start (an instance's stop/start): same disks, same address."""
        self.power_off(timeout)
        self.boot()

    def _reap(self) -> None:
        if self.holder is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout=30)
        for process in self.background:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.alive = False

    def wipe(self, keep_logs: Path | None = None) -> None:
        """A terminated instance: nothing of the host is left (its logs go to `keep_logs`)."""
        if keep_logs is not None:
            with contextlib.suppress(Exception):
                self.collect_logs(keep_logs)
        self.kill()
        # Anything still in the network namespace (nothing should be) goes too.
        for pid in sh("ip", "netns", "pids", self.netns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "del", self.netns, check=False)
        if self.ip is not None:
            sh("ip", "link", "del", self.veth, check=False)
        with contextlib.suppress(BedError):
            wait_until(f"{self.key}'s cgroups to empty", self._remove_cgroups, 10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_cgroups(self) -> bool:
        remove_cgroups(self.cgroup)
        return not cgroup_left(self.cgroup)

    def collect_logs(self, destination: Path) -> Path:
        """The machine's journal, console and cloud-init and user-data logs, for later reading."""
        target = destination / f"host-{self.key}"
        target.mkdir(parents=True, exist_ok=True)
        for path in (self.dir / "logs").iterdir():
            shutil.copy(path, target / path.name)
        for log in ("cloud-init-output.log", "cloud-init.log", "swarm-user-data.log"):
            source = self.dir / "up/var/log" / log
            if source.exists():
                shutil.copy(source, target / log)
        if self.alive:
            journal = self.run(["journalctl", "--no-pager", "-o", "short-precise"], check=False, timeout=60).stdout
            (target / "journal.log").write_bytes(journal)
        return target

    # -- running things inside ---------------------------------------------------------
    def command(self, args: list[str]) -> list[str]:
        if not self.alive or self.init_pid is None:
            raise BedError(f"host {self.key} is not running")
        env = ["env", "-i", f"PATH={HOST_PATH}", "HOME=/root", "LANG=C.UTF-8"]
        namespaces = ["-m", "-u", "-i", "-n", "-p", "-C"]
        return ["nsenter", "-t", str(self.init_pid), *namespaces, "--wd=/", "--", *env, *args]

    def run(
        self,
        args: list[str] | str,
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess:
        """Run as root inside the host (a string runs through sh -c)."""
        argv = ["sh", "-c", args] if isinstance(args, str) else list(args)
        result = subprocess.run(self.command(argv), input=input, capture_output=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise BedError(
                f"on {self.key}: {argv} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    def docker(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        return self.run(["docker", *args], check=check, timeout=timeout).stdout.decode(errors="replace")

    def start(self, args: list[str], log: Path, input: bytes | None = None) -> subprocess.Popen:
        """Start something in the background inside the host."""
        out = open(log, "wb")
        process = subprocess.Popen(self.command(args), stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        if input is not None:
            process.stdin.write(input)
        process.stdin.close()
        self.background.append(process)
        return process

    def add_user(self, user: str) -> None:
        """What a machine someone set up by hand has: a user with passwordless sudo."""
        self.run(["bash", "-c", _ADD_USER, "add-user", user])

    def authorize(self, user: str, public_key: str) -> None:
        self.run(
            ["sh", "-c", f"cat >>~{user}/.ssh/authorized_keys && chown {user}: ~{user}/.ssh/authorized_keys"],
            input=(public_key.strip() + "\n").encode(),
        )


_ADD_USER = """set -euo pipefail
user=$1
id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
echo "$user ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/90-users
chmod 0440 /etc/sudoers.d/90-users
"""


def _default_user(user: str) -> str:
    """cloud-init's default user, as an AMI names it (ec2-user on Amazon Linux)."""
    return (
        "system_info:\n  default_user:\n"
        f"    name: {user}\n    lock_passwd: true\n    gecos: Default user\n"
        "    groups: [adm, sudo]\n    sudo: ['ALL=(ALL) NOPASSWD:ALL']\n    shell: /bin/bash\n"
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
