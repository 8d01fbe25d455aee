"""SwarmCluster: one environment's swarm on AWS, composed of the other components.

It owns the outputs contract that app repos read through `StackReference` (see the
README's outputs table): names only ever get added, `outputsVersion` says which set a
consumer is looking at, and every secret is marked secret here, not left to the engine.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.mirror import RegistryMirror
from components.network import Network
from components.nodes import Nodes, NodesArgs
from components.settings import Settings
from components.state import NodeRole, StateStore
from components.swarm import SwarmFormation, SwarmFormationArgs

OUTPUTS_VERSION = 1


class SwarmCluster(pulumi.ComponentResource):
    outputs: dict[str, Any]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("swarm:index:SwarmCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        network = Network(f"{name}-network", settings, opts=child)
        # A root resource, not a child: it is the one part that outlives the cluster, and
        # its protection should not hinge on this component staying in the state.
        state = StateStore(f"{name}-state", settings)
        role = NodeRole(f"{name}-node", settings, state.bucket_arn, opts=child)
        nodes = Nodes(
            f"{name}-nodes",
            settings,
            NodesArgs(
                subnet_ids=[network.subnet_ids[i] for i in range(len(settings.subnets))],
                security_group_ids=[network.cluster_security_group_id, network.ssh_security_group_id],
                instance_profile_name=role.instance_profile_name,
                bucket_name=state.bucket_name,
                depends_on=[*network.node_dependencies, *role.node_dependencies],
            ),
            opts=child,
        )
        formation = SwarmFormation(
            f"{name}-swarm",
            SwarmFormationArgs(
                managers=nodes.managers,
                workers=nodes.workers,
                ssh_user=settings.ssh_user,
                ssh_private_key=nodes.ssh_private_key,
                restore_from=settings.restore_from,
                backup_on_destroy=settings.backup_on_destroy,
            ),
            opts=child,
        )
        if settings.mirror_enabled:
            RegistryMirror(f"{name}-mirror", formation, opts=child)

        leader = formation.leader
        managers = [nodes.instances[n.name] for n in settings.managers]
        workers = [nodes.instances[n.name] for n in settings.workers]
        self.outputs = {
            "outputsVersion": OUTPUTS_VERSION,
            "managerPrivateIps": [n.private_ip for n in settings.managers],
            "managerPublicIps": pulumi.Output.all(*[i.public_ip for i in managers]),
            "workerPrivateIps": pulumi.Output.all(*[i.private_ip for i in workers]),
            "leaderAddress": formation.leader_address,
            "bootstrapResult": formation.bootstrap_result,
            "dockerHost": pulumi.Output.concat("ssh://", settings.ssh_user, "@", leader.connect_host),
            "sshUser": settings.ssh_user,
            "workerJoinToken": formation.worker_join_token,
            "managerJoinToken": formation.manager_join_token,
            "registryMirrors": settings.registry_mirrors,
            "stateBucket": state.bucket_name,
            "statePrefix": settings.state_prefix,
            "vpcId": network.vpc_id,
            "subnetIds": network.subnet_ids,
            "clusterSecurityGroupId": network.cluster_security_group_id,
            "nodes": [
                pulumi.Output.all(i.id, i.private_ip, i.public_ip, i.availability_zone).apply(
                    lambda v, plan=plan: {
                        "name": plan.name,
                        "role": plan.role,
                        "instanceId": v[0],
                        "privateIp": v[1],
                        "publicIp": v[2],
                        "availabilityZone": v[3],
                    }
                )
                for plan, i in ((p, nodes.instances[p.name]) for p in settings.nodes)
            ],
        }
        if nodes.ssh_key_generated:
            self.outputs["sshPrivateKey"] = nodes.ssh_private_key
        self.register_outputs(self.outputs)
