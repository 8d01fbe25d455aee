"""The test bed: real machines for the program, on this one machine, without a cloud.

A `Bed` owns a private bridge with its own /16, a moto S3 server and an instance-metadata
stand-in on the bridge's address, and an upstream registry that plays Docker Hub. Its
`Host`s are the machines: each is a network namespace on the bridge with its own IP,
plus its own mount, UTS and PID namespaces, in which `/etc`, `/usr` and `/var` are
copy-on-write overlays of this machine's, `/var/lib/docker` is private, and `/run`,
`/tmp`, `/home` and `/root` are empty. A host runs sshd (key login as the SSH user,
passwordless sudo) and, once user-data starts it, dockerd from Debian's docker.io.

Killing a host is a crash: PID 1 of its namespace gets SIGKILL, so every process in it
dies at once, and its link goes down. Wiping it is a terminated instance: nothing of it
is left. Everything has a per-run name, and `close()` removes it all, also after errors.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
S3_PORT = 9000
UPSTREAM_PORT = 5001
IMDS_PORT = 8169
IMDS_ADDRESS = "169.254.169.254"
BED_REGION = "eu-west-1"
# Fake credentials for moto; the IMDS stand-in hands the same ones to the hosts.
S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
LOCAL_BUSYBOX = "swarm-bed/busybox:latest"  # loaded on every host, for test services
UPSTREAM_IMAGE = "library/busybox"  # only in the upstream: pulling it proves the mirror

TOOLS = {
    "ip": "iproute2",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "dockerd": "docker.io",
    "docker": "docker.io",
    "sshd": "openssh-server",
    "ssh": "openssh-client",  # swarm_backup_local.py, on the machine running Pulumi
    "sudo": "sudo",
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
    "aws": "awscli",
    "curl": "curl",
}


class BedError(RuntimeError):
    """The bed itself could not do what was asked (not a failure of the program)."""


def missing_prerequisites() -> list[str]:
    """What stops the bed from starting here, one line each with its fix."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the bed needs root (network namespaces, bridges, iptables, mounts)")
    if not Path("/proc/self/ns/net").exists():
        problems.append("this kernel has no network namespaces")
    search = f"{HOST_PATH}:{os.environ.get('PATH', '')}"
    for tool, package in TOOLS.items():
        if shutil.which(tool, path=search) is None:
            problems.append(f"{tool} is missing: apt-get install {package}")
    for module, package in (("moto.server", "moto[server]"), ("paramiko", "paramiko"), ("boto3", "boto3")):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"python module {module} is missing: scripts/setup --dev installs {package}")
    return problems


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


def _free_network() -> ipaddress.IPv4Network:
    """A /16 in 10.200-10.254 that no route or address on this machine overlaps."""
    taken = []
    for route in json.loads(sh("ip", "-4", "-j", "route", "show", "table", "all")):
        with contextlib.suppress(ValueError):
            if route.get("dst") not in (None, "default"):
                taken.append(ipaddress.ip_network(route["dst"], strict=False))
    for link in json.loads(sh("ip", "-4", "-j", "addr")):
        for addr in link.get("addr_info", []):
            taken.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    candidates = [ipaddress.ip_network(f"10.{b}.0.0/16") for b in range(200, 255)]
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in taken):
            return net
    raise BedError("no free /16 in 10.200.0.0-10.254.255.255 for the bed's bridge")


