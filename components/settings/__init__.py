"""Typed, validated settings for one swarm environment (one Pulumi stack).

Every default and every configuration error of the program lives in this package, one
module per concern: `ec2` (machines and network), `hosts` (machines the user brings),
`access` (SSH), `mirror`, `backups`; `base` holds what they share. The rest of the code
receives a `Settings` and never reads `pulumi.Config` itself. Validation runs before any
resource is registered: a bad value stops the program with one line per problem, each
naming the key and the `pulumi config set ...` that fixes it, so a typo can never
destroy or half-create anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import pulumi

from components.settings.access import read_access
from components.settings.backups import read_backup_target, read_backups
from components.settings.base import (
    AL2023_SSM_PARAMETER,
    BACKUP_DIAL_ERROR_LIMIT,
    BOOT_DIAL_ERROR_LIMIT,
    DEFAULTS,
    DIAL_ERROR_LIMIT,
    NAMESPACE,
    PER_DIAL_TIMEOUT,
    ConfigError,
    NodePlan,
    Reader,
    Settings,
    SnapshotSchedule,
    SubnetPlan,
    namespace_keys,
    refuse_unknown_keys,
)
from components.settings.data import DataVolume, read_data_volumes, read_snapshot_schedule
from components.settings.ec2 import (
    architecture_of_instance_type,
    check_subnet_room,
    plan_nodes,
    plan_subnets,
    read_machines,
    read_network,
    refuse_ec2_only_keys,
)
from components.settings.groups import GroupEndpoints, WorkerGroup, read_group_endpoints, read_worker_groups
from components.settings.hosts import read_hosts
from components.settings.logs import LogSettings, read_logs
from components.settings.mirror import read_mirror
from components.settings.shared import read_shared_files

__all__ = [
    "AL2023_SSM_PARAMETER",
    "BACKUP_DIAL_ERROR_LIMIT",
    "BOOT_DIAL_ERROR_LIMIT",
    "DEFAULTS",
    "DIAL_ERROR_LIMIT",
    "PER_DIAL_TIMEOUT",
    "ConfigError",
    "DataVolume",
    "GroupEndpoints",
    "LogSettings",
    "NodePlan",
    "Settings",
    "SnapshotSchedule",
    "SubnetPlan",
    "WorkerGroup",
    "architecture_of_instance_type",
    "load_settings",
    "plan_nodes",
]

_STACK_SAFE = re.compile(r"[^a-z0-9-]+")


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
    r = Reader(config)
    refuse_unknown_keys(r, namespace_keys())
    # With swarm:hosts the user brings the machines: no VPC, instances or key pair.
    hosts_mode = r.raw("hosts") is not None
    backup_target = read_backup_target(r, hosts_mode)
    region = _read_region(r, hosts_mode, backup_target)
    machines = read_machines(r)
    access = read_access(r, config, hosts_mode)
    mirror = read_mirror(r)
    backups = read_backups(r, config, stack, hosts_mode, backup_target)
    tags = r.string_map("tags", "platform")
    network = read_network(r)
    ecr_refresh = _ecr_refresh(r, mirror.ecr_refresh, hosts_mode, backup_target)
    data_volumes = [] if hosts_mode else read_data_volumes(r)
    shared_files = read_shared_files(r, hosts_mode)
    snapshots = read_snapshot_schedule(r)
    groups = [] if hosts_mode else read_worker_groups(r, machines.instance_type, machines.architecture)
    endpoints = read_group_endpoints(r)
    logs = read_logs(r, config, (project, stack, region), hosts_mode)

    cluster_name = f"swarm-{_sanitize(stack)}"
    managers, workers = machines.managers, machines.workers
    subnets: list[SubnetPlan] = []
    nodes: list[NodePlan] = []
    if hosts_mode:
        refuse_ec2_only_keys(r)
        nodes = read_hosts(r, access.ssh_user)
        managers = sum(1 for n in nodes if n.role == "manager")
        workers = len(nodes) - managers
    if r.problems:
        raise ConfigError(r.problems)
    if not hosts_mode:
        # Only now ask AWS about zones and subnets: the plain values are known to be sane.
        subnets, fix = plan_subnets(r, network, region, lookup_subnet, lookup_zones)
        check_subnet_room(r, subnets, managers, workers, *fix)
        if r.problems:
            raise ConfigError(r.problems)
        nodes = plan_nodes(cluster_name, managers, workers, subnets)

    base_tags = {"swarm:stack": stack, "swarm:cluster": cluster_name, "managed-by": "pulumi"}
    return Settings(
        stack=stack,
        project=project,
        cluster_name=cluster_name,
        region=region,
        manager_count=managers,
        worker_count=workers,
        instance_type=machines.instance_type,
        architecture=machines.architecture,
        ami_id=machines.ami_id,
        ami_ssm_parameter=AL2023_SSM_PARAMETER[machines.architecture],
        ssh_allowed_cidrs=access.ssh_allowed_cidrs,
        ssh_user=access.ssh_user,
        ssh_public_key=access.ssh_public_key,
        ssh_private_key=access.ssh_private_key,
        vpc_id=network.vpc_id,
        subnets=subnets,
        vpc_cidr=None if network.vpc_id else network.vpc_cidr,
        connect_via=access.connect_via,
        elastic_ips=access.elastic_ips and not hosts_mode,
        root_volume_size=machines.root_volume_size,
        mirror_enabled=mirror.enabled,
        mirror_port=mirror.port,
        mirror_upstream=mirror.upstream,
        mirror_image=mirror.image,
        s3_endpoint=mirror.s3_endpoint,
        containerd_image_store=mirror.containerd_store,
        ecr_refresh=ecr_refresh,
        ecr_endpoint=mirror.ecr_endpoint,
        backup_on_destroy=backups.on_destroy,
        backup_retention_days=backups.retention_days,
        backup_keep=backups.keep,
        restore_from=backups.restore_from,
        restore_unsigned=backups.restore_unsigned,
        state_bucket_name=backups.state_bucket_name,
        tags={**tags, **base_tags},
        nodes=nodes,
        hosts_mode=hosts_mode,
        backup_target=backup_target,
        backup_directory=backups.directory,
        existing_state_bucket=backups.existing_bucket,
        s3_access_key_id=backups.access_key_id,
        s3_secret_access_key=backups.secret_access_key,
        mirror_s3_access_key_id=backups.mirror_access_key_id,
        mirror_s3_secret_access_key=backups.mirror_secret_access_key,
        autolock=backups.autolock,
        data_volumes=data_volumes,
        shared_files=shared_files,
        data_snapshots=snapshots,
        worker_groups=groups,
        group_endpoints=endpoints,
        logs=logs,
    )


def _ecr_refresh(r: Reader, wanted: bool | None, hosts_mode: bool, backup_target: str) -> bool:
    """On EC2 the managers' role holds the ECR rights; machines you bring, only with the
    S3 keys of backupTarget s3 (give those keys the same rights: README, Rights)."""
    has_keys = not hosts_mode or backup_target == "s3"
    if wanted and not has_keys:
        r.problem(
            "ecrRefresh",
            f"needs AWS credentials on the managers; with swarm:hosts and backupTarget {backup_target} they have none",
            "false",
        )
    return has_keys if wanted is None else wanted and has_keys


def _read_region(r: Reader, hosts_mode: bool, backup_target: str) -> str | None:
    # The AWS provider also takes the region from the environment; so do we.
    region = pulumi.Config("aws").get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and backup_target == "s3":
        why = " (the hosts reach the state bucket in it)" if hosts_mode else ""
        r.problems.append(f"aws:region is not set{why}; fix: pulumi config set aws:region eu-west-1")
    return region


def _sanitize(stack: str) -> str:
    return _STACK_SAFE.sub("-", stack.lower()).strip("-")[:24] or "default"
