"""Worker groups (`swarm:workerGroups`): Auto Scaling groups whose machines join by themselves.

A pinned worker is a set of Pulumi resources and SSH commands run from the operator's
machine; a group's worker is none of that. Its launch template boots the same
`user-data.sh` with `SWARM_GROUP` set: the machine names itself `<group>-<instance id>`,
fetches the agent from the state bucket (`swarm/<stack>/agent/<sha256>.tar.gz`, written
here), checks it against the sha256 the template pins, and runs `swarm-node group-join`,
which reads the worker join token from one SSM SecureString parameter (written here, from
the formation's `tokens`) with the groups' own instance role. Nothing secret is in the
template or the user-data.

Leaving is the managers' work (agent/swarm_agent/groups.py, on a 10 s timer on the
leader): each group has a termination lifecycle hook (`swarm-drain`), so an instance AWS
scales in, rebalances or reclaims waits in `Terminating:Wait` until the leader has
drained its node and removed it, then lets it go (`CompleteLifecycleAction`); after 300 s
without an answer AWS lets it go anyway (CONTINUE).

The order of a morning: tokens -> the parameter and the agent's tarball -> the groups ->
reconcile (which waits until each group's current desired capacity is Ready in the swarm)
-> the night hooks. So the night's backup runs first, and the groups go after it, each
a force delete: every instance at once, no lifecycle hook, as fast as the pinned machines.

`desiredCapacity` is ignored after creation: what you or AWS set during the day stays
until the next morning, which starts again from `desired`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.agent import agent_bundle, agent_digest
from components.payload import gzip_base64, node_environment, render_user_data
from components.rights import AGENT_OBJECTS, group_scope, node_policy
from components.settings import NodePlan, Settings, WorkerGroup
from components.state import ASSUME_ROLE_EC2, logs_scope

HOOK = "swarm-drain"
# Long enough for a drain (the watcher gives it 90 s, then lets the machine go); short
# enough that a machine nobody answers for (no leader) is not paid for long.
HOOK_TIMEOUT = 300
# AL2023's (and Debian's) root device: the template's root volume, encrypted gp3.
ROOT_DEVICE = "/dev/xvda"


def group_asg_name(settings: Settings, group: WorkerGroup) -> str:
    return f"{settings.cluster_name}-{group.name}"


def agent_object() -> tuple[str, str]:
    """(sha256 of the agent's tarball, its base64): what group workers fetch and check."""
    bundle = agent_bundle()
    return hashlib.sha256(base64.b64decode(bundle)).hexdigest(), bundle


def watch_config(settings: Settings) -> str:
    """What the managers' watcher is told (`groups-watch --configure`): no secret in it."""
    groups = [
        {"name": g.name, "asg": group_asg_name(settings, g), "hook": HOOK, "labels": g.labels}
        for g in settings.worker_groups
    ]
    return json.dumps({"groups": groups}, sort_keys=True, separators=(",", ":"))


@dataclass
class WorkerGroupsArgs:
    subnet_ids: list[pulumi.Input[str]]
    security_group_ids: list[pulumi.Input[str]]
    ami: pulumi.Input[str]
    key_name: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    operator_public_key: pulumi.Input[str]


class WorkerGroups(pulumi.ComponentResource):
    groups: dict[str, aws.autoscaling.Group]

    def __init__(
        self,
        name: str,
        settings: Settings,
        args: WorkerGroupsArgs,
        worker_join_token: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("swarm:index:WorkerGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self._settings, self._args = settings, args
        profile, policy = self._role(name, child)
        parameter = aws.ssm.Parameter(
            f"{name}-join-token",
            name=settings.join_token_parameter,
            type="SecureString",  # under AWS's aws/ssm key
            value=pulumi.Output.secret(worker_join_token),
            description=f"Worker join token of {settings.cluster_name}, for its worker groups",
            tags=settings.tags,
            opts=child,
        )
        sha256, bundle = agent_object()
        tarball = aws.s3.BucketObjectv2(
            f"{name}-agent",
            bucket=args.bucket_name,
            key=f"{settings.state_prefix}{AGENT_OBJECTS}{sha256}.tar.gz",
            content_base64=bundle,
            content_type="application/gzip",
            opts=child,
        )
        before = [parameter, tarball, policy]
        self.templates: dict[str, aws.ec2.LaunchTemplate] = {}
        self.groups = {}
        for group in settings.worker_groups:
            template = self._template(name, group, profile, sha256)
            self.templates[group.name] = template
            self.groups[group.name] = self._group(name, group, template, before)
        self.register_outputs({})

    def _role(self, name: str, child: pulumi.ResourceOptions) -> tuple[aws.iam.InstanceProfile, aws.iam.RolePolicy]:
        """The groups' own role: the join token and agent/ only (components/rights.py)."""
        settings = self._settings
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=ASSUME_ROLE_EC2,
            description=f"Worker groups of {settings.cluster_name}: the join token and the agent, nothing else",
            tags=settings.tags,
            opts=child,
        )
        policy = aws.iam.RolePolicy(
            f"{name}-rights",
            role=role.id,
            policy=pulumi.Output.all(self._args.bucket_arn, role.arn).apply(
                lambda v: node_policy(
                    v[0],
                    settings.state_prefix,
                    "groups",
                    groups=group_scope(v[1], settings.region, settings.join_token_parameter, settings.cluster_name),
                    logs=logs_scope(settings, v[1]),
                )
            ),
            opts=pulumi.ResourceOptions(parent=role),
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=settings.tags, opts=child)
        return profile, policy

    def _user_data(self, group: WorkerGroup, sha256: str) -> pulumi.Output[str]:
        settings, args = self._settings, self._args
        plan = NodePlan(name=group.name, role="worker", index=0, subnet_index=0, private_ip=None)
        endpoints = settings.group_endpoints
        extra = {
            "SWARM_GROUP": group.name,
            "SWARM_MANAGER_ADDRS": ",".join(m.private_ip or "" for m in settings.managers),
            "SWARM_JOIN_TOKEN_PARAMETER": settings.join_token_parameter,
            "SWARM_SSM_ENDPOINT": (endpoints.ssm if endpoints else None) or "",
            "SWARM_AGENT_SHA256": sha256,
            "SWARM_AGENT_DIGEST": agent_digest(),
        }
        return pulumi.Output.all(args.bucket_name, args.operator_public_key).apply(
            lambda v: gzip_base64(
                render_user_data(
                    {**node_environment(settings, plan, v[0]), **extra, "SWARM_OPERATOR_KEY": v[1].strip()},
                    group_join=True,
                )
            )
        )

    def _machine_tags(self, group: WorkerGroup) -> dict[str, str]:
        """What the group's machines and their volumes are tagged with."""
        settings = self._settings
        return {**settings.tags, "Name": f"{settings.cluster_name}-{group.name}", "swarm:group": group.name}

    def _template(
        self, name: str, group: WorkerGroup, profile: aws.iam.InstanceProfile, sha256: str
    ) -> aws.ec2.LaunchTemplate:
        settings, args = self._settings, self._args
        tags = self._machine_tags(group)
        return aws.ec2.LaunchTemplate(
            f"{name}-{group.name}",
            name=group_asg_name(settings, group),
            image_id=args.ami,
            key_name=args.key_name,
            vpc_security_group_ids=args.security_group_ids,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(name=profile.name),
            user_data=self._user_data(group, sha256),
            # As on every machine: IMDSv2 and one hop, so no container gets the role.
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ROOT_DEVICE,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_type="gp3",
                        volume_size=settings.root_volume_size,
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                for kind in ("instance", "volume")
            ],
            # New machines take a changed template; running ones keep theirs until the morning.
            update_default_version=True,
            tags=settings.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _group(
        self, name: str, group: WorkerGroup, template: aws.ec2.LaunchTemplate, before: list[pulumi.Resource]
    ) -> aws.autoscaling.Group:
        settings = self._settings
        tags = {**self._machine_tags(group), "swarm:role": "worker"}
        policy = aws.autoscaling.GroupMixedInstancesPolicyArgs(
            instances_distribution=aws.autoscaling.GroupMixedInstancesPolicyInstancesDistributionArgs(
                on_demand_base_capacity=group.on_demand_base,
                on_demand_percentage_above_base_capacity=group.on_demand_percent,
                # AWS's advice for spot: the pools least likely to be reclaimed, at a low price.
                spot_allocation_strategy="price-capacity-optimized",
            ),
            launch_template=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateArgs(
                launch_template_specification=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgs(
                    launch_template_id=template.id, version="$Latest"
                ),
                overrides=[
                    aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideArgs(instance_type=t)
                    for t in group.instance_types
                ],
            ),
        )
        return aws.autoscaling.Group(
            f"{name}-{group.name}-group",
            name=group_asg_name(settings, group),
            min_size=group.min_size,
            max_size=group.max_size,
            desired_capacity=group.desired,
            vpc_zone_identifiers=self._args.subnet_ids,
            mixed_instances_policy=policy,
            # A spot pool about to be reclaimed: AWS launches the replacement first, then
            # lets the old machine go through the hook, drained, with no two-minute limit.
            capacity_rebalance=group.uses_spot,
            # The night: every machine at once, no hook (the swarm is going anyway).
            force_delete=True,
            initial_lifecycle_hooks=[
                aws.autoscaling.GroupInitialLifecycleHookArgs(
                    name=HOOK,
                    lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
                    heartbeat_timeout=HOOK_TIMEOUT,
                    default_result="CONTINUE",
                )
            ],
            tags=[aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True) for k, v in tags.items()],
            opts=pulumi.ResourceOptions(parent=self, depends_on=before, ignore_changes=["desiredCapacity"]),
        )


def groups_outputs(settings: Settings, groups: WorkerGroups | None) -> list[dict]:
    """The `workerGroups` output: each group's name, Auto Scaling group and node label."""
    if groups is None:
        return []
    return [
        {
            "name": g.name,
            "autoScalingGroupName": groups.groups[g.name].name,
            "launchTemplateId": groups.templates[g.name].id,
            "placement": f"node.labels.swarm.group=={g.name}",
        }
        for g in settings.worker_groups
    ]
