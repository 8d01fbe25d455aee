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
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.settings import DataVolume, Settings

DATA_OF_TAG = "swarm:data-of"  # <project>/<stack>: which stack's volume
DATA_TAG = "swarm:data"  # the volume's name, also the node label's value
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


class DataVolumes:
    """The stack's volumes: root resources, so their protection never hinges on a component."""

    def __init__(self, name: str, settings: Settings, kept: list[KeptVolume]):
        self.by_node: dict[str, tuple[DataVolume, aws.ebs.Volume]] = {}
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