def _rootfs_tar(files: dict[str, str], links: dict[str, str]) -> bytes:
    """A tar of `files` (path in image -> file here) and symlinks, for `docker import`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, source in files.items():
            tar.add(source, arcname=arcname)
        for arcname, target in links.items():
            info = tarfile.TarInfo(arcname)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
        for directory in ("tmp", "etc/docker/registry", "var/lib/registry"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
    return buf.getvalue()


def _busybox_files() -> tuple[dict[str, str], dict[str, str]]:
    busybox = shutil.which("busybox", path=f"{HOST_PATH}:{os.environ.get('PATH', '')}")
    applets = sh(busybox, "--list").split()
    return {"bin/busybox": busybox}, {f"bin/{a}": "busybox" for a in applets if a != "busybox"}


def _shared_libraries(binary: str) -> dict[str, str]:
    """The libraries `binary` loads, by the paths ldd reports (any architecture)."""
    libs = {}
    for line in sh("ldd", binary, check=False).splitlines():
        for word in line.split():
            if word.startswith("/") and Path(word).exists():
                libs[word.lstrip("/")] = os.path.realpath(word)
    return libs


class Host:
    """One machine of the bed. Create it with `Bed.create_host`."""

    def __init__(self, bed: Bed, name: str, ip: str | None, index: int):
        self.bed, self.name, self.ip, self.index = bed, name, ip, index
        self.dir = bed.root / "hosts" / name
        self.netns = f"swarmbed-{bed.run_id}-{name}"
        self.veth = f"sb{bed.run_id}-{index}"
        self.cgroup_parent = f"/swarmbed-{bed.run_id}-{name}"
        self.holder: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.background: list[subprocess.Popen] = []
        self.alive = False

    # -- lifecycle ---------------------------------------------------------------------
    def create(self, seed: Path | None) -> None:
        for sub in ("etc-up", "etc-work", "usr-up", "usr-work", "var-up", "var-work", "home", "root"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if seed is not None:
            sh("cp", "-a", f"{seed}/.", str(self.dir / "docker"))
        else:
            (self.dir / "docker").mkdir()
        sh("ip", "netns", "add", self.netns)
        netns_opt = f"--net=/var/run/netns/{self.netns}"
        if self.ip is not None:
            sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            sh("ip", "link", "set", self.veth, "master", self.bed.bridge, "up")
            sh("ip", "-n", self.netns, "addr", "add", f"{self.ip}/{self.bed.network.prefixlen}", "dev", "eth0")
            sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", self.netns, "route", "add", IMDS_ADDRESS, "dev", "eth0")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        d = self.dir
        ready = d / "holder.ready"
        # PID 1 of the host: mounts the host's private view, then reaps orphans forever.
        script = f"""
