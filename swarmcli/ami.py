"""`scripts/swarm adopt-ami`: move the stack's pinned AMI to SSM's newest, on purpose.

Each morning boots the AMI the stack recorded (`components/machine_image.py`), so a new
Amazon Linux release, and the Docker it brings, never arrives by surprise at 06:00. This
verb is how it arrives: it unprotects the record and replaces it in one `pulumi up`
(running machines ignore a new AMI: they take it at the next morning's rebuild, or now,
one at a time, with `scripts/swarm roll`). The `up` protects the record again.
"""

from __future__ import annotations

import argparse
import json

from swarmcli import outputs, pulumicli
from swarmcli.errors import SwarmCliError
from swarmcli.progress import Progress

PIN = "random:index/randomShuffle:RandomShuffle"


def pin_of(resources: list[dict]) -> dict:
    """The stack's AMI record in its state."""
    found = [r for r in resources if r.get("type") == PIN and r["urn"].endswith("-ami") and not r.get("delete")]
    if len(found) != 1:
        raise SwarmCliError(f"the stack's AMI record is not in its state ({len(found)} found): run its first morning")
    return found[0]


def command(args: argparse.Namespace) -> int:
    progress = Progress("adopt-ami")
    with progress.step("reading the stack's outputs and state"):
        current = outputs.load_outputs(args.stack, None)
        pin = pin_of(outputs.stack_resources(args.stack))
    pinned, newest = current.get("amiId", ""), current.get("amiNewest", "")
    if not newest:
        raise SwarmCliError("swarm:amiId names this stack's AMI: change it there (pulumi config set swarm:amiId ...)")
    adopted = pinned != newest and not args.dry_run
    if adopted:
        with progress.step(f"adopting {newest} (was {pinned}): pulumi up --replace the record"):
            pulumicli.run(["state", "unprotect", pin["urn"], "--yes"], args.stack)
            pulumicli.run(["up", "--replace", pin["urn"], "--yes", "--skip-preview"], args.stack,
                          timeout=pulumicli.LONG, capture=False)  # fmt: skip
    if args.json:
        print(json.dumps({"stack": args.stack, "pinned": pinned, "newest": newest, "adopted": adopted}, indent=2))
    elif pinned == newest:
        print(f"adopt-ami: {pinned} is already SSM's newest; nothing to adopt")
    else:
        verb = "would adopt" if args.dry_run else "adopted"
        print(f"adopt-ami: {verb} {newest} (was {pinned}); new machines boot it (the next morning, or a roll)")
    return 0
