"""What every settings module shares: the defaults, the plans and `Settings` they build,
the error type, and the reader that collects every problem instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pulumi

if TYPE_CHECKING:
    from components.settings.data import DataVolume
    from components.settings.groups import GroupEndpoints, WorkerGroup
    from components.settings.logs import LogSettings

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
    "elasticIps": True,
    "rootVolumeSize": 30,
    "mirror": True,
    "mirrorPort": 5000,
    "mirrorUpstream": "https://registry-1.docker.io",
    # registry 2.8.3, pinned by digest: the multi-arch index, as pinned alike by several
    # public projects (not fetched from Docker Hub here: there is no way to reach it).
    "mirrorImage": "registry:2.8.3@sha256:a3d8aaa63ed8681a604f1dea0aa03f100d5895b6a58ace528858a7b332415373",
    "containerdImageStore": False,
    "backupOnDestroy": True,
    "autolock": False,
    "backupRetentionDays": 30,
    "backupKeep": 14,
    "restoreFrom": "latest",
    "restoreUnsigned": False,
    "backupTarget": "s3",
    "backupDirectory": "~/.swarm/backups",
    # swarm:dataVolumes' snapshots (Data Lifecycle Manager): when, in UTC, and how many per volume.
    "dataSnapshotTime": "20:00",
    "dataSnapshotKeep": 7,
    "sharedFiles": False,  # one kept EFS file system at /var/data/shared on every node
    # swarm:logs (no default here: cloudwatch on EC2, none with swarm:hosts) and its alarms.
    "logRetentionDays": 30,
    "morningAlarmMinutes": 20,
    "backupAlarmHours": 26,
    "nodeDownAlarmMinutes": 5,
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
    "elasticIps",
    "rootVolumeSize",
    "sshAllowedCidrs",
    "sshPublicKey",
    "dataVolumes",
    "dataSnapshotTime",
    "dataSnapshotKeep",
    "sharedFiles",
    "workerGroups",
)
HOST_KEYS = ("name", "address", "role", "privateAddress", "user", "port", "data")
# Every key of the namespace the program reads: those with a default, and those without
# one (a unit test checks each settings module reads only these, and Pulumi.yaml declares
# only these). Any other `swarm:` key is a typo, refused with the closest of these.
KNOWN_KEYS = frozenset(
    [
        *DEFAULTS,
        *("instanceType", "sshAllowedCidrs", "sshPublicKey", "sshPrivateKey", "amiId", "vpcId", "subnetIds"),
        *("stateBucketName", "existingStateBucket", "s3Endpoint", "s3AccessKeyId", "s3SecretAccessKey"),
        *("mirrorS3AccessKeyId", "mirrorS3SecretAccessKey", "ecrEndpoint", "ecrRefresh"),
        *("tags", "hosts", "dataVolumes", "workerGroups", "ssmEndpoint", "autoscalingEndpoint"),
        *("logs", "alarmEmail", "logsEndpoint", "monitoringEndpoint", "logsAccessKeyId", "logsSecretAccessKey"),
    ]
)
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
# SSH: how often pulumi-command dials. It retries every dial error alike, a wrong host key
# too, waiting 0.1 s * 1.5^n (at most 5 s) between attempts: the first command on a node
# (`ready`, or an own host's host-key read) waits for a machine still booting, about 4.5
# minutes; every later one finds it up, so a key that does not match fails in about 12 s.
BOOT_DIAL_ERROR_LIMIT = 60
DIAL_ERROR_LIMIT = 10
# At teardown manager 0 has been up all day: if it does not answer a few dials, stop and
# say so rather than retry for ten minutes while the nightly job waits.
BACKUP_DIAL_ERROR_LIMIT = 5
PER_DIAL_TIMEOUT = 10

SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


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
class SnapshotSchedule:
    """swarm:dataSnapshotTime / dataSnapshotKeep: Data Lifecycle Manager's daily rule."""

    time: str = DEFAULTS["dataSnapshotTime"]  # HH:MM, UTC
    keep: int = DEFAULTS["dataSnapshotKeep"]  # per volume; 0: the policy is disabled (never deleted: it is kept)


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
    # swarm:hosts[].data: the name of the data this host already holds at /var/data (its
    # swarm.data label); the program mounts nothing there.
    data: str | None = None


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
    elastic_ips: bool
    mirror_enabled: bool
    mirror_port: int
    mirror_upstream: str
    mirror_image: str
    s3_endpoint: str | None
    backup_on_destroy: bool
    backup_retention_days: int
    backup_keep: int
    restore_from: str
    state_bucket_name: str | None
    tags: dict[str, str]
    restore_unsigned: bool = False  # swarm:restoreUnsigned: the named backup may lack a signature
    nodes: list[NodePlan] = field(default_factory=list)
    # Bring-your-own-machines mode (swarm:hosts): no VPC, instances or key pair.
    hosts_mode: bool = False
    backup_target: str = "s3"  # s3 | local | none
    backup_directory: str | None = None  # local: where backups land on the Pulumi machine
    existing_state_bucket: str | None = None  # s3: the user's bucket, not created here
    s3_access_key_id: pulumi.Output[str] | None = None  # hosts + s3: the hosts' credentials
    s3_secret_access_key: pulumi.Output[str] | None = None
    mirror_s3_access_key_id: pulumi.Output[str] | None = None  # hosts + s3: the mirror's own key
    mirror_s3_secret_access_key: pulumi.Output[str] | None = None
    autolock: bool = False  # swarm:autolock: the managers' keys at rest need the unlock key
    containerd_image_store: bool = False  # swarm:containerdImageStore
    ecr_refresh: bool = False  # swarm:ecrRefresh, where the nodes hold AWS rights to use it
    ecr_endpoint: str | None = None  # swarm:ecrEndpoint
    data_volumes: list[DataVolume] = field(default_factory=list)  # swarm:dataVolumes
    data_snapshots: SnapshotSchedule = field(default_factory=SnapshotSchedule)  # swarm:dataSnapshotTime/Keep
    shared_files: bool = False  # swarm:sharedFiles: the stack's EFS file system at /var/data/shared
    worker_groups: list[WorkerGroup] = field(default_factory=list)  # swarm:workerGroups
    group_endpoints: GroupEndpoints | None = None  # swarm:ssmEndpoint, swarm:autoscalingEndpoint
    logs: LogSettings | None = None  # swarm:logs cloudwatch: the group, the alarms; None: logs stay on the nodes

    @property
    def mirror_storage(self) -> str:
        """Where the mirror keeps its cache: the state bucket, with a key good for the cache
        only (EC2: made by the program; machines you bring: swarm:mirrorS3AccessKeyId), or
        else a volume on the manager. Never with the hosts' backup keys."""
        if self.backup_target != "s3":
            return "filesystem"
        return "s3" if not self.hosts_mode or self.mirror_s3_access_key_id is not None else "filesystem"

    @property
    def state_prefix(self) -> str:
        """Key prefix of this stack inside the state bucket (stacks may share a bucket)."""
        return f"{NAMESPACE}/{self.stack}/"

    @property
    def join_token_parameter(self) -> str:
        """The SSM parameter worker groups' machines read the worker join token from."""
        return f"/{NAMESPACE}/{self.project}/{self.stack}/worker-join-token"

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