set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-up,workdir={d}/etc-work /etc
mount -t overlay overlay -o lowerdir=/usr,upperdir={d}/usr-up,workdir={d}/usr-work /usr
mount -t overlay overlay -o lowerdir=/var,upperdir={d}/var-up,workdir={d}/var-work /var
mkdir -p /var/lib/docker
mount --bind {d}/docker /var/lib/docker
mount --bind {d}/home /home
mount --bind {d}/root /root
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
hostname {self.name}
echo {self.name} >/etc/hostname
touch {ready}
trap '' TERM
while :; do sleep 3600 & wait $! || true; done
"""
        self.holder = subprocess.Popen(
            [
                "nsenter",
                netns_opt,
                "unshare",
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "bash",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(d / "holder.log", "wb"),
        )
        wait_until(f"host {self.name} to mount its filesystems", lambda: ready.exists() or self.holder.poll(), 20)
        if not ready.exists():
            raise BedError(f"host {self.name} did not start: {(d / 'holder.log').read_text()}")
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text().split()
        self.init_pid = int(children[0])
        self.alive = True

    def provision(self, ssh_user: str, imds: bool = True) -> None:
        """What the AMI holds: the SSH user, sudo, sshd running, the stand-in systemctl.

        `imds=False` is a machine outside EC2: nothing answers at 169.254.169.254, so
        S3 works only with credentials the program gives the host."""
        # Scripts go in on stdin: the host has its own /tmp, /home and /root, where a checkout may live.
        standin = (HERE / "systemctl").read_text().replace("@CGROUP_PARENT@", self.cgroup_parent)
        self.run(
            ["sh", "-c", "cat >/usr/local/sbin/systemctl && chmod 0755 /usr/local/sbin/systemctl"],
            input=standin.encode(),
        )
        image = (HERE / "host-image.sh").read_bytes()
        self.run(["bash", "-s", "--", ssh_user, self.ip or "127.0.0.1"], input=image)
        for chain in ("OUTPUT", "PREROUTING") if imds else ():
            match = ["-d", IMDS_ADDRESS, "-p", "tcp", "--dport", "80"]
            target = ["-j", "DNAT", "--to-destination", f"{self.bed.gateway}:{IMDS_PORT}"]
            self.run(["iptables", "-t", "nat", "-A", chain, *match, *target])

    def authorize(self, user: str, public_key: str) -> None:
        self.run(
            ["sh", "-c", f"cat >>~{user}/.ssh/authorized_keys && chown {user}: ~{user}/.ssh/authorized_keys"],
            input=(public_key.strip() + "\n").encode(),
        )

    def kill(self) -> None:
        """A crash: every process of the host dies at once and its address stops answering."""
        if self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, 9)
        if self.holder is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout=30)
        for process in self.background:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if self.ip is not None:
            sh("ip", "link", "set", self.veth, "down", check=False)
        self.alive = False

    def wipe(self) -> None:
        """A terminated instance: nothing of the host is left."""
        self.kill()
        # Anything that still holds the network namespace (nothing should) goes too.
        for pid in sh("ip", "netns", "pids", self.netns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        sh("ip", "netns", "del", self.netns, check=False)
        sh("ip", "link", "del", self.veth, check=False)
        _remove_cgroups(self.cgroup_parent.lstrip("/"))
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- running things inside ---------------------------------------------------------
    def command(self, args: list[str]) -> list[str]:
        if not self.alive or self.init_pid is None:
            raise BedError(f"host {self.name} is not running")
        env = ["env", "-i", f"PATH={HOST_PATH}", "HOME=/root", "LANG=C.UTF-8"]
        return ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-n", "-p", "--wd=/", "--", *env, *args]

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
                f"on {self.name}: {argv} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result

    def docker(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        return self.run(["docker", *args], check=check, timeout=timeout).stdout.decode(errors="replace")

    def start(self, args: list[str], log: Path, input: bytes | None = None) -> subprocess.Popen:
        """Start something in the background (user-data, as cloud-init would)."""
        out = open(log, "wb")
        process = subprocess.Popen(self.command(args), stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
        if input is not None:
            process.stdin.write(input)
        process.stdin.close()
        self.background.append(process)
        return process


class Bed:
    """The bridge, S3, IMDS, the upstream registry and the hosts of one test run."""

    def __init__(self, ssh_user: str = "ec2-user", log=None):
        self.run_id = secrets.token_hex(3)
        self.ssh_user = ssh_user
        # Not under /etc, /usr, /var, /tmp, /home, /root or /run: the hosts overlay those.
        self.root = Path(os.environ.get("SWARM_BED_DIR", "/srv/swarm-bed")) / self.run_id
        self.bridge = f"sb{self.run_id}-br"
        self.network: ipaddress.IPv4Network | None = None
        self.gateway = ""
        self.hosts: dict[str, Host] = {}
        self._index = 0
        self._undo: list = []  # what close() does, newest first
        self._servers: list = []
        self.upstream: subprocess.Popen | None = None
        self.seed: Path | None = None
        self.log = log or (lambda message: None)
        self._lock = threading.Lock()

    # -- setup -------------------------------------------------------------------------
    def start(self) -> Bed:
        problems = missing_prerequisites()
        if problems:
            raise BedError("the test bed cannot start here:\n  " + "\n  ".join(problems))
        started = time.monotonic()
        reap_stale_beds(self.root.parent, self.log)
        self.root.mkdir(parents=True)
        self._undo.append(lambda: shutil.rmtree(self.root, ignore_errors=True))
        (self.root / "owner").write_text(str(os.getpid()))
        self.network = _free_network()
        self.gateway = str(self.network[-2])
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self._undo.append(lambda: sh("ip", "link", "del", self.bridge, check=False))
        sh("ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        # Hosts talk to each other and to the services on the bridge address, nowhere else.
        for position, rule in (
            ("1", ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]),
            ("2", ["FORWARD", "-i", self.bridge, "-j", "DROP"]),
            ("1", ["INPUT", "-i", self.bridge, "-j", "ACCEPT"]),
        ):
            sh("iptables", "-I", rule[0], position, *rule[1:])
            self._undo.append(lambda rule=rule: sh("iptables", "-D", *rule, check=False))
        self._start_s3()
        self._start_imds()
        self._build_images()
        self._start_upstream()
        self.push_upstream()
        self._build_seed()
        self.log(f"bed {self.run_id}: {self.network} on {self.bridge}, ready in {time.monotonic() - started:.1f}s")
        return self

    def close(self) -> None:
        errors = []
        for host in list(self.hosts.values()):
            try:
                host.wipe()
            except Exception as error:
                errors.append(f"{host.name}: {error}")
        self.hosts.clear()
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except Exception as error:
                errors.append(str(error))
        if errors:
            raise BedError("cleanup left problems:\n  " + "\n  ".join(errors))

    def __enter__(self) -> Bed:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.gateway}:{S3_PORT}"

    @property
    def upstream_url(self) -> str:
        return f"http://{self.gateway}:{UPSTREAM_PORT}"

    def program_config(self, managers: int, workers: int, vpc_cidr: str | None = None) -> dict:
        """The program's config for a stack on this bed: its VPC is the bed's network (or a
        part of it), S3 is moto, the mirror's upstream is the bed's registry."""
        return {
            "aws:region": BED_REGION,
            "swarm:sshAllowedCidrs": [str(self.network)],
            "swarm:vpcCidr": vpc_cidr or str(self.network),
            "swarm:s3Endpoint": self.s3_endpoint,
            "swarm:mirrorUpstream": self.upstream_url,
            "swarm:managerCount": managers,
            "swarm:workerCount": workers,
        }

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=BED_REGION, **S3_CREDENTIALS)

    def _start_s3(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        server = ThreadedMotoServer(ip_address=self.gateway, port=S3_PORT, verbose=False)
        server.start()
        self._undo.append(server.stop)
        wait_until("moto S3", lambda: _http_ok(self.s3_endpoint), 30)

    def _start_imds(self) -> None:
        from testbed.imds import serve

        server = serve(self.gateway, IMDS_PORT, BED_REGION, S3_CREDENTIALS)
        self._undo.append(lambda: (server.shutdown(), server.server_close()))

    def _build_images(self) -> None:
        """registry:2 from Debian's docker-registry binary, busybox from busybox-static."""
        files, links = _busybox_files()
        (self.root / "busybox.tar").write_bytes(_rootfs_tar(files, links))
        registry = shutil.which("docker-registry")
        reg_files = {"bin/registry": registry, **files, **_shared_libraries(registry)}
        reg_links = {"bin/sh": "busybox", "bin/wget": "busybox"}
        (self.root / "registry.tar").write_bytes(_rootfs_tar(reg_files, reg_links))

    def _start_upstream(self) -> None:
        """A plain registry on the bridge: Docker Hub's stand-in for the mirror."""
        config = self.root / "upstream.yml"
        config.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "storage": {"filesystem": {"rootdirectory": str(self.root / "upstream-data")}},
                    "http": {"addr": f"{self.gateway}:{UPSTREAM_PORT}"},
                }
            )
        )
        self.start_upstream()
        self._undo.append(self.stop_upstream)

    def start_upstream(self) -> None:
        if self.upstream is not None and self.upstream.poll() is None:
            return
        self.upstream = subprocess.Popen(
            [shutil.which("docker-registry"), "serve", str(self.root / "upstream.yml")],
            stdin=subprocess.DEVNULL,
            stdout=open(self.root / "upstream.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        (self.root / "upstream.pid").write_text(str(self.upstream.pid))
        wait_until("the upstream registry", lambda: _http_ok(f"{self.upstream_url}/v2/"), 30)

    def stop_upstream(self) -> None:
        if self.upstream is not None and self.upstream.poll() is None:
            self.upstream.terminate()
            try:
                self.upstream.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.upstream.kill()
                self.upstream.wait(timeout=10)

    def push_upstream(self, repository: str = UPSTREAM_IMAGE, extra: bytes = b"") -> None:
        """Push busybox as `repository`:latest with the registry HTTP API. `extra`, as one
        more file in the layer, makes an image whose blobs no cache has seen yet."""
        raw = (self.root / "busybox.tar").read_bytes()
        if extra:
            raw = _with_file(raw, "bench-payload", extra)
        layer = gzip.compress(raw, mtime=0)
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["sh"]},
                "rootfs": {"type": "layers", "diff_ids": [_digest(raw)]},
            }
        ).encode()
        base = f"{self.upstream_url}/v2/{repository}"
        for blob in (layer, config):
            with _request("POST", f"{base}/blobs/uploads/") as response:
                location = response.headers["Location"]
            location = location if location.startswith("http") else self.upstream_url + location
            separator = "&" if "?" in location else "?"
            # The content type matters: with urllib's form default the registry parses the body as a form.
            octets = {"Content-Type": "application/octet-stream"}
            with _request("PUT", f"{location}{separator}digest={_digest(blob)}", blob, octets):
                pass
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": len(config),
                    "digest": _digest(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(layer),
                        "digest": _digest(layer),
                    }
                ],
            }
        ).encode()
        headers = {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}
        with _request("PUT", f"{base}/manifests/latest", manifest, headers):
            pass

    def _build_seed(self) -> None:
        """The hosts' /var/lib/docker starts from this: the images an AMI would have baked in."""
        host = Host(self, "seed", None, 0)
        self.hosts[host.name] = host
        try:
            host.create(None)
            host.provision(self.ssh_user)
            host.run(["systemctl", "start", "docker"])
            wait_until(
                "dockerd in the seed host", lambda: host.run(["docker", "info"], check=False).returncode == 0, 60
            )
            registry_entry = 'ENTRYPOINT ["/bin/registry", "serve", "/etc/docker/registry/config.yml"]'
            host.run(
                ["docker", "import", "--change", registry_entry, "-", "registry:2"],
                input=(self.root / "registry.tar").read_bytes(),
            )
            host.run(
                ["docker", "import", "--change", 'CMD ["sh"]', "-", LOCAL_BUSYBOX],
                input=(self.root / "busybox.tar").read_bytes(),
            )
            host.run(["systemctl", "stop", "docker"])
            self.seed = self.root / "seed"
            sh("cp", "-a", str(host.dir / "docker"), str(self.seed))
            # Per-machine state a real AMI would not carry either.
            for leftover in ("network", "swarm", "containers"):
                shutil.rmtree(self.seed / leftover, ignore_errors=True)
        finally:
            host.wipe()
            del self.hosts[host.name]

    # -- hosts -------------------------------------------------------------------------
    def create_host(self, name: str, ip: str, imds: bool = True) -> Host:
        """A fresh machine at `ip`, booted as far as the AMI goes (no user-data yet)."""
        with self._lock:
            if name in self.hosts:
                raise BedError(f"host {name} exists; wipe it first")
            if ipaddress.ip_address(ip) not in self.network:
                raise BedError(f"{ip} is outside the bed's network {self.network}")
            if any(h.ip == ip for h in self.hosts.values()):
                raise BedError(f"{ip} is taken by host {self.host_at(ip).name}")
            self._index += 1
            host = Host(self, name, ip, self._index)
            self.hosts[name] = host
        host.create(self.seed)
        host.provision(self.ssh_user, imds)
        return host

    def wipe_host(self, name: str) -> None:
        host = self.hosts.pop(name)
        host.wipe()

    def host_at(self, ip: str) -> Host:
        for host in self.hosts.values():
            if host.ip == ip:
                return host
        raise BedError(f"no host at {ip}")


