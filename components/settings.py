"""Typed, validated settings for one swarm environment (one Pulumi stack).

Every default and every configuration error of the program lives here. The rest of
the code receives a `Settings` and never reads `pulumi.Config` itself. Validation runs
before any resource is registered: a bad value stops the program with one line per
problem, each naming the key and the `pulumi config set ...` that fixes it, so a typo
can never destroy or half-create anything.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi

NAMESPACE = "swarm"

# The defaults, also declared in Pulumi.yaml (a unit test keeps the two in step: under
# mocks and in the test bed the CLI that applies Pulumi.yaml defaults is not there).
DEFAULTS: dict[str, Any] = {
    "managerCount": 3,
    "workerCount": 2,
    "architecture": "x86_64",
    "sshUser": "ec2-user",
    "vpcCidr": "10.42.0.0/16",
    "azCount": 3,
    "connectVia": "public",
    "rootVolumeSize": 30,
    "mirror": True,
    "mirrorPort": 5000,
    "mirrorUpstream": "https://registry-1.docker.io",
    "backupOnDestroy": True,
    "backupRetentionDays": 30,
    "backupKeep": 14,
    "restoreFrom": "latest",
    "backupTarget": "s3",
    "backupDirectory": "~/.swarm/backups",
}

# Keys that only mean something when the program creates EC2 machines; with swarm:hosts a
# value other than the default is a mistake worth stopping for (the CLI fills in defaults).
EC2_ONLY_KEYS = (
    "managerCount",
    "workerCount",
    "instanceType",
    "architecture",
    "amiId",
    "vpcId",
    "subnetIds",
    "vpcCidr",
    "azCount",
    "connectVia",
    "rootVolumeSize",
    "sshAllowedCidrs",
    "sshPublicKey",
)
HOST_KEYS = ("name", "address", "role", "privateAddress", "user", "port")
BACKUP_TARGETS = ("s3", "local", "none")

DEFAULT_INSTANCE_TYPE = {"x86_64": "t3.medium", "arm64": "t4g.medium"}
AL2023_SSM_PARAMETER = {
    "x86_64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "arm64": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
}
MAX_MANAGERS = 7
MIN_RETENTION_DAYS = 7
# Pinned manager addresses are host numbers FIRST_PINNED_HOST.. of their subnet: AWS
# reserves the first four and the last address of every subnet.
FIRST_PINNED_HOST = 10
AWS_RESERVED_ADDRESSES = 5
# SSH: how often and how long pulumi-command dials a node that is still booting.
DIAL_ERROR_LIMIT = 60
# At teardown manager 0 has been up all day: if it does not answer a few dials, stop and
# say so rather than retry for ten minutes while the nightly job waits.
BACKUP_DIAL_ERROR_LIMIT = 5
PER_DIAL_TIMEOUT = 10

_STACK_SAFE = re.compile(r"[^a-z0-9-]+")
_INSTANCE_TYPE = re.compile(r"^(?P<family>[a-z]+)(?P<gen>\d+)(?P<attrs>[a-z-]*)\.(?P<size>[a-z0-9-]+)$")
_BACKUP_KEY = re.compile(r"^backups/[A-Za-z0-9._-]+\.tar\.gz$")
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(pulumi.RunError):
    """Raised for invalid configuration. A RunError prints as a clean message, no traceback."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(problems))


@dataclass(frozen=True)
class SubnetPlan:
    """A subnet the nodes go into: existing (id known) or one the program creates."""

    cidr: str
    availability_zone: str
    subnet_id: str | None = None
    vpc_id: str | None = None


@dataclass(frozen=True)
class NodePlan:
    """One machine of the swarm, decided before anything is created."""

    name: str  # also the node's hostname, which `reconcile` matches on
    role: str  # "manager" | "worker"
    index: int
    subnet_index: int
    private_ip: str | None  # EC2: pinned for managers, AWS-assigned for workers; hosts: advertised
    # Only for machines the user brings (swarm:hosts): where and as whom Pulumi logs in.
    address: str | None = None
    user: str | None = None
    port: int = 22


