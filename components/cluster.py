"""SwarmCluster: one environment's swarm, composed of the other components.

The machines are EC2 instances in a VPC (`Network`, `NodeRole`, `Nodes`) or the user's
own (`Hosts`, with `swarm:hosts`); from there on `SwarmFormation` and `RegistryMirror`
are the same code. The state bucket is created (protected) unless the user names one
(`swarm:existingStateBucket`) or keeps backups elsewhere (`swarm:backupTarget`).

It owns the outputs contract that app repos read through `StackReference` (see the
README's outputs table): names only ever get added, `outputsVersion` says which set a
consumer is looking at, and every secret is marked secret here, not left to the engine.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.addresses import plan_addresses
from components.data import DataVolumes, partition_of, plan_kept_volumes, snapshot_role_exists
from components.groups import WorkerGroups, WorkerGroupsArgs, groups_outputs, watch_config
from components.hosts import Hosts
from components.logs import LogStore, alarm_subscription, plan_log_group
from components.mirror import RegistryMirror
from components.network import Network
from components.nodes import Nodes, NodesArgs
from components.settings import Settings
from components.shared_files import SharedFilesArgs, plan_file_system, shared_files
from components.state import NodeRole, StateStore
from components.swarm import SwarmFormation, SwarmFormationArgs

OUTPUTS_VERSION = 1


class SwarmCluster(pulumi.ComponentResource):
    outputs: dict[str, Any]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("swarm:index:SwarmCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Lookups only, before any resource: a region without room for the managers'
        # addresses stops here, with nothing created.
        kept_addresses = set() if settings.hosts_mode else plan_addresses(settings)
        kept_volumes = plan_kept_volumes(settings)
        kept_file_system = plan_file_system(settings)
        has_snapshot_role = not settings.hosts_mode and snapshot_role_exists(settings)
        kept_log_group = plan_log_group(settings)

        # A root resource, not a child: it is the one part that outlives the cluster, and
        # its protection should not hinge on this component staying in the state.
        bucket_name: pulumi.Input[str] = settings.existing_state_bucket or ""
        bucket_arn: pulumi.Input[str] = bucket_arn_of(settings.existing_state_bucket or "", settings.region)
        if settings.backup_target == "s3" and not settings.existing_state_bucket:
            state = StateStore(f"{name}-state", settings)
            bucket_name, bucket_arn = state.bucket_name, state.bucket_arn

        # Kept through the night as well, a root resource for the same reason (swarm:logs cloudwatch).
        logs = LogStore(f"{name}-logs", settings, kept_log_group) if settings.logs else None
        if logs is not None:
            alarm_subscription(name, settings, logs.topic_arn, self)

        network: Network | None = None
        data: DataVolumes | None = None
        shared: pulumi.Input[str] = ""
        machines: Nodes | Hosts
        if settings.hosts_mode:
            machines = Hosts(f"{name}-hosts", settings, bucket_name, opts=child)
        else:
            network = Network(f"{name}-network", settings, opts=child)
            role = NodeRole(f"{name}-node", settings, bucket_arn, opts=child)
            worker_role = None
            if logs is not None and settings.worker_count:
                worker_role = NodeRole(f"{name}-worker", settings, bucket_arn, opts=child, holder="workers")
            files = shared_files(
                name,
                settings,
                kept_file_system,
                SharedFilesArgs(
                    vpc_id=network.vpc_id,
                    subnet_ids=[network.subnet_ids[i] for i in range(len(settings.subnets))],
                    cluster_security_group_id=network.cluster_security_group_id,
                ),
                opts=child,
            )
            shared = files.file_system_id if files else ""
            data = DataVolumes(name, settings, kept_volumes, has_snapshot_role)
            machines = Nodes(
                f"{name}-nodes",
                settings,
                NodesArgs(
                    subnet_ids=[network.subnet_ids[i] for i in range(len(settings.subnets))],
                    security_group_ids=[network.cluster_security_group_id, network.ssh_security_group_id],
                    instance_profile_name=role.instance_profile_name,
                    bucket_name=bucket_name,
                    worker_profile_name=worker_role.instance_profile_name if worker_role else None,
                    kept_addresses=kept_addresses,
                    data_volumes=data.by_node,
                    # The log group before the machines: the first container's stream goes into it.
                    depends_on=[
                        *network.node_dependencies,
                        *role.node_dependencies,
                        *(worker_role.node_dependencies if worker_role else []),
                        *([logs] if logs else []),
                    ],
                ),
                opts=child,
            )
        groups: list[WorkerGroups] = []

        def worker_groups(token: pulumi.Output[str]) -> list[pulumi.Resource]:
            assert isinstance(machines, Nodes) and network is not None
            made = WorkerGroups(
                f"{name}-groups",
                settings,
                WorkerGroupsArgs(
                    subnet_ids=[network.subnet_ids[i] for i in range(len(settings.subnets))],
                    security_group_ids=[network.cluster_security_group_id, network.ssh_security_group_id],
                    ami=machines.image.ami,
                    key_name=machines.key_name,
                    bucket_name=bucket_name,
                    bucket_arn=bucket_arn,
                    operator_public_key=machines.operator_public_key,
                ),
                token,
                opts=child,
            )
            groups.append(made)
            return list(made.groups.values())

        formation = SwarmFormation(
            f"{name}-swarm",
            SwarmFormationArgs(
                managers=machines.managers,
                workers=machines.workers,
                ssh_user=settings.ssh_user,
                ssh_private_key=machines.ssh_private_key,
                operator_key=machines.operator_key,
                authorized_key=machines.authorized_key,
                restore_from=settings.restore_from,
                restore_unsigned=settings.restore_unsigned,
                backup_on_destroy=settings.backup_on_destroy,
                backup_target=settings.backup_target,
                backup_directory=settings.backup_directory,
                state_prefix=settings.state_prefix,
                backup_keep=settings.backup_keep,
                leave_on_destroy=settings.hosts_mode,
                autolock=settings.autolock,
                ecr_refresh=settings.ecr_refresh,
                shared_files=shared if settings.shared_files else None,
                region=settings.region,
                worker_groups=worker_groups if settings.worker_groups else None,
                groups_config=watch_config(settings) if settings.worker_groups else "",
                group_names=[g.name for g in settings.worker_groups],
            ),
            opts=child,
        )
        if settings.mirror_enabled:
            RegistryMirror(f"{name}-mirror", formation, settings, bucket_arn, opts=child)

        leader = formation.leader
        login = pulumi.Output.concat(leader.user or settings.ssh_user, "@", leader.connect_host)
        self.outputs = {
            "outputsVersion": OUTPUTS_VERSION,
            "mode": "hosts" if settings.hosts_mode else "ec2",
            "managerPrivateIps": [n.private_ip for n in settings.managers],
            "leaderAddress": formation.leader_address,
            "bootstrapResult": formation.bootstrap_result,
            "dockerHost": pulumi.Output.concat("ssh://", login, "" if leader.port == 22 else f":{leader.port}"),
            "sshUser": settings.ssh_user,
            "workerJoinToken": formation.worker_join_token,
            "managerJoinToken": formation.manager_join_token,
            "unlockKey": formation.unlock_key,
            "sshKnownHosts": formation.known_hosts,
            "registryMirrors": settings.registry_mirrors,
            "stateBucket": bucket_name,
            "statePrefix": settings.state_prefix,
            "backupTarget": settings.backup_target,
            "vpcId": network.vpc_id if network else "",
            "subnetIds": network.subnet_ids if network else [],
            "clusterSecurityGroupId": network.cluster_security_group_id if network else "",
            # swarm:sharedFiles: the EFS file system mounted at /var/data/shared ("" when off).
            "sharedFileSystemId": shared,
            # The AMI new machines boot (the stack's pin), and SSM's newest beside it.
            "amiId": machines.image.ami if isinstance(machines, Nodes) else "",
            "amiNewest": machines.image.newest if isinstance(machines, Nodes) else "",
            **machines_outputs(settings, machines),
            "dataVolumes": data_outputs(settings, data),
            # swarm:workerGroups: each group's Auto Scaling group and the placement that pins to it.
            "workerGroups": groups_outputs(settings, groups[0] if groups else None),
            # swarm:logs cloudwatch: where every node's logs go, kept through the night ("" when off).
            "logGroup": logs.group_name if logs else "",
            "alarmTopicArn": logs.topic_arn if logs else "",
        }
        if machines.ssh_key_generated:
            self.outputs["sshPrivateKey"] = machines.ssh_private_key
        self.register_outputs(self.outputs)


def bucket_arn_of(bucket: str, region: str | None) -> str:
    """The ARN of a bucket the program does not create (its partition follows the region)."""
    if not bucket:
        return ""
    return f"arn:{partition_of(region)}:s3:::{bucket}"


def data_outputs(settings: Settings, data: DataVolumes | None) -> list[Any]:
    """Which node holds which data: a stack pins a service with node.labels.swarm.data == name."""
    if data is None:  # machines you bring: the data they hold themselves
        held = [p for p in settings.nodes if p.data]
        return [{"name": p.data, "node": p.name, "volumeId": "", "availabilityZone": ""} for p in held]
    return [
        pulumi.Output.all(volume.id, volume.availability_zone).apply(
            lambda v, entry=entry: {
                "name": entry.name,
                "node": f"{settings.cluster_name}-{entry.node}",
                "volumeId": v[0],
                "availabilityZone": v[1],
            }
        )
        for entry, volume in data.by_node.values()
    ]


def machines_outputs(settings: Settings, machines: Nodes | Hosts) -> dict[str, Any]:
    """Per-node outputs: from the instances (EC2) or straight from swarm:hosts."""
    if isinstance(machines, Hosts):
        return {
            "managerPublicIps": [p.address for p in settings.managers],
            "workerPrivateIps": [p.private_ip for p in settings.workers],
            "nodes": [
                {
                    "name": p.name,
                    "role": p.role,
                    "instanceId": "",
                    "privateIp": p.private_ip,
                    "publicIp": p.address,
                    "availabilityZone": "",
                }
                for p in settings.nodes
            ],
        }
    workers = [machines.instances[n.name] for n in settings.workers]
    return {
        # The managers' kept Elastic IPs (the same every day), or the instances' own.
        "managerPublicIps": pulumi.Output.all(*[machines.public_ips[n.name] for n in settings.managers]),
        "workerPrivateIps": pulumi.Output.all(*[i.private_ip for i in workers]),
        "nodes": [
            pulumi.Output.all(i.id, i.private_ip, machines.public_ips[plan.name], i.availability_zone).apply(
                lambda v, plan=plan: {
                    "name": plan.name,
                    "role": plan.role,
                    "instanceId": v[0],
                    "privateIp": v[1],
                    "publicIp": v[2],
                    "availabilityZone": v[3],
                }
            )
            for plan, i in ((p, machines.instances[p.name]) for p in settings.nodes)
        ],
    }
