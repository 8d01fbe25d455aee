"""`scripts/swarm context`: the Docker CLI on this machine, reaching a stack's leader.

It writes the stack's key and host keys under ~/.swarm/<stack>/, an ssh_config there that
uses them with strict host-key checking (included first from ~/.ssh/config), and a docker
context `swarm-<stack>` that reaches the leader through it. Run again after a morning that
gave the leader a new address: everything is rewritten in place, the context updated.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

from swarmcli.errors import SwarmCliError
from swarmcli.leader import client_files, leader_login, write_private
from swarmcli.outputs import load_outputs

INCLUDE = "Include ~/.swarm/*/ssh_config"
DOCKER_TIMEOUT = 60


def _include_first(home: Path) -> None:
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    config = ssh_dir / "config"
    existing = config.read_text() if config.exists() else ""
    if INCLUDE not in existing.splitlines():
        # First in the file: an Include after a Host block would belong to that block.
        write_private(config, f"{INCLUDE}\n{existing}")


def _docker_context(context: str, alias: str) -> None:
    docker = shutil.which("docker")
    if docker is None:
        raise SwarmCliError("the docker CLI is not on PATH")
    present = subprocess.run(
        [docker, "context", "inspect", context], capture_output=True, timeout=DOCKER_TIMEOUT, check=False
    ).returncode
    verb = "update" if present == 0 else "create"
    done = subprocess.run(
        [docker, "context", verb, context, "--docker", f"host=ssh://{alias}"],
        capture_output=True,
        text=True,
        timeout=DOCKER_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise SwarmCliError(f"docker context {verb} {context} failed: {done.stderr.strip()}")


def make_context(stack: str, outputs: dict, name: str | None, identity: str | None, home: Path) -> str:
    """Write the SSH files, include them, create or update the context; its name."""
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", stack).strip("-")
    directory = home / ".swarm" / safe
    key, known = client_files(directory, outputs, identity)
    user, host, port = leader_login(outputs)
    alias = f"swarm-{safe}"
    (directory / "ssh_config").write_text(
        f"Host {alias}\n  HostName {host}\n  User {user}\n  Port {port}\n  IdentityFile {key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
    )
    _include_first(home)
    context = name or alias
    _docker_context(context, alias)
    return context


def command(args: argparse.Namespace) -> int:
    outputs = load_outputs(args.stack, args.outputs)
    context = make_context(args.stack, outputs, args.name, args.identity, Path.home())
    if args.json:
        _, host, _ = leader_login(outputs)
        print(json.dumps({"stack": args.stack, "context": context, "leader": host}, indent=2))
    else:
        print(f"docker context {context}: docker --context {context} node ls")
    return 0