@dataclass(frozen=True)
class Settings:
    stack: str
    project: str
    cluster_name: str
    region: str
    manager_count: int
    worker_count: int
    instance_type: str
    architecture: str
    ami_id: str | None
    ami_ssm_parameter: str
    ssh_allowed_cidrs: list[str]
    ssh_user: str
    ssh_public_key: str | None
    ssh_private_key: pulumi.Output[str] | None
    vpc_id: str | None
    subnets: list[SubnetPlan]
    vpc_cidr: str | None
    connect_via: str
    root_volume_size: int
    mirror_enabled: bool
    mirror_port: int
    mirror_upstream: str
    s3_endpoint: str | None
    backup_on_destroy: bool
    backup_retention_days: int
    backup_keep: int
    restore_from: str
    state_bucket_name: str | None
    tags: dict[str, str]
    nodes: list[NodePlan] = field(default_factory=list)
    # Bring-your-own-machines mode (swarm:hosts): no VPC, instances or key pair.
    hosts_mode: bool = False
    backup_target: str = "s3"  # s3 | local | none
    backup_directory: str | None = None  # local: where backups land on the Pulumi machine
    existing_state_bucket: str | None = None  # s3: the user's bucket, not created here
    s3_access_key_id: pulumi.Output[str] | None = None  # hosts + s3: the hosts' credentials
    s3_secret_access_key: pulumi.Output[str] | None = None

    @property
    def mirror_storage(self) -> str:
        """Where the mirror keeps its cache: the state bucket, or a volume on each manager."""
        return "s3" if self.backup_target == "s3" else "filesystem"

    @property
    def state_prefix(self) -> str:
        """Key prefix of this stack inside the state bucket (stacks may share a bucket)."""
        return f"{NAMESPACE}/{self.stack}/"

    @property
    def managers(self) -> list[NodePlan]:
        return [n for n in self.nodes if n.role == "manager"]

    @property
    def workers(self) -> list[NodePlan]:
        return [n for n in self.nodes if n.role == "worker"]

    @property
    def registry_mirrors(self) -> list[str]:
        """Mirror URLs, known before boot because manager addresses are pinned."""
        if not self.mirror_enabled:
            return []
        return [f"http://{m.private_ip}:{self.mirror_port}" for m in self.managers]


def _fix(key: str, example: str, path: str | None = None) -> str:
    """The command that sets `key`; `path` is an element (`[0]`, `.team`) for list and map keys."""
    if path is not None:
        return f"pulumi config set --path '{NAMESPACE}:{key}{path}' {example}"
    return f"pulumi config set {NAMESPACE}:{key} {example}"


class _Reader:
    """Reads raw config, collecting every problem instead of stopping at the first."""

    def __init__(self, config: pulumi.Config):
        self.config = config
        self.problems: list[str] = []

    def problem(self, key: str, what: str, example: str, path: str | None = None) -> None:
        self.problems.append(f"{NAMESPACE}:{key} {what}; fix: {_fix(key, example, path)}")

    def raw(self, key: str) -> str | None:
        return self.config.get(key)

    def integer(self, key: str, example: str, check: Callable[[int], bool], rule: str) -> int:
        raw = self.raw(key)
        if raw is None:
            return DEFAULTS[key]
        try:
            value = int(str(raw).strip())
        except ValueError:
            self.problem(key, f"must be a whole number {rule} (got {raw!r})", example)
            return DEFAULTS[key]
        if not check(value):
            self.problem(key, f"must be {rule} (got {value})", example)
        return value

    def boolean(self, key: str) -> bool:
        raw = self.raw(key)
        if raw is None:
            return DEFAULTS[key]
        text = str(raw).strip().lower()
        if text in ("true", "false"):
            return text == "true"
        self.problem(key, f"must be true or false (got {raw!r})", "true")
        return DEFAULTS[key]

    def string(self, key: str) -> str | None:
        raw = self.raw(key)
        if raw is None:
            return DEFAULTS.get(key)
        text = str(raw).strip()
        return text or DEFAULTS.get(key)

    def string_list(self, key: str, example: str, path: str = "[0]") -> list[str] | None:
        """A JSON list, or (forgivingly) a comma-separated string."""
        raw = self.raw(key)
        if raw is None:
            return None
        text = str(raw).strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.problem(key, f"must be a list of strings (got {text!r})", example, path=path)
                return None
            return [v.strip() for v in value]
        return [part.strip() for part in text.split(",") if part.strip()]

    def string_map(self, key: str, example: str, path: str = ".team") -> dict[str, str]:
        raw = self.raw(key)
        if raw is None:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in value.items()
        ):
            self.problem(key, f"must be a map of tag names to values (got {raw!r})", example, path=path)
            return {}
        return {k: str(v) for k, v in value.items()}