def fix(key: str, example: str, path: str | None = None) -> str:
    """The command that sets `key`; `path` is an element (`[0]`, `.team`) for list and map keys."""
    if path is not None:
        return f"pulumi config set --path '{NAMESPACE}:{key}{path}' {example}"
    return f"pulumi config set {NAMESPACE}:{key} {example}"


def cidr(value: str) -> ipaddress._BaseNetwork | None:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        return None


class Reader:
    """Reads raw config, collecting every problem instead of stopping at the first."""

    def __init__(self, config: pulumi.Config):
        self.config = config
        self.problems: list[str] = []

    def problem(self, key: str, what: str, example: str, path: str | None = None) -> None:
        self.problems.append(f"{NAMESPACE}:{key} {what}; fix: {fix(key, example, path)}")

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
        return DEFAULTS.get(key, False)

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

    def json_list(self, key: str, what: str, example: str) -> list:
        """A list of entries given as JSON (what `pulumi config set --path` builds): [] when
        unset or empty; a problem naming `what` it must be when it is not a list."""
        raw = self.raw(key)
        if raw is None or not str(raw).strip() or str(raw).strip() == "[]":
            return []
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError:
            entries = None
        if not isinstance(entries, list):
            self.problem(key, f"must be {what} (got {raw!r})", example, "[0]")
            return []
        return entries

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


def namespace_keys() -> list[str]:
    """The `swarm:` keys the stack sets, as the Pulumi runtime hands them to the program."""
    from pulumi.runtime import config as runtime_config

    keys = {*runtime_config.CONFIG.get(), *runtime_config.get_config_env()}
    return sorted(k.split(":", 1)[1] for k in keys if k.startswith(f"{NAMESPACE}:"))


def refuse_unknown_keys(r: Reader, keys: list[str]) -> None:
    """A typo (`swarm:workercount`) would otherwise be ignored, and the default used."""
    by_lower = {k.lower(): k for k in KNOWN_KEYS}
    for key in keys:
        if key in KNOWN_KEYS:
            continue
        close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
        if close:
            known = by_lower[close[0]]
            r.problems.append(
                f"{NAMESPACE}:{key} is not a setting of this program (did you mean {NAMESPACE}:{known}?); "
                f"fix: pulumi config rm {NAMESPACE}:{key} && pulumi config set {NAMESPACE}:{known} <value>"
            )
        else:
            r.problems.append(
                f"{NAMESPACE}:{key} is not a setting of this program (the settings are in the README's "
                f"Configuration table); fix: pulumi config rm {NAMESPACE}:{key}"
            )
