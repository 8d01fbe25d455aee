"""`scripts/swarm roll`: a stack's machines, one at a time, onto what the program says now.

A new AMI, user-data or instance type is ignored by `pulumi up` on running machines (a
change there must never replace or restart every machine at once). This applies it: each
EC2 instance of the stack in turn is replaced with `pulumi up --replace <urn>`, workers
first, then the managers, manager 0 last. Each replacement is the program's own day-two
path: the node's retire hook drains it (its tasks run elsewhere first), demotes it if it
is a manager (leadership moves to another manager, quorum is kept) and removes it; the
new machine joins (a new manager 0 joins the live swarm, nothing is restored), and
reconcile waits for it to be Ready. Before the next node, every service must run its
desired replicas again (`swarm-node converge` on manager 0, over SSH).

Needs the Pulumi CLI logged in to the stack's backend, and `ssh` on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from swarmcli import pulumicli
from swarmcli.errors import SwarmCliError
from swarmcli.progress import Progress

INSTANCE = "aws:ec2/instance:Instance"
CONVERGE_TIMEOUT = 600


class RollError(SwarmCliError):
    pass


@dataclass(frozen=True)
class Machine:
    urn: str
    name: str  # the node's hostname, e.g. swarm-dev-worker-1
    role: str  # manager | worker


class Stack(Protocol):
    """What rolling needs of a stack: its machines, a replacement, and a converged swarm."""

    def machines(self) -> list[Machine]: ...

    def replace(self, urn: str) -> None: ...

    def converge(self, timeout: int) -> str: ...


def order(machines: list[Machine]) -> list[Machine]:
    """Workers, then managers by index, manager 0 last (it bootstraps and backs up)."""

    def index(m: Machine) -> int:
        return int(m.name.rsplit("-", 1)[-1]) if m.name.rsplit("-", 1)[-1].isdigit() else 0

    workers = sorted((m for m in machines if m.role == "worker"), key=index)
    managers = sorted((m for m in machines if m.role == "manager"), key=index)
    managers = [m for m in managers if index(m) != 0] + [m for m in managers if index(m) == 0]
    return workers + managers


def plan(machines: list[Machine], only: str | None = None) -> list[Machine]:
    """The machines a roll replaces, in `order`; with `only` (workers|managers) just those."""
    ordered = order(machines)
    return [m for m in ordered if m.role == only.rstrip("s")] if only else ordered


def roll(stack: Stack, only: str | None = None, log=print) -> list[dict]:
    """Replace every machine in `order`, one at a time; what happened to each."""
    every = stack.machines()
    machines = plan(every, only)
    managers = [m for m in every if m.role == "manager"]
    if any(m.role == "manager" for m in machines) and len(managers) < 3:
        raise RollError(
            f"rolling {len(managers)} manager(s) would lose the swarm's quorum while one is replaced; "
            "run it with 3 or more managers (pulumi config set swarm:managerCount 3), or --only workers"
        )
    done = []
    for i, machine in enumerate(machines, 1):
        started = time.monotonic()
        log(f"roll: {i}/{len(machines)} {machine.name} ({machine.role}): replacing")
        stack.replace(machine.urn)
        log(f"roll: {machine.name}: {stack.converge(CONVERGE_TIMEOUT)}")
        done.append({"name": machine.name, "role": machine.role, "seconds": round(time.monotonic() - started, 1)})
    return done


class PulumiStack:
    """A stack through the Pulumi CLI (`pulumi stack export`, `pulumi up --replace`)."""

    def __init__(self, stack: str):
        self.stack = stack
        try:
            pulumicli.require()
        except SwarmCliError as error:
            raise RollError(str(error)) from error

    def _pulumi(self, *args: str, capture: bool = True, timeout: int = pulumicli.QUICK) -> str:
        try:
            return pulumicli.run(list(args), self.stack, timeout=timeout, capture=capture).stdout or ""
        except SwarmCliError as error:
            raise RollError(str(error)) from error

    def machines(self) -> list[Machine]:
        deployment = json.loads(self._pulumi("stack", "export"))["deployment"]
        found = []
        for resource in deployment.get("resources") or []:
            if resource.get("type") != INSTANCE or resource.get("delete"):
                continue
            tags = (resource.get("outputs") or {}).get("tags") or {}
            found.append(Machine(resource["urn"], tags.get("Name", resource["urn"]), tags.get("swarm:role", "worker")))
        if not found:
            raise RollError(f"stack {self.stack} has no EC2 instances (with swarm:hosts there is nothing to roll)")
        return found

    def replace(self, urn: str) -> None:
        self._pulumi("up", "--yes", "--replace", urn, capture=False, timeout=pulumicli.LONG)

    def converge(self, timeout: int) -> str:
        outputs = json.loads(self._pulumi("stack", "output", "--json", "--show-secrets"))
        key = outputs.get("sshPrivateKey") or os.environ.get("SWARM_SSH_KEY_FILE")
        login = outputs["dockerHost"].removeprefix("ssh://")
        if not outputs.get("sshKnownHosts"):
            raise RollError(f"stack {self.stack} has no sshKnownHosts output: run pulumi up on it (host keys checked)")
        with tempfile.TemporaryDirectory() as tmp:
            if "BEGIN OPENSSH PRIVATE KEY" in (key or ""):
                path = Path(tmp) / "key"
                path.touch(mode=0o600)
                path.write_text(key)
                key = str(path)
            # The leader's host key as the stack pins it: a roll never trusts a new key.
            known = Path(tmp) / "known_hosts"
            known.write_text(outputs["sshKnownHosts"])
            identity = ["-i", key] if key else []
            command = ["sudo", "/usr/local/sbin/swarm-node", "converge", "--timeout", str(timeout)]
            run = subprocess.run(
                ["ssh", *identity, "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}",
                 "-o", "StrictHostKeyChecking=yes", login, *command],
                capture_output=True, text=True, timeout=timeout + 60, check=False,
            )  # fmt: skip
        if run.returncode != 0:
            raise RollError(f"converge on {login} failed: {run.stderr.strip()[-1000:]}")
        return run.stdout.strip()


def command(args: argparse.Namespace) -> int:
    """The verb: the plan (`--dry-run`), or the roll with a line per step on stderr."""
    progress = Progress("roll")
    stack = PulumiStack(args.stack)
    if args.dry_run:
        with progress.step("reading the stack's machines"):
            machines = plan(stack.machines(), args.only)
        if args.json:
            print(json.dumps({"stack": args.stack, "plan": [asdict(m) for m in machines]}, indent=2))
        else:
            for machine in machines:
                print(f"{machine.role:8} {machine.name}  {machine.urn}")
        return 0
    done = roll(stack, args.only, log=lambda message: progress.note(message.removeprefix("roll: ")))
    if args.json:
        print(json.dumps({"stack": args.stack, "replaced": done}, indent=2))
    else:
        print(
            f"roll: {len(done)} machine(s) replaced one at a time: "
            + ", ".join(f"{d['name']} {d['seconds']}s" for d in done)
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`scripts/swarm roll ARGV`, as the old scripts/roll.py took them."""
    from swarmcli.main import main as cli

    return cli(["roll", *(sys.argv[1:] if argv is None else argv)])
