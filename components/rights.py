"""Every right a node holds, in one place: the IAM statements of the managers' role, and
those of the mirror's own key.

Pinned workers hold no role at all; machines you bring hold the S3 keys you give them, and the
README's table (Security: "Rights") says what those keys need: the managers' statements.
The registry mirror, a third-party program listening unauthenticated on the managers, holds
neither: it runs behind Docker's bridge (the metadata service's hop limit of 1 keeps the
role from it) with a key of its own, good for its cache and nothing else. A capability
that needs a new right on a node adds one `Right` here, and a row to that table (a unit
test holds the two to each other: tests/unit/test_rights.py); nothing else in the
program writes an IAM policy for the nodes.

Each right is scoped to the stack's own resources: the bucket's `swarm/<stack>/` prefix
(the mirror: its `mirror/` part of it), or the bucket itself where S3 only offers
bucket-level actions (listing, conditioned on the prefix; its location and multipart
uploads, which the registry's S3 driver asks for).

The ECR rights (with swarm:ecrRefresh) are pull only, on this account's repositories in
the stack's region; `ecr:GetAuthorizationToken` has no resource to scope to (AWS takes
only `*` for it). The token it returns can do no more than the role may: a stolen one
pulls images for 12 hours, and pushes or deletes nothing. No backup is reachable with it.

Worker groups (swarm:workerGroups) add a third holder, the groups' instance role: it reads
the worker join token (one SSM parameter) and the agent's tarball (`agent/` under the
stack's prefix), and nothing else: no backup, no other stack, no Auto Scaling call. The
tarball's sha256 is pinned in the launch template, so whoever can write the bucket cannot
hand a group worker another agent. The managers, with groups only, may describe the Auto
Scaling groups (AWS takes only `*` for Describe calls) and complete the lifecycle actions
of this stack's groups (`<cluster>-*`), which is how a scaled-in worker is let go once drained.

Logs (swarm:logs cloudwatch) give every node the same two rights, held "by the nodes": the
managers' role, the pinned workers' own role (their only one: it can write logs and
nothing else), the groups' role, and the logs-only key of machines you bring. They write
log events into streams of the stack's one group and metrics into the stack's one
namespace (PutMetricData takes only `*`, narrowed by the `cloudwatch:namespace`
condition); none can read a log back, delete one or touch an alarm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Right:
    sid: str
    actions: tuple[str, ...]
    # "bucket" | "prefix": the bucket's ARN, or the objects under the stack's prefix;
    # "ecr-token": "*" (the only resource AWS takes); "ecr-repositories": this account's, in the region;
    # "join-token": the SSM parameter; "any": "*" (Describe calls); "stack-groups": <cluster>-* groups;
    # "log-group": the stack's log group's streams; "metrics": "*" within the stack's namespace
    on: str
    why: str  # the README table's last column
    prefix_condition: bool = False  # only for keys under the stack's prefix (s3:prefix)
    # "managers" (the EC2 role, own hosts' keys) | "mirror" (its key) | "groups" (the groups' role) |
    # "nodes" (every node's: the managers', the pinned workers' and the groups' roles, own hosts' logs key)
    holder: str = "managers"
    under: str = ""  # below the stack's prefix: "mirror/" for the mirror's cache


MIRROR_CACHE = "mirror/"  # the registry's rootdirectory, under the stack's prefix
AGENT_OBJECTS = "agent/"  # the agent's tarballs for group workers, under the stack's prefix


RIGHTS = (
    Right(
        "ListOwnPrefix",
        ("s3:ListBucket", "s3:ListBucketVersions"),
        "bucket",
        "the backups are found by listing; versions tell a morning an emptied store from a new one",
        prefix_condition=True,
    ),
    Right(
        "ObjectsUnderOwnPrefix",
        ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"),
        "prefix",
        "backups written (in parts when large), read back, restored and pruned",
    ),
    Right(
        "MirrorListsItsCache",
        ("s3:ListBucket",),
        "bucket",
        "the registry walks its cache to find and expire blobs",
        prefix_condition=True,
        holder="mirror",
        under=MIRROR_CACHE,
    ),
    Right(
        "MirrorBucketMetadata",
        ("s3:GetBucketLocation", "s3:ListBucketMultipartUploads"),
        "bucket",
        "the registry's S3 driver asks where the bucket is and lists its unfinished uploads",
        holder="mirror",
    ),
    Right(
        "MirrorCacheObjects",
        ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"),
        "prefix",
        "blobs and manifests cached, served and expired",
        holder="mirror",
        under=MIRROR_CACHE,
    ),
    Right(
        "EcrCredentials",
        ("ecr:GetAuthorizationToken",),
        "ecr-token",
        "registry-auth asks ECR for the credentials it puts in the services that pull from ECR",
    ),
    Right(
        "EcrPullOwnRepositories",
        ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"),
        "ecr-repositories",
        "what those credentials let every node's Docker do: pull, and nothing else",
    ),
    Right(
        "GroupsDescribed",
        ("autoscaling:DescribeAutoScalingGroups",),
        "any",
        "the leader's group watcher sees each group's instances and their lifecycle states",
    ),
    Right(
        "GroupWorkersLetGo",
        ("autoscaling:CompleteLifecycleAction",),
        "stack-groups",
        "a scaled-in or reclaimed worker is let go once the leader has drained it",
    ),
    Right(
        "GroupJoinToken",
        ("ssm:GetParameter",),
        "join-token",
        "a group worker reads the worker join token at boot",
        holder="groups",
    ),
    Right(
        "GroupAgentTarball",
        ("s3:GetObject",),
        "prefix",
        "a group worker fetches the agent (its sha256 pinned in the launch template)",
        holder="groups",
        under=AGENT_OBJECTS,
    ),
    Right(
        "ShipLogs",
        ("logs:CreateLogStream", "logs:PutLogEvents"),
        "log-group",
        "containers' output (Docker's awslogs driver), the journal and the agent's verbs, kept after the node goes",
        holder="nodes",
    ),
    Right(
        "PublishMetrics",
        ("cloudwatch:PutMetricData",),
        "metrics",
        "what the alarms watch: a failed or slow morning, a failed or stale backup, a lost quorum, nodes down",
        holder="nodes",
    ),
)
HOLDERS = ("managers", "mirror", "groups", "workers", "nodes")
NODE_HOLDERS = ("managers", "groups", "workers")  # who holds what is held "by the nodes"
ECR_RIGHTS = ("ecr-token", "ecr-repositories")
GROUP_RIGHTS = ("any", "stack-groups", "join-token")
LOG_RIGHTS = ("log-group", "metrics")


@dataclass(frozen=True)
class LogScope:
    """What the logs rights are scoped to (components/logs.py)."""

    log_group: str  # arn:<partition>:logs:<region>:<account>:log-group:<name>
    namespace: str  # Swarm/<project>/<stack>


def log_scope(role_arn: str, region: str, group: str, namespace: str) -> LogScope:
    partition, account = role_arn.split(":")[1], role_arn.split(":")[4]
    return LogScope(f"arn:{partition}:logs:{region}:{account}:log-group:{group}", namespace)


@dataclass(frozen=True)
class GroupScope:
    """The ARNs the group rights are scoped to (components/groups.py)."""

    join_token: str  # arn:<partition>:ssm:<region>:<account>:parameter/<name>
    # arn:<partition>:autoscaling:<region>:<account>:autoScalingGroup:*:autoScalingGroupName/<cluster>-*
    stack_groups: str


def group_scope(role_arn: str, region: str, parameter: str, cluster: str) -> GroupScope:
    """The account and partition read off a role's ARN, as for ECR."""
    partition, account = role_arn.split(":")[1], role_arn.split(":")[4]
    return GroupScope(
        f"arn:{partition}:ssm:{region}:{account}:parameter/{parameter.lstrip('/')}",
        f"arn:{partition}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{cluster}-*",
    )


