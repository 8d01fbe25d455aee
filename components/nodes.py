"""The machines: SSH key pair, AMI, and EC2 instances for managers and workers.

Managers get pinned private addresses (see `settings.plan_nodes`): Docker restores a
manager's Raft state only onto the address it advertised. Every instance requires
IMDSv2 with a hop limit of 1 (containers behind Docker's bridge or an overlay get no
token, so no credentials; the registry mirror runs on the host's network), has an
encrypted gp3 root volume, and boots `components/user-data.sh`. Only managers carry the
state bucket's rights: pinned workers have none at all, and with swarm:logs cloudwatch a
role of their own that writes their logs and nothing else (a worker group's machines have
a role of their own: components/groups.py).

`ami`, `user_data`, `instance_type` and `key_name` are ignored after creation: none of
them may replace or restart every running machine at once mid-day (three managers
replaced at once lose quorum). They take effect at the next morning's rebuild, or at
once with `scripts/roll`, one node at a time; a new key pair is authorized on the running
machines by the formation (see `swarm.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws
import pulumi_random as random
import pulumi_tls as tls

from components.addresses import ManagerAddresses
from components.data import DEVICE_NAME
from components.hostkeys import derive_host_key
from components.machine_image import machine_image
from components.payload import gzip_base64, node_environment, render_user_data, with_host_key
from components.settings import DataVolume, Settings
from components.swarm import NodeData, SwarmNode

# What a running machine keeps when the config changes until it is replaced (the next
# morning, or `scripts/swarm roll`): each would otherwise replace every machine at once.
IGNORED_UNTIL_REPLACED = [
    *("ami", "userDataBase64", "instanceType", "keyName"),
    *("subnetId", "privateIp", "associatePublicIpAddress"),  # swarm:subnetIds, swarm:connectVia
]


@dataclass
class NodesArgs:
    subnet_ids: list[pulumi.Input[str]]
    security_group_ids: list[pulumi.Input[str]]
    instance_profile_name: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    # swarm:logs cloudwatch: the pinned workers' logs-only role (none: they hold no role).
    worker_profile_name: pulumi.Input[str] | None = None
    # Dropped managers whose Elastic IPs are kept (`addresses.plan_addresses`).
    kept_addresses: set[int] = field(default_factory=set)
    # "worker-0" -> its swarm:dataVolumes entry and kept volume (components/data.py).
    data_volumes: dict[str, tuple[DataVolume, aws.ebs.Volume]] = field(default_factory=dict)
    # What the machines need but do not reference (rules, routes, the role's policy):
    # created before them, deleted after them and so after the backup hook.
    depends_on: list[pulumi.Resource] = field(default_factory=list)


class Nodes(pulumi.ComponentResource):
    ssh_private_key: pulumi.Output[str]
    ssh_key_generated: bool
    managers: list[SwarmNode]
    workers: list[SwarmNode]
    instances: dict[str, aws.ec2.Instance]

    def __init__(self, name: str, settings: Settings, args: NodesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("swarm:index:Nodes", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.ssh_key_generated = settings.ssh_private_key is None
        # Generated once and kept, protected like the bucket: it lives only in the
        # (encrypted) state, keeps `sshPrivateKey` the same every day, and stays the
        # operator key even after a switch to your own key pair: every machine accepts it
        # (user-data authorizes it), so Pulumi can reach running machines to authorize
        # your key. It is never dropped from the program: a protected resource that is
        # dropped fails every later `up`.
        operator = tls.PrivateKey(
            f"{name}-ssh-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self, protect=True)
        )
        self.operator_key = pulumi.Output.secret(operator.private_key_openssh)
        if self.ssh_key_generated:
            public_key: pulumi.Input[str] = operator.public_key_openssh
            self.ssh_private_key = self.operator_key
            self.authorized_key: pulumi.Input[str] | None = None
        else:
            public_key = settings.ssh_public_key
            self.ssh_private_key = pulumi.Output.secret(settings.ssh_private_key)
            self.authorized_key = settings.ssh_public_key
        key_pair = aws.ec2.KeyPair(f"{name}-key", public_key=public_key, tags=settings.tags, opts=child)
        # What worker groups' launch templates take from here (components/groups.py).
        self.key_name = key_pair.key_name
        self.operator_public_key = operator.public_key_openssh

        self.image = machine_image(name, settings, self)
        ami = self.image.ami

        # Each machine's SSH host key is derived from this seed (see hostkeys.py) and set by
        # cloud-init before sshd first answers: the same key every day, at the same address.
        host_key_seed = random.RandomBytes(
            f"{name}-host-key-seed", length=32, opts=pulumi.ResourceOptions(parent=self, protect=True)
        )
        addresses = None
        if settings.elastic_ips or args.kept_addresses:
            addresses = ManagerAddresses(f"{name}-addresses", settings, args.kept_addresses, opts=child)
        self.public_ips: dict[str, pulumi.Output[str]] = {}
        self.instances = {}
        self.managers, self.workers = [], []
        for plan in settings.nodes:
            data = args.data_volumes.get(f"{plan.role}-{plan.index}")
            host_key = pulumi.Output.secret(host_key_seed.hex).apply(
                lambda seed, plan=plan: derive_host_key(seed, plan.name)
            )
            user_data = pulumi.Output.all(args.bucket_name, operator.public_key_openssh, host_key).apply(
                lambda v, plan=plan: gzip_base64(
                    with_host_key(
                        render_user_data(
                            {**node_environment(settings, plan, v[0]), "SWARM_OPERATOR_KEY": v[1].strip()}
                        ),
                        *v[2],
                    )
                )
            )
            instance = aws.ec2.Instance(
                f"{name}-{plan.role}-{plan.index}",
                ami=ami,
                instance_type=settings.instance_type,
                subnet_id=args.subnet_ids[plan.subnet_index],
                private_ip=plan.private_ip,
                vpc_security_group_ids=args.security_group_ids,
                # Only managers hold the bucket's keys (backups, the mirror's cache).
                iam_instance_profile=args.instance_profile_name if plan.role == "manager" else args.worker_profile_name,
                key_name=key_pair.key_name,
                associate_public_ip_address=settings.connect_via == "public",
                user_data_base64=user_data,
                metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                    http_endpoint="enabled",
                    http_tokens="required",
                    # One hop: the node itself (and the mirror, on the host's network),
                    # never a container behind Docker's bridge or an overlay.
                    http_put_response_hop_limit=1,
                ),
                root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                    volume_type="gp3",
                    volume_size=settings.root_volume_size,
                    encrypted=True,
                    delete_on_termination=True,
                    tags={**settings.tags, "Name": plan.name},
                ),
                tags={**settings.tags, "Name": plan.name, "swarm:role": plan.role},
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=args.depends_on,
                    # Applied at the next morning's rebuild, or now, one machine at a time,
                    # by scripts/roll: a change here must never replace or restart every
                    # machine at once (a new key pair is authorized on running machines;
                    # swarm:connectVia and swarm:subnetIds would replace all managers in
                    # parallel, and the swarm would lose its quorum).
                    ignore_changes=IGNORED_UNTIL_REPLACED,
                    # A pinned address, or a data volume, cannot be held by the old and the
                    # new machine at once (EC2 refuses a second attachment: VolumeInUse).
                    delete_before_replace=plan.private_ip is not None or data is not None,
                ),
            )
            self.instances[plan.name] = instance
            public_ip, ready = pulumi.Output.from_input(instance.public_ip), [instance]
            if settings.elastic_ips and addresses is not None and plan.role == "manager":
                # EC2 gives the kept address to the machine and drops the one it booted with,
                # so the instance's own `public_ip` is stale from here on: never read it.
                association = addresses.associate(f"{name}-manager-{plan.index}-address", plan.index, instance, self)
                eip = addresses.addresses[plan.index].eip
                public_ip = pulumi.Output.all(eip.public_ip, association.id).apply(lambda v: v[0])
                ready = [instance, association]
            self.public_ips[plan.name] = public_ip
            wanted_subnet = args.subnet_ids[plan.subnet_index]
            pulumi.Output.all(instance.subnet_id, wanted_subnet).apply(lambda v, n=plan.name: _not_moved_yet(n, *v))
            handle = SwarmNode(
                name=plan.name,
                role=plan.role,
                # What the machine has, not what the config now asks for (ignored above
                # until it is replaced): a running machine without a public address is
                # still reached at its private one.
                connect_host=pulumi.Output.all(public_ip, instance.private_ip).apply(
                    lambda v: v[0] if settings.connect_via == "public" and v[0] else v[1]
                ),
                private_ip=instance.private_ip,
                replaced_by=[instance.id],
                depends_on=ready,
                pinned=plan.private_ip is not None,
                # The public half of a secret-derived key is no secret.
                host_public_key=pulumi.Output.unsecret(host_key.apply(lambda pair: pair[1])),
                addresses=[public_ip, instance.private_ip],
                data=self._attach(f"{name}-{plan.role}-{plan.index}-data", data, instance),
            )
            (self.managers if plan.role == "manager" else self.workers).append(handle)

        self.register_outputs({"ssh_private_key": self.ssh_private_key})

    def _attach(
        self, name: str, data: tuple[DataVolume, aws.ebs.Volume] | None, instance: aws.ec2.Instance
    ) -> NodeData | None:
        """Tie the node's kept volume to this machine. Every input forces a new attachment,
        so a new machine is a new one; the old one goes first (delete before replace), after
        the node's `data-release` has unmounted the disk (components/swarm.py)."""
        if data is None:
            return None
        entry, volume = data
        attachment = aws.ec2.VolumeAttachment(
            name,
            device_name=DEVICE_NAME,
            volume_id=volume.id,
            instance_id=instance.id,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        return NodeData(label=entry.name, volume_id=volume.id, attachment=attachment)


def _not_moved_yet(name: str, subnet: str | None, wanted: str | None) -> None:
    """Say so while a running machine is not in the subnet the config gives it."""
    if subnet and wanted and subnet != wanted:
        pulumi.log.warn(
            f"{name} runs in {subnet}; swarm:subnetIds puts it in {wanted}. Nothing is replaced at once (all the "
            "managers together would lose the swarm's quorum): move the machines one at a time with "
            "'scripts/swarm roll STACK' before tonight. A manager gets a new address, and a backup taken at the "
            "old one does not restore at the new one."
        )
