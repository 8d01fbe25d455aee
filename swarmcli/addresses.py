"""`scripts/swarm release-addresses`: give back the Elastic IPs no manager uses any more.

The managers' addresses are protected (they survive the nightly teardown), and the
program keeps registering every one AWS still holds for the stack, also after
`swarm:managerCount` shrank or `swarm:elasticIps` was turned off: dropping a protected
resource would fail every later `up`. Releasing one is therefore a step the operator
takes, as for every kept resource (README, "What outlives the night"): unprotect it, then
`pulumi destroy --target` it, which releases it in AWS; the next `up` no longer finds it.
An address still tied to a machine is never released.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass

from components.settings.base import DEFAULTS
from swarmcli import outputs, pulumicli
from swarmcli.errors import SwarmCliError
from swarmcli.progress import Progress

EIP = "aws:ec2/eip:Eip"
ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
_INDEX = re.compile(r"-manager-(\d+)$")


@dataclass(frozen=True)
class Address:
    name: str
    urn: str
    public_ip: str
    allocation_id: str
    index: int


def unused(resources: list[dict], config: dict[str, str]) -> list[Address]:
    """The stack's Elastic IPs that no manager of the current config uses, and no
    association in the state still ties to a machine."""
    in_use = _managers_with_addresses(config)
    tied = {(r.get("inputs") or {}).get("allocationId") for r in resources if r.get("type") == ASSOCIATION}
    found = []
    for r in resources:
        if r.get("type") != EIP or r.get("delete"):
            continue
        name = r["urn"].rsplit("::", 1)[-1]
        match = _INDEX.search(name)
        allocation = (r.get("outputs") or {}).get("allocationId", "")
        if match is None or int(match.group(1)) < in_use or allocation in tied:
            continue
        public_ip = (r.get("outputs") or {}).get("publicIp", "")
        found.append(Address(name, r["urn"], public_ip, allocation, int(match.group(1))))
    return sorted(found, key=lambda a: a.index)


def _managers_with_addresses(config: dict[str, str]) -> int:
    """How many managers the config gives an Elastic IP (a key it leaves out: the program's default)."""
    if config.get("swarm:hosts") or config.get("swarm:connectVia", DEFAULTS["connectVia"]) != "public":
        return 0
    if str(config.get("swarm:elasticIps", DEFAULTS["elasticIps"])).strip().lower() == "false":
        return 0
    try:
        return int(config.get("swarm:managerCount", DEFAULTS["managerCount"]))
    except ValueError as error:
        raise SwarmCliError(f"swarm:managerCount is not a number ({config['swarm:managerCount']!r})") from error


def release(stack: str, address: Address) -> None:
    pulumicli.run(["state", "unprotect", address.urn, "--yes"], stack)
    pulumicli.run(["destroy", "--target", address.urn, "--yes", "--skip-preview"], stack, timeout=pulumicli.LONG)


def command(args: argparse.Namespace) -> int:
    progress = Progress("release-addresses")
    with progress.step("reading the stack's state and config"):
        found = unused(outputs.stack_resources(args.stack), outputs.config_values(args.stack))
    if not args.dry_run:
        for address in found:
            with progress.step(f"releasing {address.name} ({address.public_ip})"):
                release(args.stack, address)
    if args.json:
        key = "would_release" if args.dry_run else "released"
        print(json.dumps({"stack": args.stack, key: [asdict(a) for a in found]}, indent=2))
    elif not found:
        print("release-addresses: every Elastic IP of the stack is in use by a manager; nothing to release")
    else:
        verb = "would release" if args.dry_run else "released"
        print(f"release-addresses: {verb} " + ", ".join(f"{a.name} {a.public_ip}" for a in found))
    return 0