def ecr_repositories(role_arn: str, region: str) -> str:
    """arn:<partition>:ecr:<region>:<account>:repository/*, the account read off the role's ARN."""
    partition, account = role_arn.split(":")[1], role_arn.split(":")[4]
    return f"arn:{partition}:ecr:{region}:{account}:repository/*"


def node_policy(
    bucket_arn: str,
    prefix: str,
    holder: str = "managers",
    ecr_repositories: str | None = None,
    groups: GroupScope | None = None,
    logs: LogScope | None = None,
) -> str:
    """The policy of one holder (the managers' role, the mirror's key, the groups' role, the
    pinned workers' role, the hosts' logs key: "nodes"): its RIGHTS, on this bucket and this
    stack's prefix only; the ECR rights only given `ecr_repositories`, the group rights only
    given `groups`, the logs rights only given `logs`."""
    if holder not in HOLDERS:
        raise ValueError(f"no such holder of rights: {holder!r}")
    statements = []
    for right in RIGHTS:
        held = right.holder == holder or (right.holder == "nodes" and holder in NODE_HOLDERS)
        if not held or (right.on in ECR_RIGHTS and not ecr_repositories):
            continue
        if (right.on in GROUP_RIGHTS and groups is None) or (right.on in LOG_RIGHTS and logs is None):
            continue
        statements.append(_statement(right, bucket_arn, prefix, ecr_repositories, groups, logs))
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _statement(
    right: Right,
    bucket_arn: str,
    prefix: str,
    ecr_repositories: str | None,
    groups: GroupScope | None,
    logs: LogScope | None,
) -> dict:
    scope = prefix + right.under
    resource = {"bucket": bucket_arn, "ecr-token": "*", "ecr-repositories": ecr_repositories, "any": "*"}
    if groups is not None:
        resource.update({"join-token": groups.join_token, "stack-groups": groups.stack_groups})
    if logs is not None:
        # A group's streams are `<group ARN>:log-stream:<name>`; `:*` covers them all.
        resource.update({"log-group": f"{logs.log_group}:*", "metrics": "*"})
    statement = {
        "Sid": right.sid,
        "Effect": "Allow",
        "Action": list(right.actions),
        "Resource": [resource.get(right.on) or f"{bucket_arn}/{scope}*"],
    }
    if right.prefix_condition:
        statement["Condition"] = {"StringLike": {"s3:prefix": [scope, f"{scope}*"]}}
    if right.on == "metrics":
        statement["Condition"] = {"StringEquals": {"cloudwatch:namespace": logs.namespace}}
    return statement
