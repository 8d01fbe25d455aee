"""Registry mirror: `registry:2` as a Docker Hub pull-through cache, deployed as a swarm stack.

The stack files live in `scripts/stacks/`; they travel to manager 0 on stdin and
`swarm-node mirror-deploy` runs `docker stack deploy` with them. The mirror runs on every
manager, published in host mode (not through the routing mesh, which needs IPVS), and
stores its cache under this stack's prefix of the state bucket, so the cache survives
the nightly teardown. The nodes' `daemon.json` already points at the managers' pinned
addresses, so the mirror is in use the moment it answers.
"""

from __future__ import annotations

import pulumi
from pulumi_command import remote

from components.payload import STACK_FILES, digest, stacks_payload
from components.swarm import SwarmFormation, node_cli


class RegistryMirror(pulumi.ComponentResource):
    stack_digest: str

    def __init__(
        self, name: str, formation: SwarmFormation, mirror_image: str, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("swarm:index:RegistryMirror", name, None, opts)
        leader = formation.leader
        self.stack_digest = digest(STACK_FILES)
        self.deploy = remote.Command(
            f"{name}-deploy",
            connection=formation.connection(leader),
            create=node_cli("mirror-deploy", "--image", mirror_image),
            stdin=stacks_payload(),
            # Redeploy when a stack file changes, and on a new manager 0.
            triggers=[self.stack_digest, *leader.replaced_by],
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[formation.reconcile]),
        )
        self.register_outputs({"stack_digest": self.stack_digest})
