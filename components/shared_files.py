"""Shared files (`swarm:sharedFiles`): one EFS file system that every node mounts at
/var/data/shared, for services that move between nodes.

The file system is a root resource, protected as the bucket is, so `pulumi destroy
--exclude-protected` keeps it and what it holds. Its inputs are settings only: a
protected resource keeps everything it depends on through the night, so it takes nothing
from the network or the machines. What goes each night and comes back each morning is
the `SharedFiles` component: a security group that admits NFS (TCP 2049) from the
cluster group only, and one mount target per zone of the stack's subnets (EFS takes one
per zone). The formation mounts the file system on each node after `ready` and before
the node bootstraps or joins (agent/swarm_agent/shared.py) through
`SharedFiles.file_system_id`, which carries the mount targets and the NFS rule as
dependencies: the mount waits for them each morning, and each night they go only after
every node has let go of the file system.

What outlives the night is never dropped by a config change (README, "What outlives the
night"): every `up` finds the stack's file system by its `swarm:data-of` tag and
registers it under the same name, so with `swarm:sharedFiles` off it stays, unmounted
and without mount targets, with a warning that names the two commands that delete it.
A file system the state has forgotten (`pulumi state delete`) is imported, not made
again: nodes never mount a new, empty one in place of the one that holds the files.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.data import DATA_OF_TAG, data_of
from components.settings import Settings

NFS_PORT = 2049
# How the provider answers a lookup that matches nothing, or more than one.
NOTHING_MATCHED = "no matching"
SEVERAL_MATCHED = "multiple"


@dataclass
class SharedFilesArgs:
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Input[str]]  # in the order of settings.subnets
    cluster_security_group_id: pulumi.Input[str]


def plan_file_system(settings: Settings) -> str | None:
    """The ID of the stack's file system that AWS already holds (by its tag), or None.
    A lookup only: called before anything is registered."""
    if settings.hosts_mode:
        return None
    try:
        found = aws.efs.get_file_system(tags={DATA_OF_TAG: data_of(settings)})
    except Exception as error:  # the provider reports "nothing matched" as a failed call
        message = str(error)
        if NOTHING_MATCHED in message.lower():
            return None
        if SEVERAL_MATCHED in message.lower():
            raise pulumi.RunError(
                f"AWS holds more than one EFS file system tagged {DATA_OF_TAG}={data_of(settings)}, and this stack "
                "keeps one. Nothing was created. List them (aws efs describe-file-systems), find the one this "
                "stack's state names (pulumi stack export | grep fs-), and remove the tag from the others "
                f"(aws efs untag-resource --resource-id fs-... --tag-keys {DATA_OF_TAG})"
            ) from None
        # Without the right to look, go on: a file system registered before and dropped now
        # fails this `up` at its end ("protected"), so nothing is deleted either way.
        pulumi.log.warn(
            f"could not look for this stack's EFS file system ({message[:300]}); give Pulumi's credentials "
            "elasticfilesystem:DescribeFileSystems (README, 'Shared files (EFS)')"
        )
        return None
    return found.file_system_id or found.id


def file_system(name: str, settings: Settings, found: str | None) -> aws.efs.FileSystem:
    """The stack's kept file system, the same resource whether swarm:sharedFiles is on or off."""
    return aws.efs.FileSystem(
        f"{name}-shared-files",
        encrypted=True,
        performance_mode="generalPurpose",
        throughput_mode="elastic",
        tags={**settings.tags, "Name": f"{settings.cluster_name}-shared", DATA_OF_TAG: data_of(settings)},
        # `import_` with the ID already in the state is no import (Pulumi's step generator
        # compares the two); with a file system the state forgot, it adopts that one.
        opts=pulumi.ResourceOptions(protect=True, import_=found),
    )


def mount_target_subnets(settings: Settings) -> list[int]:
    """Indexes of the first subnet of each zone: EFS refuses a second mount target in a zone,
    and a node in another subnet of that zone reaches the zone's one (same VPC)."""
    zones: dict[str, int] = {}
    for index, subnet in enumerate(settings.subnets):
        zones.setdefault(subnet.availability_zone, index)
    return sorted(zones.values())


class SharedFiles(pulumi.ComponentResource):
    """What lets the nodes reach the kept file system this morning; none of it is kept."""

    file_system_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        kept: aws.efs.FileSystem,
        args: SharedFilesArgs,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("swarm:index:SharedFiles", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(
            f"{name}-nfs",
            description=f"NFS to the shared file system of {settings.cluster_name}, from its nodes only",
            vpc_id=args.vpc_id,
            tags={**settings.tags, "Name": f"{settings.cluster_name}-shared-nfs"},
            opts=child,
        )
        rule = aws.vpc.SecurityGroupIngressRule(
            f"{name}-nfs-from-cluster",
            security_group_id=group.id,
            referenced_security_group_id=args.cluster_security_group_id,
            ip_protocol="tcp",
            from_port=NFS_PORT,
            to_port=NFS_PORT,
            description="NFS from the swarm's nodes (the cluster group)",
            opts=pulumi.ResourceOptions(parent=group),
        )
        targets = [
            aws.efs.MountTarget(
                f"{name}-target-{index}",
                file_system_id=kept.id,
                subnet_id=args.subnet_ids[index],
                security_groups=[group.id],
                opts=child,
            )
            for index in mount_target_subnets(settings)
        ]
        # The ID, carrying the mount targets and the rule: whatever mounts through it waits
        # for them, and at night is deleted (unmounted) before they go.
        self.file_system_id = pulumi.Output.all(kept.id, rule.id, *[t.id for t in targets]).apply(lambda v: v[0])
        self.register_outputs({"file_system_id": self.file_system_id})


def shared_files(
    name: str, settings: Settings, found: str | None, args: SharedFilesArgs, opts: pulumi.ResourceOptions | None = None
) -> SharedFiles | None:
    """With swarm:sharedFiles, the kept file system and what mounts it; without, the file
    system alone while AWS holds one for the stack (never dropped by a config change)."""
    if settings.hosts_mode or not (settings.shared_files or found):
        return None
    kept = file_system(name, settings, found)
    if settings.shared_files:
        return SharedFiles(f"{name}-shared", settings, kept, args, opts)
    kept.urn.apply(lambda urn: _warn_kept(found or "", urn))
    return None


def _warn_kept(file_system_id: str, urn: str) -> None:
    pulumi.log.warn(
        f"the shared file system {file_system_id} is kept, unmounted, though swarm:sharedFiles is off: files are "
        "never deleted by a config change, and it is billed for what it holds (about 0.30 USD per GB-month). "
        "Turn it on again to use it (pulumi config set swarm:sharedFiles true), or delete it and its files "
        f"deliberately: pulumi state unprotect '{urn}', then pulumi destroy --target '{urn}' "
        "(README, 'Shared files (EFS)')."
    )
