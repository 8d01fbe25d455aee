"""Data volumes: one kept, encrypted EBS volume per node that `swarm:dataVolumes` names.

A volume is protected, like the bucket: `pulumi destroy --exclude-protected` keeps it,
and each morning an (unprotected) `aws.ec2.VolumeAttachment` in components/nodes.py
ties it to that node's new machine, where `swarm-node data-mount` mounts it at
/var/data before the node joins (agent/swarm_agent/data.py). Its zone comes from the
subnet plan, never from the instance: a protected resource with an input from the
instance would stop every replacement of it (Pulumi refuses to replace a protected
dependent), and the volume must not move with the machine anyway.

What outlives the night is never dropped by a config change (README, "What outlives the
night"): a volume whose entry left `swarm:dataVolumes` is found by its
`swarm:data-of` tag and kept registered, unattached, as AWS describes it, with a warning
at every `up`; one whose node is not in today's counts is kept the same way. Deleting
data takes two deliberate commands (README, "Data through the night").

Snapshots are Data Lifecycle Manager's, not the nodes': a policy with its own service
role takes one of every volume tagged with this stack's `swarm:data-of` each day at
`swarm:dataSnapshotTime` (after the nightly teardown, so of an unmounted, detached disk)
and deletes the oldest beyond `swarm:dataSnapshotKeep`. `pulumi destroy` cannot create a
snapshot, and the nodes hold no EC2 rights: the policy, kept through the night
(protected), does it while no machine is there. It is registered as long as the stack
has a volume or the policy's role exists (found by name), so dropping the last volume
never drops a protected resource; a deleted policy would leave its snapshots unpruned.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.settings import DataVolume, Settings

DATA_OF_TAG = "swarm:data-of"  # <project>/<stack>: which stack's volume
DATA_TAG = "swarm:data"  # the volume's name, also the node label's value
SNAPSHOT_OF_TAG = "swarm:snapshot-of"  # added to every snapshot the policy takes
# AWS's managed policy for DLM's service role: create, tag and delete snapshots.
DLM_MANAGED_POLICY = "arn:{partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
DEVICE_NAME = "/dev/sdf"  # a label only on Nitro: the node finds the disk by volume ID


@dataclass
class KeptVolume:
    """What AWS says of a volume of this stack that no entry names any more."""

    name: str
    zone: str
    size: int
    volume_type: str


def data_of(settings: Settings) -> str:
    return f"{settings.project}/{settings.stack}"


def plan_kept_volumes(settings: Settings) -> list[KeptVolume]:
    """This stack's volumes in AWS whose name no entry of swarm:dataVolumes has. Lookups
    only: called before anything is registered."""
    if settings.hosts_mode:
        return []
    ids = aws.ebs.get_ebs_volumes(tags={DATA_OF_TAG: data_of(settings)}).ids
    named = {v.name for v in settings.data_volumes}
    kept = []
    for volume_id in sorted(ids):
        found = aws.ebs.get_volume(filters=[{"name": "volume-id", "values": [volume_id]}])
        name = (found.tags or {}).get(DATA_TAG, "")
        if name and name not in named:
            kept.append(KeptVolume(name, found.availability_zone, int(found.size), found.volume_type))
    return kept


def snapshot_role_name(settings: Settings) -> str:
    """Deterministic, so a morning finds it (IAM role names: at most 64 characters)."""
    name = f"{settings.cluster_name}-data-snapshots"
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(data_of(settings).encode()).hexdigest()[:8]
    return f"{name[:47]}-{digest}-snapshots"


def snapshot_role_exists(settings: Settings) -> bool:
    found = aws.iam.get_roles(name_regex=f"^{re.escape(snapshot_role_name(settings))}$")
    return bool(found.names)


def partition_of(region: str | None) -> str:
    region = region or ""
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if "-gov-" in region else "aws"


class DataVolumes:
    """The stack's volumes: root resources, so their protection never hinges on a component."""

    def __init__(self, name: str, settings: Settings, kept: list[KeptVolume], has_snapshot_role: bool = False):
        self.by_node: dict[str, tuple[DataVolume, aws.ebs.Volume]] = {}
        self.snapshot_policy: aws.dlm.LifecyclePolicy | None = None
        if settings.data_volumes or kept or has_snapshot_role:
            self.snapshot_policy = _snapshot_policy(name, settings)
        planned = {f"{n.role}-{n.index}" for n in settings.nodes}
        for entry in settings.data_volumes:
            # The node's subnet is its index modulo the subnets, whatever the counts (plan_nodes).
            zone = settings.subnets[entry.index % len(settings.subnets)].availability_zone
            volume = self._volume(name, settings, entry.name, zone, entry.size, entry.volume_type, entry.snapshot_id)
            if entry.node in planned:
                self.by_node[entry.node] = (entry, volume)
            else:
                pulumi.log.warn(
                    f"data volume {entry.name} is kept, unattached: its node {entry.node} is not in "
                    f"swarm:managerCount {settings.manager_count} / swarm:workerCount {settings.worker_count}. "
                    "It comes back to that node when the count does; or point it at another node in the same "
                    "zone (swarm:dataVolumes[].node). Its data is kept, and billed (README, 'Data through the night')."
                )
        for old in kept:
            self._volume(name, settings, old.name, old.zone, old.size, old.volume_type, None)
            pulumi.log.warn(
                f"data volume {old.name} is kept, unattached, though no entry of swarm:dataVolumes names it: "
                "data is never deleted by a config change. Name it again to use it, or delete it deliberately "
                "(README, 'Data through the night': pulumi state unprotect, then destroy --target)."
            )

    @staticmethod
    def _volume(
        name: str, settings: Settings, label: str, zone: str, size: int, volume_type: str, snapshot: str | None
    ) -> aws.ebs.Volume:
        return aws.ebs.Volume(
            f"{name}-data-{label}",
            availability_zone=zone,
            size=size,
            type=volume_type,
            encrypted=True,
            snapshot_id=snapshot,
            # Whoever deletes it after all (two deliberate commands) still has a last copy.
            final_snapshot=True,
            tags={
                **settings.tags,
                "Name": f"{settings.cluster_name}-data-{label}",
                DATA_OF_TAG: data_of(settings),
                DATA_TAG: label,
            },
            # snapshotId only starts a new volume: naming one later must not replace (or,
            # protected, refuse) the volume that holds today's data.
            opts=pulumi.ResourceOptions(protect=True, ignore_changes=["snapshotId"]),
        )


