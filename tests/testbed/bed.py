"""The test bed: real machines for the program, on this one machine, without a cloud.

A `Bed` owns a private bridge with its own /16, a moto S3 server and an instance-metadata
stand-in on the bridge's address, an upstream registry that plays Docker Hub, ECR's
stand-in (`ecr.py`: a private registry with rotating credentials and its token API),
Auto Scaling's (`autoscaling.py`: groups that launch and drain hosts, and their API), and
CloudWatch's alarms (`alarms.py`: moto stores them, the bed evaluates them and publishes
to their SNS topics; moto also plays CloudWatch Logs, CloudWatch and SNS themselves). Its
`Host`s (`host.py`) are the machines: Debian images (`image.py`) booted with real
systemd by systemd-nspawn, each in its own network namespace on the bridge, with sshd,
Docker behind its `docker.socket`, and cloud-init, which runs an instance's user-data
from a NoCloud seed as it runs EC2's from the metadata service.

Two machines may share a name, as two EC2 instances may (a replacement and the machine
it replaces): `hosts` is keyed by a unique key, the name itself unless it is taken.
Everything has a per-run name, and `close()` removes it all, also after errors; a later
run removes what a killed run left (`reap_stale_beds`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from testbed import image as images
from testbed.addresses import DEFAULT_QUOTA, PublicAddresses
from testbed.alarms import Alarms
from testbed.autoscaling import AutoScaling
from testbed.ecr import ECR_HOST, REGISTRY_PID, Ecr, push_image
from testbed.host import BedError, Host, Surroundings, cgroup_left, remove_cgroups, sh, taken_networks, wait_until
from testbed.image import HOST_PATH, LOCAL_BUSYBOX, Image
from testbed.lifecycle import Lifecycle
from testbed.volumes import BlockVolumes
from testbed.volumes import reap as reap_volumes

__all__ = ["BED_REGION", "ECR_HOST", "LOCAL_BUSYBOX", "UPSTREAM_PORT", "Bed", "BedError", "Host", "sh", "wait_until"]

S3_PORT = 9000
UPSTREAM_PORT = 5001
IMDS_PORT = 8169
AUTOSCALING_PORT = 8171  # beside ECR's API (8170)
BED_REGION = "eu-west-1"
# Fake credentials for moto; the IMDS stand-in hands the same ones to the hosts.
S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
UPSTREAM_IMAGE = "library/busybox"  # only in the upstream: pulling it proves the mirror

# What this machine needs (the hosts carry their own Docker, sshd and AWS CLI).
TOOLS = {
    "ip": "iproute2",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "findmnt": "util-linux",
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "docker": "docker.io",  # the client only: app tests and the sandbox talk to the hosts' Docker
    "ssh": "openssh-client",  # swarm_backup_local.py, on the machine running Pulumi
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
}


def missing_prerequisites() -> list[str]:
    """What stops the bed from starting here, one line each with its fix."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the bed needs root (network namespaces, bridges, iptables, mounts, systemd-nspawn)")
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


def _free_network() -> ipaddress.IPv4Network:
    """A /16 in 10.200-10.254 that no route or address on this machine overlaps."""
    taken = taken_networks()
    candidates = [ipaddress.ip_network(f"10.{b}.0.0/16") for b in range(200, 255)]
    random.shuffle(candidates)
    for net in candidates:
        if not any(net.overlaps(other) for other in taken):
            return net
    raise BedError("no free /16 in 10.200.0.0-10.254.255.255 for the bed's bridge")


