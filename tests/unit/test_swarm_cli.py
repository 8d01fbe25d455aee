"""scripts/swarm: the status view from what the leader reports, and the docker context, on
this machine (the bed runs both against a real swarm: tests/e2e/test_daily_cycle.py)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from harness import ROOT
from rich.console import Console

spec = importlib.util.spec_from_file_location("swarm_cli", ROOT / "scripts" / "swarm_cli.py")
cli = importlib.util.module_from_spec(spec)
sys.modules["swarm_cli"] = cli
spec.loader.exec_module(cli)

KNOWN = "198.51.100.10 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockHostKey\n"
OUTPUTS = {
    "dockerHost": "ssh://ec2-user@198.51.100.10",
    "sshUser": "ec2-user",
    "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nbW9jaw==\n-----END OPENSSH PRIVATE KEY-----\n",
    "sshKnownHosts": KNOWN,
    "leaderAddress": "10.42.0.10:2377",
    "bootstrapResult": "bootstrap: restored from backups/20261125T190000Z.tar.gz",
    "statePrefix": "swarm/dev/",
    "nodes": [{"name": "swarm-dev-manager-0", "availabilityZone": "eu-west-1a"}],
}
NOW = dt.datetime(2026, 11, 26, 7, 0, tzinfo=dt.UTC)


def node(name: str, role: str, leader: bool = False, state: str = "ready") -> str:
    return json.dumps({
        "Description": {"Hostname": name, "Engine": {"EngineVersion": "26.1.5"}},
        "Spec": {"Role": role, "Availability": "active"},
        "Status": {"State": state, "Addr": "10.42.0.10"},
        "ManagerStatus": {"Leader": leader, "Reachability": "reachable"} if role == "manager" else None,
    })  # fmt: skip


COLLECTED = "\n".join([
    "== swarm", json.dumps({"Cluster": {"ID": "abcdef1234567890"}}),
    "== nodes", node("swarm-dev-worker-0", "worker", state="down"), node("swarm-dev-manager-0", "manager", True),
    "== services",
    json.dumps({"Name": "web", "Mode": "replicated", "Replicas": "2/3", "Image": "nginx:1", "Ports": "*:8080->80/tcp"}),
    "== ports",
    '{"name":"web","ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"host"}]}',
    "== backups",
    json.dumps([
        {"key": "swarm/dev/backups/20261125T190000Z.tar.gz", "size": 2_500_000, "modified": "2026-11-25T19:00:00Z"},
        {"key": "swarm/dev/backups/20261125T190000Z.tar.gz.sha256", "size": 90, "modified": "2026-11-25T19:00:00Z"},
        {"key": "swarm/dev/backups/20261124T190000Z.tar.gz", "size": 2_400_000, "modified": "2026-11-24T19:00:00Z"},
    ], indent=4),
    "== latest",
    json.dumps({"key": "backups/20261125T190000Z.tar.gz", "sha256": "ab", "matchesPointer": True,
                "matchesSidecar": True, "signature": "ok"}),
    "== mirror", '{"objects":12,"bytes":5242880}',
])  # fmt: skip


def test_the_view_says_what_the_leader_reported():
    view = cli.summarize("dev", OUTPUTS, cli.parse_sections(COLLECTED), now=NOW)
    assert [n["name"] for n in view["nodes"]] == ["swarm-dev-manager-0", "swarm-dev-worker-0"]
    manager = view["nodes"][0]
    assert manager["leader"] and manager["engine"] == "26.1.5" and manager["zone"] == "eu-west-1a"
    assert view["services"] == [
        {
            "name": "web",
            "mode": "replicated",
            "running": 2,
            "desired": 3,
            "image": "nginx:1",
            "ports": "8080->80/tcp (host)",
        }
    ]
    assert [b["key"] for b in view["backups"]] == ["backups/20261125T190000Z.tar.gz", "backups/20261124T190000Z.tar.gz"]
    assert view["backups"][0]["latest"] and view["backups"][0]["ageHours"] == 12.0
    assert view["latestBackup"]["verified"] and view["mirror"] == {"objects": 12, "bytes": 5242880}
    assert view["clusterId"] == "abcdef1234567890"
    json.dumps(view)  # --json


def test_the_terminal_and_the_page_show_the_same_view(tmp_path):
    view = cli.summarize("dev", OUTPUTS, cli.parse_sections(COLLECTED), now=NOW)
    console = Console(record=True, width=140, file=open(os.devnull, "w"))
    cli.render(view, console)
    text = console.export_text()
    for expected in ("swarm-dev-manager-0", "manager ★ leader", "down", "2/3", "nginx:1", "12 h", "8080->80/tcp",
                     "latest · sha256 ✓ · signature ✓", "5.0 MiB in 12 objects", "restored from backups/"):  # fmt: skip
        assert expected in text, expected
    page = tmp_path / "status.html"
    cli.write_html(view, str(page))
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "swarm-dev-manager-0" in html and "2/3" in html
    assert "<link" not in html and "<script" not in html  # self-contained


def test_a_failed_check_shows_red_not_green():
    collected = COLLECTED.replace('"matchesSidecar": true', '"matchesSidecar": false').replace('"ok"}', '"mismatch"}')
    view = cli.summarize("dev", OUTPUTS, cli.parse_sections(collected), now=NOW)
    console = Console(record=True, width=140, file=open(os.devnull, "w"))
    cli.render(view, console)
    assert "latest · sha256 ✗ · signature ✗" in console.export_text()


def test_status_refuses_outputs_without_host_keys(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({k: v for k, v in OUTPUTS.items() if k != "sshKnownHosts"}))
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "swarm_cli.py"), "status", "dev",
                          "--outputs", str(outputs)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1 and "no sshKnownHosts output" in run.stderr


def test_a_context_checks_host_keys_strictly_and_is_made_once(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "docker-calls"
    fake = bin_dir / "docker"
    made = tmp_path / "made"
    fake.write_text(
        f'#!/bin/sh\necho "$*" >>{calls}\n'
        f'[ "$2" = inspect ] && {{ [ -e {made} ] && exit 0 || exit 1; }}\n'
        f'[ "$2" = create ] && touch {made}\nexit 0\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host old\n  User me\n")
    for _ in range(2):
        assert cli.make_context("organization/swarm/dev", OUTPUTS, None, None, home) == "swarm-organization-swarm-dev"
    config = (home / ".ssh" / "config").read_text()
    assert config.startswith(cli.INCLUDE + "\n") and config.count("Include") == 1 and "Host old" in config
    directory = home / ".swarm" / "organization-swarm-dev"
    ssh_config = (directory / "ssh_config").read_text()
    assert "HostName 198.51.100.10" in ssh_config and "StrictHostKeyChecking yes" in ssh_config
    assert (directory / "known_hosts").read_text() == KNOWN
    assert oct((directory / "id").stat().st_mode & 0o777) == "0o600"
    made = calls.read_text().splitlines()
    assert "context create swarm-organization-swarm-dev --docker host=ssh://swarm-organization-swarm-dev" in made
    assert "context update swarm-organization-swarm-dev --docker host=ssh://swarm-organization-swarm-dev" in made


@pytest.mark.parametrize("missing", ["sshPrivateKey", "dockerHost"])
def test_context_names_what_is_missing(tmp_path, missing):
    outputs = {k: v for k, v in OUTPUTS.items() if k != missing}
    with pytest.raises(cli.SwarmCliError, match="--identity" if missing == "sshPrivateKey" else "dockerHost"):
        cli.make_context("dev", outputs, None, None, tmp_path)
