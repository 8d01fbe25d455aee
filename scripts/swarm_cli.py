#!/usr/bin/env python3
"""See and reach a stack's swarm from its outputs.

    scripts/swarm status STACK [--outputs FILE] [--json | --html FILE]
    scripts/swarm context STACK [--outputs FILE] [--name NAME]

`status` connects to the leader over SSH (the stack's key, its host keys checked strictly
against `sshKnownHosts`) and shows the nodes (role, leader, availability, engine, zone),
the services (running/desired replicas, image, published ports), the last backups (age,
size, the latest's checksum and signature verified), what this morning's bootstrap did
and what the mirror's cache holds. `--json` is for scripts; `--html FILE` writes the same
view as one self-contained page.

`context` writes the stack's key and host keys under ~/.swarm/<stack>/, an ssh_config that
uses them with strict host-key checking (included from ~/.ssh/config), and a docker
context `swarm-<stack>` that reaches the leader through it.

The outputs come from `pulumi stack output --json --show-secrets --stack STACK`, or from a
file holding that JSON (`--outputs`: the sandbox and the tests use it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
COLLECT = ROOT / "scripts" / "status" / "collect.sh"
SSH_TIMEOUT = 180  # seconds for the whole collection on the leader


class SwarmCliError(Exception):
    pass


def load_outputs(stack: str, path: str | None) -> dict:
    if path:
        return json.loads(Path(path).read_text())
    command = ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError as error:
        raise SwarmCliError("the Pulumi CLI is not on PATH; or pass --outputs FILE") from error
    if done.returncode != 0:
        raise SwarmCliError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def leader_login(outputs: dict) -> tuple[str, str, int]:
    """(user, host, port) of `dockerHost` (ssh://user@host[:port])."""
    parts = urlsplit(outputs.get("dockerHost") or "")
    if parts.scheme != "ssh" or not parts.hostname:
        raise SwarmCliError("the stack has no dockerHost output (ssh://user@host): run pulumi up on it")
    return parts.username or outputs.get("sshUser") or "root", parts.hostname, parts.port or 22


def client_files(directory: Path, outputs: dict, identity: str | None) -> tuple[Path, Path]:
    """The key and known_hosts files ssh needs, root-only in `directory`."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    known = directory / "known_hosts"
    if not outputs.get("sshKnownHosts"):
        raise SwarmCliError("the stack has no sshKnownHosts output: run pulumi up on it (host keys are checked)")
    _write_private(known, outputs["sshKnownHosts"])
    if identity:
        return Path(identity), known
    if not outputs.get("sshPrivateKey"):
        raise SwarmCliError("the stack exports no sshPrivateKey (it uses your own key): pass --identity FILE")
    key = directory / "id"
    _write_private(key, outputs["sshPrivateKey"])
    return key, known


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")


def ssh_options(key: Path, known: Path) -> list[str]:
    return ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=15"]  # fmt: skip


# --- status -------------------------------------------------------------------------------


def parse_sections(text: str) -> dict[str, object]:
    """collect.sh's output: each section one JSON document, or one JSON value per line."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None and line.strip():
            current.append(line)
    parsed: dict[str, object] = {}
    for name, lines in sections.items():
        try:
            parsed[name] = json.loads("\n".join(lines))
        except json.JSONDecodeError:
            parsed[name] = [json.loads(line) for line in lines]
    return parsed


def collect(outputs: dict, identity: str | None = None) -> dict[str, object]:
    user, host, port = leader_login(outputs)
    with tempfile.TemporaryDirectory(prefix="swarm-status-") as tmp:
        key, known = client_files(Path(tmp), outputs, identity)
        command = ["ssh", "-p", str(port), *ssh_options(key, known), f"{user}@{host}", "sudo bash -s"]
        done = subprocess.run(
            command, input=COLLECT.read_text(), capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False
        )
    if done.returncode != 0:
        said = done.stderr.strip()[-800:] or f"no message; its output ended: {done.stdout.strip()[-300:]}"
        raise SwarmCliError(f"collecting from the leader {host} failed (exit {done.returncode}): {said}")
    return parse_sections(done.stdout)


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def summarize(stack: str, outputs: dict, raw: dict[str, object], now: dt.datetime | None = None) -> dict:
    """The view, as plain data (`--json`): what the terminal and the page show."""
    now = now or dt.datetime.now(dt.UTC)
    zones = {n.get("name"): n.get("availabilityZone", "") for n in outputs.get("nodes", [])}
    nodes = []
    for node in _as_list(raw.get("nodes")):
        name = node.get("Description", {}).get("Hostname", "?")
        manager = node.get("ManagerStatus") or {}
        nodes.append(
            {
                "name": name,
                "role": node.get("Spec", {}).get("Role", "?"),
                "leader": bool(manager.get("Leader")),
                "reachability": manager.get("Reachability", ""),
                "availability": node.get("Spec", {}).get("Availability", "?"),
                "state": node.get("Status", {}).get("State", "?"),
                "engine": node.get("Description", {}).get("Engine", {}).get("EngineVersion", "?"),
                "address": node.get("Status", {}).get("Addr", ""),
                "zone": zones.get(name, ""),
            }
        )
    nodes.sort(key=lambda n: (n["role"] != "manager", n["name"]))
    # Every published port, ingress or host mode (`docker service ls` shows only the former).
    published = {
        entry.get("name"): ", ".join(
            f"{p.get('PublishedPort')}->{p.get('TargetPort')}/{p.get('Protocol', 'tcp')} ({p.get('PublishMode', '')})"
            for p in entry.get("ports") or []
        )
        for entry in _as_list(raw.get("ports"))
    }
    services = []
    for svc in _as_list(raw.get("services")):
        match = re.match(r"(\d+)/(\d+)", svc.get("Replicas", ""))
        running, desired = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        services.append(
            {
                "name": svc.get("Name", "?"),
                "mode": svc.get("Mode", "?"),
                "running": running,
                "desired": desired,
                "image": svc.get("Image", ""),
                "ports": published.get(svc.get("Name"), svc.get("Ports", "")),
            }
        )
    latest = raw.get("latest") if isinstance(raw.get("latest"), dict) else None
    backups = []
    for obj in _as_list(raw.get("backups")):
        key = obj.get("key", "").removeprefix(outputs.get("statePrefix", ""))
        if not key.endswith(".tar.gz"):
            continue
        modified = dt.datetime.fromisoformat(obj["modified"].replace("Z", "+00:00"))
        backups.append(
            {
                "key": key,
                "bytes": obj.get("size", 0),
                "modified": modified.strftime("%Y-%m-%d %H:%M UTC"),
                "ageHours": round((now - modified).total_seconds() / 3600, 1),
                "latest": bool(latest and latest.get("key") == key),
            }
        )
    backups.sort(key=lambda b: b["key"], reverse=True)
    if latest:
        latest = {**latest, "verified": bool(latest.get("matchesPointer") and latest.get("matchesSidecar"))}
    swarm = raw.get("swarm") if isinstance(raw.get("swarm"), dict) else {}
    return {
        "stack": stack,
        "collectedAt": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "leaderAddress": outputs.get("leaderAddress", ""),
        "clusterId": (swarm.get("Cluster") or {}).get("ID", ""),
        "bootstrapResult": outputs.get("bootstrapResult", ""),
        "nodes": nodes,
        "services": services,
        "backups": backups[:5],
        "backupCount": len(backups),
        "latestBackup": latest,
        "mirror": raw.get("mirror") if isinstance(raw.get("mirror"), dict) else None,
    }


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover


def render(view: dict, console) -> None:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table

    mirror = view["mirror"]
    cache = f"{_size(mirror['bytes'])} in {mirror['objects']} objects" if mirror else "not in S3 (or off)"
    head = Table.grid(padding=(0, 2))
    head.add_row("[bold]leader[/]", view["leaderAddress"], "[bold]cluster[/]", view["clusterId"][:12])
    head.add_row("[bold]this morning[/]", view["bootstrapResult"] or "?", "[bold]mirror cache[/]", cache)
    console.print(Panel(head, title=f"swarm [bold]{view['stack']}[/]", subtitle=view["collectedAt"], box=box.ROUNDED))

    nodes = Table(title="Nodes", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("node", "role", "state", "availability", "engine", "zone", "address"):
        nodes.add_column(column)
    for n in view["nodes"]:
        role = "manager ★ leader" if n["leader"] else n["role"]
        state = f"[green]{n['state']}[/]" if n["state"] == "ready" else f"[red]{n['state']}[/]"
        nodes.add_row(n["name"], role, state, n["availability"], n["engine"], n["zone"], n["address"])
    console.print(nodes)

    services = Table(title="Services", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("service", "mode", "replicas", "image", "ports"):
        services.add_column(column)
    for s in view["services"]:
        colour = "green" if s["running"] == s["desired"] else "yellow"
        services.add_row(s["name"], s["mode"], f"[{colour}]{s['running']}/{s['desired']}[/]", s["image"], s["ports"])
    if not view["services"]:
        services.add_row("(none)", "", "", "", "")
    console.print(services)

    backups = Table(title=f"Backups ({view['backupCount']}, newest first)", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("backup", "taken", "age", "size", ""):
        backups.add_column(column)
    latest = view["latestBackup"]
    for b in view["backups"]:
        mark = ""
        if b["latest"] and latest:
            checks = "sha256 ✓" if latest["verified"] else "[red]sha256 ✗[/]"
            signature = {"ok": "signature ✓", "mismatch": "[red]signature ✗[/]"}.get(latest["signature"], "unsigned")
            mark = f"latest · {checks} · {signature}"
        backups.add_row(b["key"], b["modified"], f"{b['ageHours']:g} h", _size(b["bytes"]), mark)
    if not view["backups"]:
        backups.add_row("(none yet: the first night makes one)", "", "", "", "")
    console.print(backups)


def console():
    """A terminal's own width; 140 columns into a pipe or a log (rich would take 80)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=140)


def write_html(view: dict, path: str) -> None:
    from rich.console import Console

    console = Console(record=True, width=130, file=open(os.devnull, "w"))
    render(view, console)
    console.save_html(path, inline_styles=True, clear=True)


# --- context ------------------------------------------------------------------------------


INCLUDE = "Include ~/.swarm/*/ssh_config"


def make_context(stack: str, outputs: dict, name: str | None, identity: str | None, home: Path) -> str:
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", stack).strip("-")
    directory = home / ".swarm" / safe
    key, known = client_files(directory, outputs, identity)
    user, host, port = leader_login(outputs)
    alias = f"swarm-{safe}"
    (directory / "ssh_config").write_text(
        f"Host {alias}\n  HostName {host}\n  User {user}\n  Port {port}\n  IdentityFile {key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
    )
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    config = ssh_dir / "config"
    existing = config.read_text() if config.exists() else ""
    if INCLUDE not in existing.splitlines():
        # First in the file: an Include after a Host block would belong to that block.
        _write_private(config, f"{INCLUDE}\n{existing}")
    context = name or alias
    docker = shutil.which("docker")
    if docker is None:
        raise SwarmCliError("the docker CLI is not on PATH")
    present = subprocess.run([docker, "context", "inspect", context], capture_output=True, check=False).returncode
    verb = "update" if present == 0 else "create"
    done = subprocess.run(
        [docker, "context", verb, context, "--docker", f"host=ssh://{alias}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SwarmCliError(f"docker context {verb} {context} failed: {done.stderr.strip()}")
    return context


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/swarm", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["status", "context"])
    parser.add_argument("stack")
    parser.add_argument("--outputs", help="a file with the stack's outputs as JSON, instead of the Pulumi CLI")
    parser.add_argument("--identity", help="your SSH private key, when the stack uses your own key pair")
    parser.add_argument("--json", action="store_true", help="status: print the view as JSON")
    parser.add_argument("--html", metavar="FILE", help="status: write the view as one self-contained page")
    parser.add_argument("--name", help="context: its name (default swarm-<stack>)")
    args = parser.parse_args(argv)
    try:
        outputs = load_outputs(args.stack, args.outputs)
        if args.action == "context":
            context = make_context(args.stack, outputs, args.name, args.identity, Path.home())
            print(f"docker context {context}: docker --context {context} node ls")
            return 0
        view = summarize(args.stack, outputs, collect(outputs, args.identity))
        if args.json:
            print(json.dumps(view, indent=2))
        else:
            render(view, console())
        if args.html:
            write_html(view, args.html)
            print(f"wrote {args.html}", file=sys.stderr)
    except SwarmCliError as error:
        print(f"swarm: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