def _remove_cgroups(pattern: str) -> None:
    """The (empty) container cgroups a host's dockerd made under its --cgroup-parent."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        for top in controller.glob(pattern):
            for directory in [*sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True), top]:
                if directory.is_dir():
                    with contextlib.suppress(OSError):
                        directory.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_beds(base: Path, log=print) -> None:
    """Remove what beds of runs that were killed (their owner process is gone) left behind."""
    if not base.is_dir():
        return
    for root in base.iterdir():
        owner = root / "owner"
        with contextlib.suppress(ValueError, OSError):
            if owner.exists() and _alive(int(owner.read_text())):
                continue
        run_id = root.name
        log(f"removing what the killed bed run {run_id} left behind")
        with contextlib.suppress(ValueError, OSError):
            pid = int((root / "upstream.pid").read_text())
            if _alive(pid) and "docker-registry" in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, 9)
        for netns in sh("ip", "netns", "list", check=False).split():
            if netns.startswith(f"swarmbed-{run_id}-"):
                for pid in sh("ip", "netns", "pids", netns, check=False).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
                sh("ip", "netns", "del", netns, check=False)
        for link in json.loads(sh("ip", "-j", "link", check=False) or "[]"):
            if link.get("ifname", "").startswith(f"sb{run_id}-"):
                sh("ip", "link", "del", link["ifname"], check=False)
        for line in sh("iptables", "-S", check=False).splitlines():
            if f"sb{run_id}-br" in line and line.startswith("-A "):
                sh("iptables", "-D", *line.split()[1:], check=False)
        _remove_cgroups(f"swarmbed-{run_id}-*")
        shutil.rmtree(root, ignore_errors=True)


def _with_file(tar_bytes: bytes, name: str, data: bytes) -> bytes:
    """A copy of an uncompressed tar with one more regular file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _request(method: str, url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310 - bed-local
    return urllib.request.urlopen(request, timeout=30)  # noqa: S310 - bed-local URLs only


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - bed-local URLs only
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False
