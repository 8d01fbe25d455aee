"""The managers' Elastic IPs: the same public address every morning.

Each manager index has one `aws.ec2.Eip`, protected, so it survives the nightly
`pulumi destroy --exclude-protected` as the bucket does, and one `aws.ec2.EipAssociation`
(not protected) that ties it to each morning's machine. The address is never given to
the Eip's own `instance` input: a protected resource keeps what it depends on through
the night, and that would keep the machine.

What outlives the night is never dropped by a config change (README, "What outlives the
night"): when `swarm:managerCount` shrinks, the dropped managers' addresses stay
registered, unassociated, for as long as AWS holds them (the program looks them up by
their `swarm:address` tag), and a warning at every `up` says what they cost and how to
release them. Before the first allocation the program counts the region's addresses
against EC2's quota, so a full region is a clear error naming the quota, not AWS's
`AddressLimitExceeded` halfway through a morning.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.settings import Settings
from components.settings.base import MAX_MANAGERS

QUOTA_CODE = "L-0263D0A3"  # EC2, "EC2-VPC Elastic IPs" per region (default 5)
DEFAULT_QUOTA = 5
TAG = "swarm:address"


def address_tag(settings: Settings, index: int) -> str:
    """The tag value that names manager `index`'s address (unique per project and stack)."""
    return f"{settings.project}/{settings.stack}/manager-{index}"


@dataclass
class ManagerAddress:
    index: int
    eip: aws.ec2.Eip


class ManagerAddresses(pulumi.ComponentResource):
    """One kept Elastic IP per manager index, and the lookups that keep them registered."""

    addresses: dict[int, ManagerAddress]

    def __init__(self, name: str, settings: Settings, kept: set[int], opts: pulumi.ResourceOptions | None = None):
        """`kept`: from `plan_addresses`, called before any other resource is registered."""
        super().__init__("swarm:index:ManagerAddresses", name, None, opts)
        self.addresses = {}
        in_use = set(range(settings.manager_count)) if settings.elastic_ips else set()
        for index in sorted(in_use | kept):
            eip = aws.ec2.Eip(
                f"{name}-manager-{index}",
                domain="vpc",
                tags={
                    **settings.tags,
                    "Name": f"{settings.cluster_name}-manager-{index}",
                    TAG: address_tag(settings, index),
                },
                opts=pulumi.ResourceOptions(parent=self, protect=True),
            )
            self.addresses[index] = ManagerAddress(index, eip)
        surplus = sorted(kept - in_use)
        if surplus:
            names = ", ".join(f"manager-{i}" for i in surplus)
            why = f"swarm:managerCount is {settings.manager_count}" if in_use else "no manager uses Elastic IPs"
            pulumi.log.warn(
                f"the Elastic IPs of {names} are kept, unassociated, since {why}: about 0.005 USD an hour each, and "
                "they come back to the managers that get them again. To release them: scripts/swarm "
                "release-addresses STACK (README, 'Stable addresses')."
            )
        self.register_outputs({})

    def associate(self, name: str, index: int, instance: aws.ec2.Instance, parent: pulumi.Resource):
        """Tie manager `index`'s address to this morning's machine (replaced with it: every
        input of an association forces a new one)."""
        return aws.ec2.EipAssociation(
            name,
            allocation_id=self.addresses[index].eip.allocation_id,
            instance_id=instance.id,
            opts=pulumi.ResourceOptions(parent=parent),
        )


def plan_addresses(settings: Settings) -> set[int]:
    """The manager indexes whose addresses AWS holds for this stack but no manager uses
    (fewer managers, or swarm:elasticIps turned off): they stay registered, unassociated.
    Raises if the region has no room for the addresses to allocate. Only lookups: called
    before the program registers anything, so a refusal creates nothing."""
    if not settings.elastic_ips:
        return kept_indexes(settings, 0)
    check_quota(settings)
    return kept_indexes(settings, settings.manager_count)


def kept_indexes(settings: Settings, first: int) -> set[int]:
    """Indexes from `first` on whose address AWS still holds for this stack."""
    beyond = [address_tag(settings, i) for i in range(first, MAX_MANAGERS)]
    if not beyond or not aws.ec2.get_eips(filters=[{"name": f"tag:{TAG}", "values": beyond}]).allocation_ids:
        return set()  # the usual answer, in one call
    return {
        i for i in range(first, MAX_MANAGERS) if aws.ec2.get_eips(tags={TAG: address_tag(settings, i)}).allocation_ids
    }


def check_quota(settings: Settings) -> None:
    """Stop before anything is allocated if the region cannot give the managers theirs."""
    wanted = [address_tag(settings, i) for i in range(settings.manager_count)]
    held = len(aws.ec2.get_eips(filters=[{"name": f"tag:{TAG}", "values": wanted}]).allocation_ids)
    needed = settings.manager_count - held
    if needed <= 0:
        return
    allocated = len(aws.ec2.get_eips().allocation_ids)
    quota = region_quota()
    if allocated + needed > quota:
        raise pulumi.RunError(
            f"swarm:managerCount {settings.manager_count} needs {needed} more Elastic IP(s) (one per manager), "
            f"and {settings.region} already holds {allocated} of its quota of {quota} (EC2 quota "
            f"'EC2-VPC Elastic IPs', {QUOTA_CODE}). Nothing was created. Release unused addresses "
            "(aws ec2 describe-addresses), ask for more in Service Quotas (aws service-quotas "
            f"request-service-quota-increase --service-code ec2 --quota-code {QUOTA_CODE} --desired-value N), "
            "or go without stable addresses: pulumi config set swarm:elasticIps false"
        )


def region_quota() -> int:
    """The account's Elastic IP quota here; EC2's default when Service Quotas does not say."""
    try:
        return int(aws.servicequotas.get_service_quota(service_code="ec2", quota_code=QUOTA_CODE).value)
    except Exception as error:  # no servicequotas:GetServiceQuota right, or not offered here
        pulumi.log.info(f"Service Quotas did not answer ({error}); counting on EC2's default of {DEFAULT_QUOTA}")
        return DEFAULT_QUOTA