def architecture_of_instance_type(instance_type: str) -> str | None:
    """x86_64 or arm64 from an EC2 instance type's name; None if it is not one.

    Graviton types carry a "g" in the attributes after the generation digit
    (t4g, m7gd, c7gn, im4gn, g5g); a1 is the first Graviton.
    """
    m = _INSTANCE_TYPE.match(instance_type)
    if not m:
        return None
    if m["family"] == "a" and m["gen"] == "1":
        return "arm64"
    return "arm64" if "g" in m["attrs"] else "x86_64"


def _cidr(value: str) -> ipaddress._BaseNetwork | None:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        return None


def plan_nodes(cluster_name: str, managers: int, workers: int, subnets: list[SubnetPlan]) -> list[NodePlan]:
    """Spread managers and workers over the subnets (so over AZs); pin manager addresses.

    Manager i goes to subnet i mod n at host FIRST_PINNED_HOST + i div n: Docker can only
    restore a manager's Raft state onto the address it advertised yesterday.
    """
    n = len(subnets)
    plans = []
    for i in range(managers):
        subnet = subnets[i % n]
        ip = ipaddress.ip_network(subnet.cidr)[FIRST_PINNED_HOST + i // n]
        plans.append(NodePlan(f"{cluster_name}-manager-{i}", "manager", i, i % n, str(ip)))
    for i in range(workers):
        plans.append(NodePlan(f"{cluster_name}-worker-{i}", "worker", i, i % n, None))
    return plans


def _check_subnet_room(
    r: _Reader,
    subnets: list[SubnetPlan],
    managers: int,
    workers: int,
    key: str,
    example: str,
    path: str | None = None,
) -> None:
    n = len(subnets)
    pinned_per_subnet = math.ceil(managers / n) if managers else 0
    workers_per_subnet = math.ceil(workers / n) if workers else 0
    for s in subnets:
        net = ipaddress.ip_network(s.cidr)
        last_pinned = FIRST_PINNED_HOST + pinned_per_subnet - 1
        usable = net.num_addresses - AWS_RESERVED_ADDRESSES
        if last_pinned > net.num_addresses - 2 or usable < pinned_per_subnet + workers_per_subnet:
            r.problem(
                key,
                f"gives subnet {s.cidr}, too small for {pinned_per_subnet} pinned manager "
                f"address(es) from host .{FIRST_PINNED_HOST} and {workers_per_subnet} worker(s)",
                example,
                path,
            )
            return


def _sanitize(stack: str) -> str:
    return _STACK_SAFE.sub("-", stack.lower()).strip("-")[:24] or "default"


def load_settings(
    config: pulumi.Config | None = None,
    stack: str | None = None,
    project: str | None = None,
    lookup_subnet: Callable[[str], SubnetPlan] | None = None,
    lookup_zones: Callable[[], list[str]] | None = None,
) -> Settings:
    """Read and validate every `swarm:*` key; raise ConfigError listing every problem.

    `lookup_subnet` and `lookup_zones` read AWS (subnets the user names, the region's
    zones); they are only called once the plain values are valid.
    """
    config = config or pulumi.Config(NAMESPACE)
    stack = stack or pulumi.get_stack()
    project = project or pulumi.get_project()
    r = _Reader(config)
    # With swarm:hosts the user brings the machines: no VPC, instances or key pair.
    hosts_mode = r.raw("hosts") is not None
    backup_target = r.string("backupTarget") or DEFAULTS["backupTarget"]
    if backup_target not in BACKUP_TARGETS:
        r.problem("backupTarget", f"must be s3, local or none (got {backup_target!r})", "s3")
        backup_target = DEFAULTS["backupTarget"]
    elif backup_target != "s3" and not hosts_mode:
        r.problem(
            "backupTarget",
            f"is {backup_target}, which is for machines you bring (swarm:hosts); on EC2 backups "
            "and the mirror cache go to the state bucket",
            "s3",
        )

    # The AWS provider also takes the region from the environment; so do we.
    region = pulumi.Config("aws").get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and backup_target == "s3":
        why = " (the hosts reach the state bucket in it)" if hosts_mode else ""
        r.problems.append(f"aws:region is not set{why}; fix: pulumi config set aws:region eu-west-1")

    managers = r.integer(
        "managerCount",
        "3",
        lambda v: 1 <= v <= MAX_MANAGERS and v % 2 == 1,
        f"an odd number from 1 to {MAX_MANAGERS} (Raft needs a majority)",
    )
    workers = r.integer("workerCount", "2", lambda v: 0 <= v <= 1000, "from 0 to 1000")

    architecture = r.string("architecture") or DEFAULTS["architecture"]
    if architecture not in DEFAULT_INSTANCE_TYPE:
        r.problem("architecture", f"must be x86_64 or arm64 (got {architecture!r})", "x86_64")
        architecture = DEFAULTS["architecture"]
    instance_type = r.string("instanceType") or DEFAULT_INSTANCE_TYPE[architecture]
    type_arch = architecture_of_instance_type(instance_type)
    if type_arch is None:
        r.problem(
            "instanceType", f"is not an EC2 instance type (got {instance_type!r})", DEFAULT_INSTANCE_TYPE[architecture]
        )
    elif type_arch != architecture:
        r.problem(
            "instanceType",
            f"{instance_type} is {type_arch} but swarm:architecture is {architecture}; "
            f"pick a matching type (or set swarm:architecture {type_arch})",
            DEFAULT_INSTANCE_TYPE[architecture],
        )

    ami_id = r.string("amiId")
    if ami_id and not _AMI_ID.match(ami_id):
        r.problem("amiId", f"must look like ami-0123456789abcdef0 (got {ami_id!r})", "ami-0123456789abcdef0")

    ssh_cidrs = r.string_list("sshAllowedCidrs", "203.0.113.10/32")
    if not hosts_mode and (r.raw("sshAllowedCidrs") is None or ssh_cidrs == []):
        r.problem(
            "sshAllowedCidrs",
            "is required (no default): the networks allowed to SSH to the nodes",
            "203.0.113.10/32",
            path="[0]",
        )
    ssh_cidrs = ssh_cidrs or []
    for cidr in ssh_cidrs:
        net = _cidr(cidr)
        if net is None:
            hint = ""
            try:
                hint = f" (did you mean {ipaddress.ip_network(cidr, strict=False)}?)"
            except ValueError:
                pass
            r.problem(
                "sshAllowedCidrs",
                f"has {cidr!r}, not a CIDR block{hint}",
                "203.0.113.10/32",
                path="[0]",
            )
        elif net.prefixlen == 0:
            pulumi.log.warn(f"{NAMESPACE}:sshAllowedCidrs admits SSH from the whole internet ({cidr})")

    ssh_user = r.string("sshUser") or DEFAULTS["sshUser"]
    if not _SSH_USER.match(ssh_user):
        r.problem("sshUser", f"is not a valid Linux user name (got {ssh_user!r})", "ec2-user")

    ssh_public_key = r.string("sshPublicKey")
    ssh_private_key = config.get_secret("sshPrivateKey")
    has_private = r.raw("sshPrivateKey") is not None
    if hosts_mode and not has_private:
        r.problems.append(
            f"{NAMESPACE}:sshPrivateKey is required with {NAMESPACE}:hosts (the key Pulumi logs in to your "
            f"machines with); fix: pulumi config set --secret {NAMESPACE}:sshPrivateKey < ~/.ssh/id_ed25519"
        )
    if ssh_public_key and not has_private:
        r.problems.append(
            f"{NAMESPACE}:sshPrivateKey is required when {NAMESPACE}:sshPublicKey is set (the program "
            f"connects to the nodes with it); fix: pulumi config set --secret {NAMESPACE}:sshPrivateKey "
            f"< ~/.ssh/id_ed25519"
        )
    if has_private and not ssh_public_key and not hosts_mode:
        r.problem("sshPublicKey", "is required when swarm:sshPrivateKey is set", '"$(cat ~/.ssh/id_ed25519.pub)"')
    if ssh_public_key and not re.match(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+", ssh_public_key):
        r.problem(
            "sshPublicKey", "must be an OpenSSH public key line (ssh-ed25519 AAAA...)", '"$(cat ~/.ssh/id_ed25519.pub)"'
        )

    connect_via = r.string("connectVia") or DEFAULTS["connectVia"]
    if connect_via not in ("public", "private"):
        r.problem("connectVia", f"must be public or private (got {connect_via!r})", "public")

    root_volume_size = r.integer("rootVolumeSize", "30", lambda v: 8 <= v <= 16384, "from 8 to 16384 (GiB)")

    mirror_enabled = r.boolean("mirror")
    mirror_port = r.integer(
        "mirrorPort",
        "5000",
        lambda v: 1024 <= v <= 65535 and v not in (2377, 7946, 4789),
        "from 1024 to 65535 and not a swarm port (2377, 7946, 4789)",
    )
    mirror_upstream = r.string("mirrorUpstream") or DEFAULTS["mirrorUpstream"]
    if not re.match(r"^https?://[^\s/]+", mirror_upstream):
        r.problem("mirrorUpstream", f"must be an http(s) URL (got {mirror_upstream!r})", "https://registry-1.docker.io")
    s3_endpoint = r.string("s3Endpoint")
    if s3_endpoint and not re.match(r"^https?://[^\s/]+", s3_endpoint):
        r.problem("s3Endpoint", f"must be an http(s) URL (got {s3_endpoint!r})", "https://minio.example.com:9000")

    backup_on_destroy = r.boolean("backupOnDestroy")
    retention = r.integer(
        "backupRetentionDays",
        "30",
        lambda v: MIN_RETENTION_DAYS <= v <= 3650,
        f"at least {MIN_RETENTION_DAYS} days (and at most 3650)",
    )
    backup_keep = r.integer("backupKeep", "14", lambda v: 1 <= v <= 1000, "from 1 to 1000")
    restore_from = r.string("restoreFrom") or DEFAULTS["restoreFrom"]
    if restore_from not in ("latest", "none") and not _BACKUP_KEY.match(restore_from):
        r.problem("restoreFrom", f"must be latest, none or backups/<name>.tar.gz (got {restore_from!r})", "latest")
    elif restore_from != "latest" and backup_target != "none":
        # Bootstrap only restores onto a fresh manager 0, but a pin left in place would
        # bring this backup (or a new swarm) back every morning.
        pulumi.log.warn(
            f"{NAMESPACE}:restoreFrom is {restore_from}: every fresh morning uses it until "
            f"'pulumi config rm {NAMESPACE}:restoreFrom'"
        )

    state_bucket_name = r.string("stateBucketName")
    if state_bucket_name and not _BUCKET.match(state_bucket_name):
        r.problem(
            "stateBucketName", f"is not a valid S3 bucket name (got {state_bucket_name!r})", f"my-company-swarm-{stack}"
        )
    existing_bucket = r.string("existingStateBucket")
    if existing_bucket and not _BUCKET.match(existing_bucket):
        r.problem("existingStateBucket", f"is not a valid S3 bucket name (got {existing_bucket!r})", "my-backups")
    if existing_bucket and state_bucket_name:
        r.problem(
            "stateBucketName",
            "names a bucket to create, but swarm:existingStateBucket says to use one that exists; keep one",
            '""',
        )
    if existing_bucket and backup_target != "s3":
        r.problem("existingStateBucket", f"is not used with swarm:backupTarget {backup_target}", '""')

    access_key_id = config.get_secret("s3AccessKeyId")
    secret_access_key = config.get_secret("s3SecretAccessKey")
    has_keys = {key: r.raw(key) is not None for key in ("s3AccessKeyId", "s3SecretAccessKey")}
    for key, present in has_keys.items():
        secret_fix = f"pulumi config set --secret {NAMESPACE}:{key} <value>"
        if not hosts_mode and present:
            r.problems.append(
                f"{NAMESPACE}:{key} is for machines you bring (swarm:hosts); EC2 nodes use their instance "
                f"role; fix: pulumi config rm {NAMESPACE}:{key}"
            )
        elif hosts_mode and backup_target == "s3" and not present:
            r.problems.append(
                f"{NAMESPACE}:{key} is required with swarm:hosts and swarm:backupTarget s3 (the hosts' "
                f"credentials for the state bucket, written on each host readable by root only); fix: {secret_fix}"
            )
        elif hosts_mode and backup_target != "s3" and present:
            r.problems.append(
                f"{NAMESPACE}:{key} is not used with swarm:backupTarget {backup_target}; "
                f"fix: pulumi config rm {NAMESPACE}:{key}"
            )

    backup_directory = r.string("backupDirectory") or DEFAULTS["backupDirectory"]
    if backup_target == "local":
        backup_directory = os.path.abspath(os.path.expanduser(backup_directory))
    elif r.string("backupDirectory") not in (None, DEFAULTS["backupDirectory"]):
        r.problem("backupDirectory", f"is only used with swarm:backupTarget local (it is {backup_target})", '""')
    if backup_target == "none" and restore_from not in ("latest", "none"):
        r.problem("restoreFrom", "names a backup, but swarm:backupTarget is none", "none")

    tags = r.string_map("tags", "platform")

    vpc_id = r.string("vpcId")
    subnet_ids = r.string_list("subnetIds", "subnet-0123456789abcdef0") or []
    vpc_cidr = r.string("vpcCidr") or DEFAULTS["vpcCidr"]
    az_count = r.integer("azCount", "3", lambda v: 1 <= v <= 6, "from 1 to 6")
    if subnet_ids and not vpc_id:
        r.problem("vpcId", "is required when swarm:subnetIds is set", "vpc-0123456789abcdef0")
    if vpc_id and not subnet_ids:
        r.problem(
            "subnetIds",
            "is required when swarm:vpcId is set (the subnets the nodes go into)",
            "subnet-0123456789abcdef0",
            path="[0]",
        )
    if len(set(subnet_ids)) != len(subnet_ids):
        r.problem("subnetIds", "lists a subnet twice", "subnet-0fedcba9876543210", path="[1]")
    vpc_net = _cidr(vpc_cidr)
    if not vpc_id:
        if vpc_net is None or vpc_net.version != 4:
            r.problem("vpcCidr", f"must be an IPv4 CIDR block (got {vpc_cidr!r})", "10.42.0.0/16")
        elif not 16 <= vpc_net.prefixlen <= 24:
            r.problem("vpcCidr", f"must be between /16 and /24 (got /{vpc_net.prefixlen})", "10.42.0.0/16")

    cluster_name = f"swarm-{_sanitize(stack)}"
    if hosts_mode:
        _refuse_ec2_only_keys(r)
        nodes = read_hosts(r, ssh_user)
        managers = sum(1 for n in nodes if n.role == "manager")
        workers = len(nodes) - managers
        subnets: list[SubnetPlan] = []
    if r.problems:
        raise ConfigError(r.problems)

    # Only now ask AWS about zones and subnets: the plain values are known to be sane.
    if hosts_mode:
        pass
    elif vpc_id:
        subnets = []
        for subnet_id in subnet_ids:
            plan = (lookup_subnet or _lookup_subnet)(subnet_id)
            if plan.vpc_id and plan.vpc_id != vpc_id:
                r.problem(
                    "subnetIds",
                    f"has {subnet_id}, which is in {plan.vpc_id}, not in swarm:vpcId {vpc_id}",
                    "subnet-0123456789abcdef0",
                    path="[0]",
                )
            subnets.append(plan)
        fix = ("subnetIds", "subnet-0123456789abcdef0", "[0]")
    else:
        zones = (lookup_zones or _lookup_zones)()
        if len(zones) < az_count:
            r.problem(
                "azCount", f"asks for {az_count} zones but {region} has {len(zones)} available", str(max(len(zones), 1))
            )
            raise ConfigError(r.problems)
        # Up to 4 bits of subnetting keeps room for up to 16 subnets in the VPC.
        subnet_prefix = min(vpc_net.prefixlen + 4, 28)
        subnets = [
            SubnetPlan(str(cidr), zone)
            for cidr, zone in zip(vpc_net.subnets(new_prefix=subnet_prefix), zones[:az_count], strict=False)
        ]
        fix = ("vpcCidr", "10.42.0.0/16", None)
    if not hosts_mode:
        _check_subnet_room(r, subnets, managers, workers, *fix)
    if r.problems:
        raise ConfigError(r.problems)
    if not hosts_mode:
        nodes = plan_nodes(cluster_name, managers, workers, subnets)

    base_tags = {"swarm:stack": stack, "swarm:cluster": cluster_name, "managed-by": "pulumi"}
    return Settings(
        stack=stack,
        project=project,
        cluster_name=cluster_name,
        region=region,
        manager_count=managers,
        worker_count=workers,
        instance_type=instance_type,
        architecture=architecture,
        ami_id=ami_id,
        ami_ssm_parameter=AL2023_SSM_PARAMETER[architecture],
        ssh_allowed_cidrs=ssh_cidrs,
        ssh_user=ssh_user,
        ssh_public_key=ssh_public_key,
        ssh_private_key=ssh_private_key if has_private else None,
        vpc_id=vpc_id,
        subnets=subnets,
        vpc_cidr=None if vpc_id else vpc_cidr,
        connect_via=connect_via,
        root_volume_size=root_volume_size,
        mirror_enabled=mirror_enabled,
        mirror_port=mirror_port,
        mirror_upstream=mirror_upstream,
        s3_endpoint=s3_endpoint,
        backup_on_destroy=backup_on_destroy,
        backup_retention_days=retention,
        backup_keep=backup_keep,
        restore_from=restore_from,
        state_bucket_name=state_bucket_name,
        tags={**tags, **base_tags},
        nodes=nodes,
        hosts_mode=hosts_mode,
        backup_target=backup_target,
        backup_directory=backup_directory if backup_target == "local" else None,
        existing_state_bucket=existing_bucket,
        s3_access_key_id=access_key_id if hosts_mode and backup_target == "s3" else None,
        s3_secret_access_key=secret_access_key if hosts_mode and backup_target == "s3" else None,
    )


def _refuse_ec2_only_keys(r: _Reader) -> None:
    """With swarm:hosts, an EC2 setting changed from its default is a mistake: say so."""
    for key in EC2_ONLY_KEYS:
        raw = r.raw(key)
        if raw is None:
            continue
        text = str(raw).strip()
        if text in ("", "[]") or text.lower() == str(DEFAULTS.get(key, "")).lower():
            continue
        r.problems.append(
            f"{NAMESPACE}:{key} applies only when the program creates EC2 machines, not with "
            f"{NAMESPACE}:hosts; fix: pulumi config rm {NAMESPACE}:{key}"
        )


def _ip_version(text: str) -> int | None:
    """4 or 6 for an IP address, None for anything else (a DNS name, a typo)."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def read_hosts(r: _Reader, default_user: str) -> list[NodePlan]:
    """swarm:hosts: the machines the user brings. Managers first, in the order given.

    The first manager listed is manager 0: it bootstraps, restores and backs up.
    """
    example = '\'{"name":"node-1","address":"192.168.1.11","role":"manager"}\''
    raw = r.raw("hosts")
    try:
        hosts = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        hosts = None
    if not isinstance(hosts, list) or not hosts:
        r.problem("hosts", "must be a list of hosts with name, address and role (see the README)", example, "[0]")
        return []

    plans: list[NodePlan] = []
    seen_names: dict[str, int] = {}
    seen_logins: dict[tuple[str, int], int] = {}
    seen_advertised: dict[str, int] = {}
    counters = {"manager": 0, "worker": 0}
    for i, host in enumerate(hosts):
        at = f"[{i}]"

        def bad(field_name: str, what: str, value_example: str, at: str = at) -> None:
            fix = _fix("hosts", value_example, f"{at}.{field_name}")
            r.problems.append(f"{NAMESPACE}:hosts{at}.{field_name} {what}; fix: {fix}")

        if not isinstance(host, dict):
            r.problem("hosts", f"{at} must be a map with name, address and role (got {host!r})", example, at)
            continue
        unknown = sorted(set(host) - set(HOST_KEYS))
        if unknown:
            r.problems.append(
                f"{NAMESPACE}:hosts{at} has unknown field(s) {', '.join(unknown)} (known: {', '.join(HOST_KEYS)}); "
                f"fix: pulumi config rm --path '{NAMESPACE}:hosts{at}.{unknown[0]}'"
            )
        name = str(host.get("name") or "").strip()
        address = str(host.get("address") or "").strip()
        role = str(host.get("role") or "").strip()
        private = str(host.get("privateAddress") or "").strip()
        user = str(host.get("user") or "").strip() or default_user
        port_raw = host.get("port", 22)

        if not _HOSTNAME.match(name):
            bad("name", f"must be a lowercase host name of letters, digits and '-' (got {name!r})", "node-1")
        elif name in seen_names:
            bad("name", f"repeats {name!r} from hosts[{seen_names[name]}]; names are unique", "node-2")
        else:
            seen_names[name] = i
        if not address:
            bad("address", "is required: where Pulumi connects over SSH (IP or DNS name)", "192.168.1.11")
        elif not (_ip_version(address) or _DNS_NAME.match(address)):
            bad("address", f"is not an IP address or DNS name (got {address!r})", "192.168.1.11")
        if role not in ("manager", "worker"):
            bad("role", f"must be manager or worker (got {role!r})", "manager")
        if private and _ip_version(private) != 4:
            bad("privateAddress", f"must be an IPv4 address (got {private!r})", "10.0.0.11")
        if not private and address and _ip_version(address) != 4:
            bad(
                "privateAddress",
                f"is required because address {address!r} is not an IPv4 address: the node advertises "
                "this IP to the swarm",
                "10.0.0.11",
            )
        advertised = private or address
        if advertised and _ip_version(advertised) == 4:
            if advertised in seen_advertised:
                which = "privateAddress" if private else "address"
                bad(which, f"{advertised} is also advertised by hosts[{seen_advertised[advertised]}]", "10.0.0.12")
            else:
                seen_advertised[advertised] = i
        if not _SSH_USER.match(user):
            bad("user", f"is not a valid Linux user name (got {user!r})", "ubuntu")
        try:
            port = int(port_raw)
            if str(port_raw).strip() != str(port) or not 1 <= port <= 65535:
                raise ValueError
        except (TypeError, ValueError):
            bad("port", f"must be a TCP port from 1 to 65535 (got {port_raw!r})", "22")
            port = 22
        login = (address, port)
        if address and login in seen_logins:
            bad("address", f"{address}:{port} is also hosts[{seen_logins[login]}]'s SSH address", "192.168.1.12")
        elif address:
            seen_logins[login] = i
        if role in counters:
            plans.append(NodePlan(name, role, counters[role], 0, advertised or None, address, user, port))
            counters[role] += 1

    managers = counters["manager"]
    if not 1 <= managers <= MAX_MANAGERS or managers % 2 == 0:
        r.problem(
            "hosts",
            f"has {managers} manager(s); a swarm needs an odd number from 1 to {MAX_MANAGERS} (Raft needs a majority)",
            "manager",
            f"[{len(hosts) - 1}].role",
        )
    return sorted(plans, key=lambda p: p.role != "manager")


def _lookup_subnet(subnet_id: str) -> SubnetPlan:
    import pulumi_aws as aws

    found = aws.ec2.get_subnet(id=subnet_id)
    return SubnetPlan(found.cidr_block, found.availability_zone, subnet_id, found.vpc_id)


def _lookup_zones() -> list[str]:
    import pulumi_aws as aws

    return list(aws.get_availability_zones(state="available").names)
