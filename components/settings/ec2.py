"""EC2 machines and their network: how many, which instance type, architecture and AMI,
the root volume, the VPC and its subnets, and the plan that pins manager addresses.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from components.settings.base import (
    AWS_RESERVED_ADDRESSES,
    DEFAULT_INSTANCE_TYPE,
    DEFAULTS,
    EC2_ONLY_KEYS,
    FIRST_PINNED_HOST,
    MAX_MANAGERS,
    NAMESPACE,
    ConfigError,
    NodePlan,
    Reader,
    SubnetPlan,
    cidr,
)

_INSTANCE_TYPE = re.compile(r"^(?P<family>[a-z]+)(?P<gen>\d+)(?P<attrs>[a-z-]*)\.(?P<size>[a-z0-9-]+)$")
_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")


@dataclass(frozen=True)
class Machines:
    managers: int
    workers: int
    architecture: str
    instance_type: str
    ami_id: str | None
    root_volume_size: int


@dataclass(frozen=True)
class NetworkChoice:
    vpc_id: str | None
    subnet_ids: list[str]
    vpc_cidr: str
    az_count: int


def read_machines(r: Reader) -> Machines:
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
    root_volume_size = r.integer("rootVolumeSize", "30", lambda v: 8 <= v <= 16384, "from 8 to 16384 (GiB)")
    return Machines(managers, workers, architecture, instance_type, ami_id, root_volume_size)


def read_network(r: Reader) -> NetworkChoice:
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
    vpc_net = cidr(vpc_cidr)
    if not vpc_id:
        if vpc_net is None or vpc_net.version != 4:
            r.problem("vpcCidr", f"must be an IPv4 CIDR block (got {vpc_cidr!r})", "10.42.0.0/16")
        elif not 16 <= vpc_net.prefixlen <= 24:
            r.problem("vpcCidr", f"must be between /16 and /24 (got /{vpc_net.prefixlen})", "10.42.0.0/16")
    return NetworkChoice(vpc_id, subnet_ids, vpc_cidr, az_count)


def plan_subnets(
    r: Reader,
    network: NetworkChoice,
    region: str | None,
    lookup_subnet: Callable[[str], SubnetPlan] | None,
    lookup_zones: Callable[[], list[str]] | None,
) -> tuple[list[SubnetPlan], tuple[str, str, str | None]]:
    """The subnets the nodes go into (asking AWS), and the key to fix if they are too small.
    Called only once the plain values are known to be sane."""
    if network.vpc_id:
        subnets = []
        for subnet_id in network.subnet_ids:
            plan = (lookup_subnet or _lookup_subnet)(subnet_id)
            if plan.vpc_id and plan.vpc_id != network.vpc_id:
                r.problem(
                    "subnetIds",
                    f"has {subnet_id}, which is in {plan.vpc_id}, not in swarm:vpcId {network.vpc_id}",
                    "subnet-0123456789abcdef0",
                    path="[0]",
                )
            subnets.append(plan)
        return subnets, ("subnetIds", "subnet-0123456789abcdef0", "[0]")
    zones = (lookup_zones or _lookup_zones)()
    if len(zones) < network.az_count:
        r.problem(
            "azCount",
            f"asks for {network.az_count} zones but {region} has {len(zones)} available",
            str(max(len(zones), 1)),
        )
        raise ConfigError(r.problems)
    vpc_net = ipaddress.ip_network(network.vpc_cidr)
    # Up to 4 bits of subnetting keeps room for up to 16 subnets in the VPC.
    subnet_prefix = min(vpc_net.prefixlen + 4, 28)
    subnets = [
        SubnetPlan(str(block), zone)
        for block, zone in zip(vpc_net.subnets(new_prefix=subnet_prefix), zones[: network.az_count], strict=False)
    ]
    return subnets, ("vpcCidr", "10.42.0.0/16", None)


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


def check_subnet_room(
    r: Reader,
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


def refuse_ec2_only_keys(r: Reader) -> None:
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


def _lookup_subnet(subnet_id: str) -> SubnetPlan:
    import pulumi_aws as aws

    found = aws.ec2.get_subnet(id=subnet_id)
    return SubnetPlan(found.cidr_block, found.availability_zone, subnet_id, found.vpc_id)


def _lookup_zones() -> list[str]:
    import pulumi_aws as aws

    return list(aws.get_availability_zones(state="available").names)