class Bed:
    """The bridge, S3, IMDS, the upstream registry, ECR and the hosts of one test run."""

    imds_port = IMDS_PORT

    def __init__(
        self,
        ssh_user: str = "ec2-user",
        log=None,
        image: str | None = None,
        log_dir: Path | None = None,
        address_quota: int = DEFAULT_QUOTA,
    ):
        """`image` is the default image of its hosts (`image.RECIPES`); `log_dir`, if
        given, receives each host's journal and logs when it is wiped; `address_quota` is
        the Elastic IPs the bed's "region" allows (EC2's default, unless raised)."""
        self.run_id = secrets.token_hex(3)
        self.ssh_user = ssh_user
        self.root = Path(os.environ.get("SWARM_BED_DIR", "/srv/swarm-bed")) / self.run_id
        self.bridge = f"sb{self.run_id}-br"
        self.network: ipaddress.IPv4Network | None = None
        self.gateway = ""
        self.hosts: dict[str, Host] = {}
        self.image_name = image or images.DEFAULT_IMAGE
        self.images: dict[str, Image] = {}
        self.log_dir = log_dir
        self._index = 0
        self._undo: list = []  # what close() does, newest first
        self.upstream: subprocess.Popen | None = None
        self.imds = None  # the metadata stand-in (testbed/imds.py), once started
        self.ecr: Ecr | None = None  # ECR's stand-in, once started
        self.alarms: Alarms | None = None  # CloudWatch's alarm evaluation, once moto runs
        self.volumes = BlockVolumes(self.root)  # EBS: volumes kept apart from the machines
        self.iam_roles: set[str] = set()  # IAM: the account's role names (getRoles)
        self.lifecycle = Lifecycle(self.volumes)  # DLM: snapshot policies, run when a test says
        self.newest_ami = "ami-0bed0bed0bed0bed0"  # what SSM says is the newest AL2023 AMI
        self.addresses = PublicAddresses(self.bridge, lambda message: self.log(message), address_quota)
        self.log = log or (lambda message: None)
        # Auto Scaling: groups, and their API once started (autoscaling.py)
        self.autoscaling = AutoScaling(lambda message: self.log(message))
        self._lock = threading.Lock()
        self._image_lock = threading.Lock()

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    # -- setup -------------------------------------------------------------------------
    def start(self) -> Bed:
        problems = missing_prerequisites()
        if problems:
            raise BedError("the test bed cannot start here:\n  " + "\n  ".join(problems))
        started = time.monotonic()
        reap_stale_beds(self.root.parent, self.log)
        self.root.mkdir(parents=True)
        self._undo.append(lambda: shutil.rmtree(self.root, ignore_errors=True))
        self._undo.append(self.volumes.close)  # after every host is wiped (close() wipes them first)
        (self.root / "owner").write_text(str(os.getpid()))
        self.image(self.image_name)
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
            sh("iptables", "-w", "10", "-I", rule[0], position, *rule[1:])
            self._undo.append(lambda rule=rule: sh("iptables", "-w", "10", "-D", *rule, check=False))
        self._undo.append(self.addresses.close)
        self.addresses.start()
        self._start_s3()
        self._start_imds()
        (self.root / "busybox.tar").write_bytes(images.busybox_tar())
        self._start_upstream()
        self.push_upstream()
        self._start_ecr()
        self.autoscaling.serve(self.gateway, AUTOSCALING_PORT)
        self.log(f"bed {self.run_id}: {self.network} on {self.bridge}, ready in {time.monotonic() - started:.1f}s")
        return self

    def image(self, name: str | None = None) -> Image:
        """An image for hosts (built once and cached: see image.py)."""
        name = name or self.image_name
        with self._image_lock:
            if name not in self.images:
                try:
                    self.images[name] = images.image(name, log=self.log)
                except images.ImageError as error:
                    raise BedError(f"image {name}: {error}") from None
            return self.images[name]

    def close(self) -> None:
        errors = []
        try:  # first: its launches under way end, so no machine starts after the wipe below
            self.autoscaling.close()
        except Exception as error:
            errors.append(f"autoscaling: {error}")
        for host in list(self.hosts.values()):
            try:
                host.wipe(self.log_dir)
            except Exception as error:
                errors.append(f"{host.key}: {error}")
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
    def autoscaling_endpoint(self) -> str:
        """Auto Scaling's API, for `aws autoscaling --endpoint-url` (SSM's is moto's, `s3_endpoint`)."""
        return f"http://{self.gateway}:{AUTOSCALING_PORT}"

    @property
    def upstream_url(self) -> str:
        return f"http://{self.gateway}:{UPSTREAM_PORT}"

    @property
    def ecr_endpoint(self) -> str:
        """ECR's API (GetAuthorizationToken), for `aws ecr --endpoint-url`."""
        return self.ecr.api_url

    def booted(self, host: Host) -> None:
        """A host's PID 1 runs: its attached volumes appear in its fresh /dev (host.Site)."""
        with contextlib.suppress(BedError):  # a host that dies at once has nothing to plug
            self.volumes.plug(host)

    def surroundings(self) -> Surroundings:
        """What each host finds around it as on EC2 (host.Site): ECR's name and CA."""
        return self.ecr.surroundings() if self.ecr is not None else Surroundings()

    def program_config(self, managers: int, workers: int, vpc_cidr: str | None = None) -> dict:
        """The program's config for a stack on this bed: its VPC is the bed's network (or a
        part of it), S3 is moto, the mirror's upstream is the bed's registry, ECR its stand-in."""
        return {
            "aws:region": BED_REGION,
            "swarm:sshAllowedCidrs": [str(self.network)],
            "swarm:vpcCidr": vpc_cidr or str(self.network),
            "swarm:s3Endpoint": self.s3_endpoint,
            "swarm:mirrorUpstream": self.upstream_url,
            "swarm:ecrEndpoint": self.ecr_endpoint,
            "swarm:ssmEndpoint": self.s3_endpoint,  # moto answers every service on one endpoint
            "swarm:logsEndpoint": self.s3_endpoint,  # CloudWatch Logs
            "swarm:monitoringEndpoint": self.s3_endpoint,  # CloudWatch (metrics, alarms)
            "swarm:autoscalingEndpoint": self.autoscaling_endpoint,
            # The images hold registry:2 imported from Debian's binary: no Docker Hub digest.
            "swarm:mirrorImage": "registry:2",
            "swarm:managerCount": managers,
            "swarm:workerCount": workers,
        }

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=BED_REGION, **S3_CREDENTIALS)

    def ssm(self):
        return self.client("ssm")

    def logs(self):
        """CloudWatch Logs (moto): what reached the log groups, also after the machines are gone."""
        return self.client("logs")

    def cloudwatch(self):
        return self.client("cloudwatch")

    def sns(self):
        return self.client("sns")

    def client(self, service: str):
        """A boto3 client for any service moto plays, at its one endpoint on the bridge."""
        import boto3
        from botocore.config import Config

        # Bounded: moto is local, a call that hangs is a bed fault, not something to wait out.
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2})
        return boto3.client(
            service, endpoint_url=self.s3_endpoint, region_name=BED_REGION, config=config, **S3_CREDENTIALS
        )

    def watch_topic(self, topic_arn: str) -> None:
        """Start keeping what reaches an SNS topic (the alarms' own topics are kept from
        their first notification): only messages published after this are seen."""
        self.alarms.watch(topic_arn)

    def topic_messages(self, topic_arn: str, timeout: float = 0.0, count: int = 1) -> list[dict]:
        """The SNS envelopes (Subject, Message: the alarm's JSON, ...) that reached the topic,
        read back through an SQS queue subscribed to it; waits up to `timeout` for `count`."""
        return self.alarms.topic_messages(topic_arn, timeout, count)

    def _start_s3(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        server = ThreadedMotoServer(ip_address=self.gateway, port=S3_PORT, verbose=False)
        server.start()
        self._undo.append(server.stop)
        wait_until("moto S3", lambda: _http_ok(self.s3_endpoint), 30)
        self.alarms = Alarms(self.client, BED_REGION, lambda message: self.log(message)).start()
        self._undo.append(self.alarms.stop)  # before moto stops

    def _start_imds(self) -> None:
        from testbed.imds import serve

        self.imds = serve(self.gateway, IMDS_PORT, BED_REGION, S3_CREDENTIALS)
        self._undo.append(lambda: (self.imds.shutdown(), self.imds.server_close()))

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

    def _start_ecr(self) -> None:
        self.ecr = Ecr(self.root, self.gateway)
        self._undo.append(self.ecr.close)  # before start: a start that fails halfway stops what runs
        self.ecr.start()

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
            raw = images.with_file(raw, "bench-payload", extra)
        push_image(self.upstream_url, repository, raw)

    # -- hosts -------------------------------------------------------------------------
    def create_host(
        self,
        name: str,
        ip: str,
        imds: bool = True,
        *,
        image: str | None = None,
        user_data: bytes | None = None,
        meta_data: dict | None = None,
    ) -> Host:
        """A fresh machine at `ip`.

        With `user_data` or `meta_data` it is an EC2 instance: it boots, cloud-init finds
        both in its NoCloud seed, makes the SSH user with the meta-data's `public-keys`
        and runs the user-data in its final stage; this returns as soon as the machine
        runs, as EC2's RunInstances does. Without, it is a machine someone set up by hand:
        booted, with the SSH user and passwordless sudo, ready for `authorize`.
        `imds=False`: nothing answers at 169.254.169.254 (a machine outside EC2)."""
        chosen = self.image(image)
        with self._lock:
            if ipaddress.ip_address(ip) not in self.network:
                raise BedError(f"{ip} is outside the bed's network {self.network}")
            taken = next((h for h in self.hosts.values() if h.ip == ip), None)
            if taken is not None:
                raise BedError(f"{ip} is taken by host {taken.key}")
            key, n = name, 1
            while key in self.hosts:
                n += 1
                key = f"{name}.{n}"
            self._index += 1
            host = Host(self, name, key, ip, self._index, chosen, imds)
            self.hosts[key] = host
        ec2 = user_data is not None or meta_data is not None
        host.create(user_data=user_data, meta_data=meta_data, user=self.ssh_user if ec2 else None)
        host.boot()
        if not ec2:
            host.wait_booted()
            host.add_user(self.ssh_user)
        return host

    def wipe_host(self, key: str) -> None:
        host = self.hosts.pop(key)
        host.wipe(self.log_dir)
        self.volumes.terminated(host)  # detached and kept, as EC2 does at termination
        if host.ip is not None:
            self.forget_address(host.ip)

    def forget_address(self, ip: str) -> None:
        """Forget which machine had `ip`, on this machine and on every host, as a VPC does:
        a new instance at a reused address (a replaced manager) answers at once, where a
        stale ARP entry would send its first packets to the gone machine's MAC for 30 s."""
        sh("ip", "neigh", "flush", "to", ip, "dev", self.bridge, check=False)
        for other in list(self.hosts.values()):
            sh("ip", "-n", other.netns, "neigh", "flush", "to", ip, check=False)

    def group_host(self, instance_id: str) -> Host:
        """The machine of an instance an Auto Scaling group launched."""
        key = self.autoscaling.instance(instance_id).host
        if key not in self.hosts:
            raise BedError(f"instance {instance_id} has no machine (now)")
        return self.hosts[key]

    def host_at(self, ip: str) -> Host:
        for host in self.hosts.values():
            if host.ip == ip:
                return host
        raise BedError(f"no host at {ip}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_beds(base: Path, log=print) -> None:
    """Remove what beds of runs that were killed (their owner process is gone) left behind:
    machines, namespaces, links, iptables rules, cgroups, directories, unfinished images."""
    runs = {}
    if base.is_dir():
        for root in base.iterdir():
            owner = root / "owner"
            with contextlib.suppress(ValueError, OSError):
                if owner.exists() and _alive(int(owner.read_text())):
                    continue
            runs[root.name] = root
    # An image's first boot runs outside any bed, named after the process that built it.
    for netns in sh("ip", "netns", "list", check=False).split():
        prefix = netns.split("-")[1] if netns.startswith("swarmbed-") else ""
        if prefix.startswith("b") and prefix[1:].isdigit() and not _alive(int(prefix[1:])):
            runs.setdefault(prefix, None)
    for run_id, root in runs.items():
        log(f"removing what the killed bed run {run_id} left behind")
        if root is not None:
            for pid_file in ("upstream.pid", REGISTRY_PID):
                with contextlib.suppress(ValueError, OSError):
                    pid = int((root / pid_file).read_text())
                    if _alive(pid) and "docker-registry" in Path(f"/proc/{pid}/cmdline").read_text():
                        os.kill(pid, 9)
        for netns in sh("ip", "netns", "list", check=False).split():
            if netns.startswith(f"swarmbed-{run_id}-"):
                # PID 1 of a machine is among them: its whole PID namespace dies with it.
                for pid in sh("ip", "netns", "pids", netns, check=False).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
                sh("ip", "netns", "del", netns, check=False)
        for link in json.loads(sh("ip", "-j", "link", check=False) or "[]"):
            if link.get("ifname", "").startswith(f"sb{run_id}-"):
                sh("ip", "link", "del", link["ifname"], check=False)
        for table in ("filter", "nat"):
            for line in sh("iptables", "-w", "10", "-t", table, "-S", check=False).splitlines():
                if f"sb{run_id}-br" in line and line.startswith("-A "):
                    sh("iptables", "-w", "10", "-t", table, "-D", *line.split()[1:], check=False)
        with contextlib.suppress(BedError):
            wait_until(f"the cgroups of run {run_id} to empty", lambda run_id=run_id: _reap_cgroups(run_id), 20)
        if root is not None:
            reap_volumes(root)  # its machines are gone: nothing holds their disks now
            shutil.rmtree(root, ignore_errors=True)
    images.remove_stale_builds(log)


def _reap_cgroups(run_id: str) -> bool:
    remove_cgroups(f"swarmbed-{run_id}-*")
    return not cgroup_left(f"swarmbed-{run_id}-*")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - bed-local URLs only
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False
