"""Machines the user brings (`swarm:hosts`): the same swarm without EC2.

Instead of an instance booting with user-data, each host is provisioned by a
`remote.Command` that runs the very same `scripts/node/user-data.sh` over SSH as root
(`sudo`; `PROVISION` below). The script travels on stdin, marked secret (it carries the
hosts' S3 keys when the backups go to S3), is written to a root-only temporary file and
run with stdin closed, so nothing in it can swallow the rest of the script. The
formation runs that command, right after the host's `leave` (see `swarm.py`), so a host
that leaves for a new address is provisioned again before it joins. From there on the
hosts are `SwarmNode`s like any other, except that they leave the swarm when they go,
because they stay.

The host's `name` becomes its hostname (the swarm and `reconcile` know nodes by it),
and the first manager listed is manager 0.
"""

from __future__ import annotations

import pulumi

from components.payload import node_environment, render_user_data
from components.settings import Settings
from components.swarm import PROVISION, NodeData, SwarmNode

__all__ = ["PROVISION", "Hosts"]


class Hosts(pulumi.ComponentResource):
    ssh_private_key: pulumi.Output[str]
    ssh_key_generated = False
    managers: list[SwarmNode]
    workers: list[SwarmNode]

    def __init__(
        self,
        name: str,
        settings: Settings,
        bucket_name: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("swarm:index:Hosts", name, None, opts)
        self.ssh_private_key = pulumi.Output.secret(settings.ssh_private_key)
        # Your key is the only one: Pulumi reaches the hosts with it from the start.
        self.operator_key = self.ssh_private_key
        self.authorized_key: pulumi.Input[str] | None = None
        credentials = {}
        if settings.s3_access_key_id is not None:
            credentials = {
                "SWARM_AWS_ACCESS_KEY_ID": settings.s3_access_key_id,
                "SWARM_AWS_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
            }

        self.managers, self.workers = [], []
        for plan in settings.nodes:
            # Managers only: they alone back up, restore and run the mirror. A worker's
            # user-data removes any copy an earlier version left (components/rights.py).
            keys = credentials if plan.role == "manager" else {}
            if settings.logs is not None and settings.logs.access_key_id is not None:
                # swarm:logs cloudwatch: every host ships its logs with the logs-only key.
                keys = {
                    **keys,
                    "SWARM_LOGS_ACCESS_KEY_ID": settings.logs.access_key_id,
                    "SWARM_LOGS_SECRET_ACCESS_KEY": settings.logs.secret_access_key,
                }
            values = pulumi.Output.all(bucket=bucket_name, **keys).apply(
                lambda v, plan=plan: render_user_data(
                    {**node_environment(settings, plan, v.pop("bucket")), **v},
                )
            )
            handle = SwarmNode(
                name=plan.name,
                role=plan.role,
                connect_host=plan.address,
                private_ip=plan.private_ip,
                # Its swarm identity is the address it advertises: a new private address
                # leaves and joins afresh. SSH address, port and user only change how
                # Pulumi reaches it (the commands are updated, the node stays).
                replaced_by=[plan.private_ip],
                user=plan.user,
                port=plan.port,
                pinned=True,
                # The formation runs it (after the host's leave: see swarm.py).
                provision=pulumi.Output.secret(values),
                # Data it already holds at /var/data: labelled, never mounted by the program.
                data=NodeData(label=plan.data) if plan.data else None,
            )
            (self.managers if plan.role == "manager" else self.workers).append(handle)

        self.register_outputs({})
