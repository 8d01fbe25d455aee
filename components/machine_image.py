"""Which AMI, and so which Docker engine, a morning's machines boot: the stack's choice.

Without `swarm:amiId` the first morning takes the newest Amazon Linux 2023 AMI from SSM and
records it in a protected `random.RandomShuffle` (its one result is that AMI; `inputs` are
ignored after creation), so every later morning boots the same image, and with it the same
Docker, until someone adopts a newer one on purpose: `scripts/swarm adopt-ami STACK`
replaces the record with SSM's newest (running machines take it at the next morning, or
now with `scripts/swarm roll`). Each `up` exports the newest beside the pinned one, and the
status view says when they differ. `swarm:amiId` names an AMI outright; the record is kept
then too (a protected resource the program stopped registering would fail every `up`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.settings import Settings


@dataclass
class MachineImage:
    ami: pulumi.Output[str]  # what new machines boot
    newest: str  # SSM's newest for the architecture ("" when swarm:amiId names the AMI)


def machine_image(name: str, settings: Settings, parent: pulumi.Resource) -> MachineImage:
    newest = "" if settings.ami_id else aws.ssm.get_parameter(name=settings.ami_ssm_parameter).value
    pin = random.RandomShuffle(
        f"{name}-ami",
        inputs=[settings.ami_id or newest],
        result_count=1,
        opts=pulumi.ResourceOptions(parent=parent, protect=True, ignore_changes=["inputs"]),
    )
    if settings.ami_id:
        return MachineImage(pulumi.Output.from_input(settings.ami_id), "")
    return MachineImage(pin.results.apply(lambda results: results[0]), newest)
