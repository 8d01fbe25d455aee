"""What survives the nightly teardown: the state bucket, and the role that lets nodes use it.

`StateStore` is created with `protect=True`, which Pulumi propagates to every child, so
the bucket *and its settings* (versioning, encryption, public-access block, TLS-only
policy, lifecycle) stay when `pulumi destroy --exclude-protected` removes everything
else; deleting a settings resource would otherwise quietly suspend versioning or drop
the policy every night. A plain `pulumi destroy` refuses to run at all.

`NodeRole` is not protected: it is recreated each morning. It allows the nodes only
this stack's prefix of the bucket (backups and the mirror cache).
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from components.rights import ecr_repositories, group_scope, log_scope, node_policy
from components.settings import Settings


class StateStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            "swarm:index:StateStore",
            name,
            None,
            pulumi.ResourceOptions.merge(pulumi.ResourceOptions(protect=True), opts),
        )
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket=settings.state_bucket_name,
            force_destroy=False,
            tags={**settings.tags, "Name": f"{settings.cluster_name}-state"},
            opts=child,
        )
        in_bucket = pulumi.ResourceOptions(parent=bucket)
        aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.id,
            versioning_configuration={"status": "Enabled"},
            opts=in_bucket,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=in_bucket,
        )
        public_access = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=in_bucket,
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(tls_only_policy),
            # S3 rejects a policy while the public-access block is being changed.
            opts=pulumi.ResourceOptions(parent=bucket, depends_on=[public_access]),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-noncurrent-versions",
                    "status": "Enabled",
                    "filter": {},
                    "noncurrent_version_expiration": {"noncurrent_days": settings.backup_retention_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                },
            ],
            opts=in_bucket,
        )
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.register_outputs({"bucket_name": self.bucket_name, "bucket_arn": self.bucket_arn})


def role_policy(settings: Settings, holder: str, bucket_arn: str, role_arn: str) -> str:
    """The policy of the managers' or the pinned workers' role, with the optional rights
    the settings turn on (rights.py holds every right)."""
    groups = None
    if settings.worker_groups and holder == "managers":
        # swarm:workerGroups: the leader's watcher describes them and lets drained machines go.
        groups = group_scope(role_arn, settings.region, settings.join_token_parameter, settings.cluster_name)
    ecr = ecr_repositories(role_arn, settings.region) if settings.ecr_refresh and holder == "managers" else None
    return node_policy(bucket_arn, settings.state_prefix, holder, ecr, groups, logs_scope(settings, role_arn))


def logs_scope(settings: Settings, role_arn: str):
    """swarm:logs cloudwatch: the stack's log group and metrics namespace (else no such rights)."""
    if settings.logs is None:
        return None
    return log_scope(role_arn, settings.region or "", settings.logs.group, settings.logs.namespace)


def tls_only_policy(bucket_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


ASSUME_ROLE_EC2 = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }
)


class NodeRole(pulumi.ComponentResource):
    instance_profile_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        bucket_arn: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
        holder: str = "managers",
    ):
        """The managers' role; with holder "workers", the pinned workers' (swarm:logs only:
        their logs and nothing else)."""
        super().__init__("swarm:index:NodeRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        what = "Nodes of {}: this stack's prefix of the state bucket" if holder == "managers" else "Workers of {}: logs"
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=ASSUME_ROLE_EC2,
            description=what.format(settings.cluster_name),
            tags=settings.tags,
            opts=child,
        )
        policy = aws.iam.RolePolicy(
            f"{name}-state-access" if holder == "managers" else f"{name}-rights",
            role=role.id,
            policy=pulumi.Output.all(bucket_arn, role.arn).apply(lambda arns: role_policy(settings, holder, *arns)),
            opts=pulumi.ResourceOptions(parent=role),
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=settings.tags, opts=child)
        self.instance_profile_name = profile.name
        # Nothing else depends on the policy: without this the teardown could revoke S3
        # access while the backup hook is still uploading.
        self.node_dependencies: list[pulumi.Resource] = [policy]
        self.role_arn = role.arn
        self.register_outputs({"instance_profile_name": self.instance_profile_name, "role_arn": self.role_arn})
