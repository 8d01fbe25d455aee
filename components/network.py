"""Network of one swarm: a VPC over several AZs (or the user's own), and its security groups.

The cluster group admits swarm traffic (2377/tcp control plane, 7946/tcp+udp gossip,
4789/udp VXLAN, ESP for encrypted overlays) and the registry mirror only from members of
the group itself; the SSH group admits port 22 only from `swarm:sshAllowedCidrs`.
Nothing else is open to anyone.
"""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_aws as aws

from components.settings import Settings

# (rule name, description, protocol, from_port, to_port); protocol "50" is ESP: no ports.
SWARM_PORTS = [
    ("manage", "swarm cluster management", "tcp", 2377, 2377),
    ("gossip-tcp", "swarm node gossip (tcp)", "tcp", 7946, 7946),
    ("gossip-udp", "swarm node gossip (udp)", "udp", 7946, 7946),
    ("vxlan", "swarm overlay network data (VXLAN)", "udp", 4789, 4789),
    ("esp", "swarm encrypted overlay traffic (ESP)", "50", None, None),
]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    subnet_ids: pulumi.Output[list[str]]
    cluster_security_group_id: pulumi.Output[str]
    ssh_security_group_id: pulumi.Output[str]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("swarm:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Leaves of the graph that the nodes still need at teardown (the backup hook uses
        # SSH, S3 and the routes); see `node_dependencies`.
        self.node_dependencies: list[pulumi.Resource] = []
        tags = settings.tags

        if settings.vpc_id:
            vpc_id: pulumi.Input[str] = settings.vpc_id
            subnet_ids: list[pulumi.Input[str]] = [s.subnet_id for s in settings.subnets]
        else:
            vpc = aws.ec2.Vpc(
                f"{name}-vpc",
                cidr_block=settings.vpc_cidr,
                enable_dns_hostnames=True,
                enable_dns_support=True,
                tags={**tags, "Name": f"{settings.cluster_name}"},
                opts=child,
            )
            gateway = aws.ec2.InternetGateway(
                f"{name}-igw", vpc_id=vpc.id, tags={**tags, "Name": settings.cluster_name}, opts=child
            )
            routes = aws.ec2.RouteTable(
                f"{name}-public",
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
                tags={**tags, "Name": f"{settings.cluster_name}-public"},
                opts=child,
            )
            subnet_ids = []
            for i, plan in enumerate(settings.subnets):
                subnet = aws.ec2.Subnet(
                    f"{name}-subnet-{i}",
                    vpc_id=vpc.id,
                    cidr_block=plan.cidr,
                    availability_zone=plan.availability_zone,
                    map_public_ip_on_launch=settings.connect_via == "public",
                    tags={**tags, "Name": f"{settings.cluster_name}-{plan.availability_zone}"},
                    opts=child,
                )
                association = aws.ec2.RouteTableAssociation(
                    f"{name}-subnet-{i}-routes", subnet_id=subnet.id, route_table_id=routes.id, opts=child
                )
                self.node_dependencies.append(association)
                subnet_ids.append(subnet.id)
            vpc_id = vpc.id

        cluster = aws.ec2.SecurityGroup(
            f"{name}-cluster",
            description=f"Docker Swarm traffic between the nodes of {settings.cluster_name}",
            vpc_id=vpc_id,
            tags={**tags, "Name": f"{settings.cluster_name}-cluster"},
            opts=child,
        )
        rule_opts = pulumi.ResourceOptions(parent=cluster)
        ports = list(SWARM_PORTS)
        if settings.mirror_enabled:
            ports.append(("mirror", "registry mirror", "tcp", settings.mirror_port, settings.mirror_port))
        for rule, description, protocol, from_port, to_port in ports:
            self.node_dependencies.append(
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-cluster-{rule}",
                    security_group_id=cluster.id,
                    referenced_security_group_id=cluster.id,
                    ip_protocol=protocol,
                    from_port=from_port,
                    to_port=to_port,
                    description=description,
                    opts=rule_opts,
                )
            )
        # Nodes reach package repositories, the registry upstream and S3.
        self.node_dependencies.append(
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-cluster-egress",
                security_group_id=cluster.id,
                cidr_ipv4="0.0.0.0/0",
                ip_protocol="-1",
                description="outbound to anywhere (packages, image upstream, S3)",
                opts=rule_opts,
            )
        )

        ssh = aws.ec2.SecurityGroup(
            f"{name}-ssh",
            description=f"SSH to the nodes of {settings.cluster_name} from swarm:sshAllowedCidrs",
            vpc_id=vpc_id,
            tags={**tags, "Name": f"{settings.cluster_name}-ssh"},
            opts=child,
        )
        for i, cidr in enumerate(settings.ssh_allowed_cidrs):
            family = "cidr_ipv6" if ipaddress.ip_network(cidr).version == 6 else "cidr_ipv4"
            self.node_dependencies.append(
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-ssh-{i}",
                    security_group_id=ssh.id,
                    ip_protocol="tcp",
                    from_port=22,
                    to_port=22,
                    description=f"SSH from {cidr}",
                    opts=pulumi.ResourceOptions(parent=ssh),
                    **{family: cidr},
                )
            )

        self.vpc_id = pulumi.Output.from_input(vpc_id)
        self.subnet_ids = pulumi.Output.all(*subnet_ids)
        self.cluster_security_group_id = cluster.id
        self.ssh_security_group_id = ssh.id
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "subnet_ids": self.subnet_ids,
                "cluster_security_group_id": self.cluster_security_group_id,
                "ssh_security_group_id": self.ssh_security_group_id,
            }
        )
