"""Registry mirror: `registry:2` as a Docker Hub pull-through cache, deployed as a swarm stack.

The stack files live in `scripts/stacks/`; they travel to manager 0 on stdin and
`swarm-node mirror-deploy` runs `docker stack deploy` with them. One replica runs on a
manager, behind Docker's bridge and published in host mode on the manager's address (not
through the routing mesh, which needs IPVS); the nodes' `daemon.json` already points at
the managers' pinned addresses, so the mirror is in use the moment it answers.

It caches under this stack's `mirror/` prefix of the state bucket, so the cache survives
the nightly teardown, with a key of its own and no other rights (components/rights.py):
the registry answers unauthenticated HTTP, so it must not hold the managers' role, and
behind the bridge the metadata service's hop limit of 1 keeps the role from it. On EC2
that key is an IAM user's, made each morning and deleted each night; on machines you
bring it is the one in `swarm:mirrorS3AccessKeyId` (without it the cache is a volume).
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws
from pulumi_command import remote

from components.payload import STACK_FILES, digest, stacks_payload
from components.rights import node_policy
from components.settings import Settings
from components.swarm import SwarmFormation, node_cli


class MirrorKey(pulumi.ComponentResource):
    """The mirror's IAM user and its one access key, with the mirror's rights only. Not
    protected: nothing of it outlives the night, and each morning brings a new key."""

    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]

    def __init__(self, name: str, settings: Settings, bucket_arn: pulumi.Input[str], opts=None):
        super().__init__("swarm:index:MirrorKey", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # force_destroy: the night deletes the user even if someone added a key by hand.
        user = aws.iam.User(f"{name}-user", path="/swarm/", force_destroy=True, tags=settings.tags, opts=child)
        policy = pulumi.Output.from_input(bucket_arn).apply(
            lambda arn: node_policy(arn, settings.state_prefix, "mirror")
        )
        rights = aws.iam.UserPolicy(f"{name}-cache", user=user.name, policy=policy, opts=child)
        key = aws.iam.AccessKey(
            f"{name}-key", user=user.name, opts=pulumi.ResourceOptions(parent=self, depends_on=[rights])
        )
        self.access_key_id = key.id
        self.secret_access_key = pulumi.Output.secret(key.secret)
        self.register_outputs({"access_key_id": self.access_key_id})


def mirror_key(
    name: str, settings: Settings, bucket_arn: pulumi.Input[str], opts: pulumi.ResourceOptions
) -> tuple[pulumi.Output[str], pulumi.Output[str]] | None:
    """The mirror's S3 key, where it caches in S3: made here on EC2, given on own hosts."""
    if settings.mirror_storage != "s3":
        return None
    if settings.hosts_mode:
        return settings.mirror_s3_access_key_id, settings.mirror_s3_secret_access_key
    made = MirrorKey(f"{name}-key", settings, bucket_arn, opts=opts)
    return made.access_key_id, made.secret_access_key


class RegistryMirror(pulumi.ComponentResource):
    stack_digest: str

    def __init__(
        self,
        name: str,
        formation: SwarmFormation,
        settings: Settings,
        bucket_arn: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("swarm:index:RegistryMirror", name, None, opts)
        leader = formation.leader
        self.stack_digest = digest(STACK_FILES)
        key = mirror_key(name, settings, bucket_arn, pulumi.ResourceOptions(parent=self))
        self.deploy = remote.Command(
            f"{name}-deploy",
            connection=formation.connection(leader),
            create=node_cli("mirror-deploy", "--image", settings.mirror_image),
            stdin=stacks_payload(key),
            # Redeploy when a stack file changes, and on a new manager 0. A new key changes
            # the stdin, which updates the command (its create runs again): no replacement.
            triggers=[self.stack_digest, *leader.replaced_by],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[formation.reconcile]),
        )
        self.register_outputs({"stack_digest": self.stack_digest})
