"""`scripts/swarm status`: what a stack's swarm is doing, read on its leader.

It connects to the leader over SSH (the stack's key, its host keys checked strictly
against `sshKnownHosts`), runs `scripts/status/collect.sh` there (read-only, every call
bounded) and shows the nodes (role, leader, availability, engine, zone), the services
(running/desired replicas, image, published ports), the last backups (age, size, the
latest's checksum and signature verified), what this morning's bootstrap did and what the
mirror's cache holds. `--json` prints the same view for scripts; `--html FILE` writes it
as one self-contained page. It changes nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from swarmcli import ROOT
from swarmcli.errors import SwarmCliError
from swarmcli.leader import client_files, leader_login, ssh_options
from swarmcli.outputs import load_outputs

COLLECT = ROOT / "scripts" / "status" / "collect.sh"
SSH_TIMEOUT = 180  # seconds for the whole collection on the leader


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
        try:
            done = subprocess.run(
                command, input=COLLECT.read_text(), capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise SwarmCliError(f"collecting from the leader {host} took over {SSH_TIMEOUT} s") from error
    if done.returncode != 0:
        said = done.stderr.strip()[-800:] or f"no message; its output ended: {done.stdout.strip()[-300:]}"
        raise SwarmCliError(f"collecting from the leader {host} failed (exit {done.returncode}): {said}")
    return parse_sections(done.stdout)


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _nodes(outputs: dict, raw: dict[str, object]) -> list[dict]:
    zones = {n.get("name"): n.get("availabilityZone", "") for n in outputs.get("nodes", [])}
    volumes = {v.get("node"): v.get("volumeId", "") for v in outputs.get("dataVolumes") or []}
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
                "data": _data(node.get("Spec", {}).get("Labels") or {}, volumes.get(name, "")),
            }
        )
    return sorted(nodes, key=lambda n: (n["role"] != "manager", n["name"]))


def _data(labels: dict, volume_id: str) -> str:
    """What the swarm says lives on the node (its swarm.data label), and the volume the stack gave it."""
    name = str(labels.get("swarm.data", ""))
    return f"{name} ({volume_id})" if name and volume_id else name


def _services(raw: dict[str, object]) -> list[dict]:
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
    return services


def _backups(outputs: dict, raw: dict[str, object], latest: dict | None, now: dt.datetime) -> list[dict]:
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
    return sorted(backups, key=lambda b: b["key"], reverse=True)


def summarize(stack: str, outputs: dict, raw: dict[str, object], now: dt.datetime | None = None) -> dict:
    """The view, as plain data (`--json`): what the terminal and the page show."""
    now = now or dt.datetime.now(dt.UTC)
    latest = raw.get("latest") if isinstance(raw.get("latest"), dict) else None
    backups = _backups(outputs, raw, latest, now)
    if latest:
        latest = {**latest, "verified": bool(latest.get("matchesPointer") and latest.get("matchesSidecar"))}
    swarm = raw.get("swarm") if isinstance(raw.get("swarm"), dict) else {}
    return {
        "stack": stack,
        "collectedAt": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "leaderAddress": outputs.get("leaderAddress", ""),
        "clusterId": (swarm.get("Cluster") or {}).get("ID", ""),
        "bootstrapResult": outputs.get("bootstrapResult", ""),
        "nodes": _nodes(outputs, raw),
        "services": _services(raw),
        "backups": backups[:5],
        "backupCount": len(backups),
        "latestBackup": latest,
        "mirror": raw.get("mirror") if isinstance(raw.get("mirror"), dict) else None,
        "image": _image(outputs),
        # The leader's last ECR refresh: {at, ok, said}, or None before its first.
        "registryAuth": raw.get("registry-auth") if isinstance(raw.get("registry-auth"), dict) else None,
        "groups": _groups(raw),
    }


def _groups(raw: dict[str, object]) -> dict | None:
    """The leader's watcher's last pass (every 10 s): {at, ok, said, groups: [{name, desired,
    in_service, joining, draining, spot, on_demand, ...}]}, or None on a stack without groups."""
    record = raw.get("groups")
    if not isinstance(record, dict):
        return None
    groups = [g for g in record.get("groups") or [] if isinstance(g, dict)]
    return {"at": record.get("at", ""), "ok": bool(record.get("ok")), "said": record.get("said", ""), "groups": groups}


def _image(outputs: dict) -> dict:
    """The AMI new machines boot (the stack's pin) and whether SSM has a newer one."""
    pinned, newest = outputs.get("amiId", ""), outputs.get("amiNewest", "")
    return {"ami": pinned, "newest": newest, "newerExists": bool(pinned and newest and newest != pinned)}


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover


def _table(title: str, columns: tuple[str, ...]):
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


def _render_head(view: dict, console) -> None:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table

    mirror = view["mirror"]
    cache = f"{_size(mirror['bytes'])} in {mirror['objects']} objects" if mirror else "not in S3 (or off)"
    head = Table.grid(padding=(0, 2))
    head.add_row("[bold]leader[/]", view["leaderAddress"], "[bold]cluster[/]", view["clusterId"][:12])
    head.add_row("[bold]this morning[/]", view["bootstrapResult"] or "?", "[bold]mirror cache[/]", cache)
    image = view["image"]
    if image["ami"]:
        newer = f"  [yellow]newer: {image['newest']} (scripts/swarm adopt-ami)[/]" if image["newerExists"] else ""
        head.add_row("[bold]machine image[/]", f"{image['ami']}{newer}", "", "")
    refresh = view["registryAuth"]
    if refresh:
        colour = "green" if refresh["ok"] else "red"
        head.add_row("[bold]ECR refresh[/]", f"[{colour}]{refresh['said']}[/] ({refresh['at']})", "", "")
    console.print(Panel(head, title=f"swarm [bold]{view['stack']}[/]", subtitle=view["collectedAt"], box=box.ROUNDED))


def _render_backups(view: dict, console) -> None:
    backups = _table(f"Backups ({view['backupCount']}, newest first)", ("backup", "taken", "age", "size", ""))
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


def _render_groups(view: dict, console) -> None:
    record = view.get("groups")
    if not record:
        return
    columns = ("group", "desired", "in service", "joining", "draining", "spot", "on-demand")
    groups = _table(f"Worker groups (the watcher at {record['at']})", columns)
    for g in record["groups"]:
        short = g.get("in_service", 0) < g.get("desired", 0)
        in_service = f"[{'yellow' if short else 'green'}]{g.get('in_service', 0)}[/]"
        groups.add_row(
            g.get("name", "?"), str(g.get("desired", "?")), in_service, str(g.get("joining", 0)),
            str(g.get("draining", 0)), str(g.get("spot", 0)), str(g.get("on_demand", 0)),
        )  # fmt: skip
    if not record["ok"]:
        groups.add_row(f"[red]{record['said']}[/]", "", "", "", "", "", "")
    console.print(groups)


def render(view: dict, console) -> None:
    _render_head(view, console)
    nodes = _table("Nodes", ("node", "role", "state", "availability", "engine", "zone", "address", "data"))
    for n in view["nodes"]:
        role = "manager ★ leader" if n["leader"] else n["role"]
        state = f"[green]{n['state']}[/]" if n["state"] == "ready" else f"[red]{n['state']}[/]"
        nodes.add_row(n["name"], role, state, n["availability"], n["engine"], n["zone"], n["address"], n["data"])
    console.print(nodes)
    _render_groups(view, console)
    services = _table("Services", ("service", "mode", "replicas", "image", "ports"))
    for s in view["services"]:
        colour = "green" if s["running"] == s["desired"] else "yellow"
        services.add_row(s["name"], s["mode"], f"[{colour}]{s['running']}/{s['desired']}[/]", s["image"], s["ports"])
    if not view["services"]:
        services.add_row("(none)", "", "", "", "")
    console.print(services)
    _render_backups(view, console)


def console():
    """A terminal's own width; 140 columns into a pipe or a log (rich would take 80)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=140)


def write_html(view: dict, path: str) -> None:
    from rich.console import Console

    with open(os.devnull, "w") as sink:
        recorder = Console(record=True, width=130, file=sink)
        render(view, recorder)
        recorder.save_html(path, inline_styles=True, clear=True)


def command(args: argparse.Namespace) -> int:
    """The verb: the view on the terminal, as JSON (`--json`), and as a page (`--html`)."""
    outputs = load_outputs(args.stack, args.outputs)
    view = summarize(args.stack, outputs, collect(outputs, args.identity))
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        render(view, console())
    if args.html:
        write_html(view, args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