def _snapshot_policy(name: str, settings: Settings) -> aws.dlm.LifecyclePolicy:
    """DLM's daily snapshot of the stack's volumes, with the service role it acts as. Both
    protected and taking no input from anything unprotected: the policy must be there at
    night, when it runs, and a dropped one would leave its snapshots unpruned."""
    kept = pulumi.ResourceOptions(protect=True)
    role = aws.iam.Role(
        f"{name}-data-snapshots",
        name=snapshot_role_name(settings),
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "dlm.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
        tags=settings.tags,
        opts=kept,
    )
    attached = aws.iam.RolePolicyAttachment(
        f"{name}-data-snapshots",
        role=role.name,
        policy_arn=DLM_MANAGED_POLICY.format(partition=partition_of(settings.region)),
        opts=kept,
    )
    schedule = settings.data_snapshots
    return aws.dlm.LifecyclePolicy(
        f"{name}-data-snapshots",
        description=f"swarm {data_of(settings)}: daily snapshots of its data volumes",
        execution_role_arn=role.arn,
        # Disabled, never deleted, when no snapshots are wanted: its earlier ones stay pruned
        # by nobody, but switching back on needs no new resource.
        state="ENABLED" if schedule.keep else "DISABLED",
        policy_details=aws.dlm.LifecyclePolicyPolicyDetailsArgs(
            resource_types=["VOLUME"],
            target_tags={DATA_OF_TAG: data_of(settings)},
            schedules=[
                aws.dlm.LifecyclePolicyPolicyDetailsScheduleArgs(
                    name="nightly",
                    copy_tags=True,
                    tags_to_add={SNAPSHOT_OF_TAG: data_of(settings)},
                    create_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs(
                        interval=24, interval_unit="HOURS", times=schedule.time
                    ),
                    # DLM takes no count of 0, even for a disabled policy.
                    retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs(count=max(schedule.keep, 1)),
                )
            ],
        ),
        tags=settings.tags,
        opts=pulumi.ResourceOptions(protect=True, depends_on=[attached]),
    )
