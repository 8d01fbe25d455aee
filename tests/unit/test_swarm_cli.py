"""scripts/swarm (swarmcli): the status view from what the leader reports, the docker
context, and the command line itself: every verb's flags, examples and JSON, on this
machine (the bed runs status and context against a real swarm: tests/e2e/test_daily_cycle.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from harness import ROOT
from rich.console import Console

from swarmcli import context, main, status
from swarmcli.errors import SwarmCliError

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
    "dataVolumes": [{"name": "pg", "node": "swarm-dev-worker-0", "volumeId": "vol-0a1b2c3d4e5f60718"}],
}
NOW = dt.datetime(2026, 11, 26, 7, 0, tzinfo=dt.UTC)


def node(name: str, role: str, leader: bool = False, state: str = "ready", labels: dict | None = None) -> str:
    return json.dumps({
        "Description": {"Hostname": name, "Engine": {"EngineVersion": "26.1.5"}},
        "Spec": {"Role": role, "Availability": "active", "Labels": labels or {}},
        "Status": {"State": state, "Addr": "10.42.0.10"},
        "ManagerStatus": {"Leader": leader, "Reachability": "reachable"} if role == "manager" else None,
    })  # fmt: skip


COLLECTED = "\n".join([
    "== swarm", json.dumps({"Cluster": {"ID": "abcdef1234567890"}}),
    "== nodes", node("swarm-dev-worker-0", "worker", state="down", labels={"swarm.data": "pg"}),
    node("swarm-dev-manager-0", "manager", True),
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
    "== registry-auth",
    json.dumps({"at": "2026-11-26 06:04:11 UTC", "ok": True,
                "said": "registry-auth: 2 of 2 services on 123456789012.dkr.ecr.eu-west-1.amazonaws.com "
                        "have fresh credentials"}),
    "== groups",
    json.dumps({"at": "2026-11-26 06:10:01 UTC", "ok": True, "said": "groups-watch: 1 group",
                "groups": [{"name": "spot", "asg": "swarm-dev-spot", "desired": 5, "min": 0, "max": 8,
                            "in_service": 4, "joining": 1, "draining": 1, "spot": 2, "on_demand": 2}]}),
])  # fmt: skip


def test_the_view_says_what_the_leader_reported():
    view = status.summarize("dev", OUTPUTS, status.parse_sections(COLLECTED), now=NOW)
    assert [n["name"] for n in view["nodes"]] == ["swarm-dev-manager-0", "swarm-dev-worker-0"]
    manager = view["nodes"][0]
    assert manager["leader"] and manager["engine"] == "26.1.5" and manager["zone"] == "eu-west-1a"
    assert manager["data"] == "" and view["nodes"][1]["data"] == "pg (vol-0a1b2c3d4e5f60718)"
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
    (group,) = view["groups"]["groups"]
    assert (group["name"], group["desired"], group["in_service"], group["joining"], group["draining"]) == (
        "spot", 5, 4, 1, 1)  # fmt: skip
    assert status.summarize("dev", OUTPUTS, {}, now=NOW)["groups"] is None  # a stack without groups
    json.dumps(view)  # --json


def test_the_terminal_and_the_page_show_the_same_view(tmp_path):
    view = status.summarize("dev", OUTPUTS, status.parse_sections(COLLECTED), now=NOW)
    console = Console(record=True, width=140, file=open(os.devnull, "w"))
    status.render(view, console)
    text = console.export_text()
    for expected in ("swarm-dev-manager-0", "manager ★ leader", "down", "2/3", "nginx:1", "12 h", "8080->80/tcp",
                     "latest · sha256 ✓ · signature ✓", "5.0 MiB in 12 objects", "restored from backups/",
                     "ECR refresh", "2 of 2 services on", "(2026-11-26 06:04:11 UTC)",
                     "pg (vol-0a1b2c3d4e5f60718)",
                     "Worker groups (the watcher at 2026-11-26 06:10:01 UTC)"):  # fmt: skip
        assert expected in text, expected
    page = tmp_path / "status.html"
    status.write_html(view, str(page))
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "swarm-dev-manager-0" in html and "2/3" in html
    assert "<link" not in html and "<script" not in html  # self-contained


def test_a_failed_check_shows_red_not_green():
    collected = COLLECTED.replace('"matchesSidecar": true', '"matchesSidecar": false').replace('"ok"}', '"mismatch"}')
    view = status.summarize("dev", OUTPUTS, status.parse_sections(collected), now=NOW)
    console = Console(record=True, width=140, file=open(os.devnull, "w"))
    status.render(view, console)
    assert "latest · sha256 ✗ · signature ✗" in console.export_text()


def test_status_refuses_outputs_without_host_keys(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({k: v for k, v in OUTPUTS.items() if k != "sshKnownHosts"}))
    run = subprocess.run([sys.executable, "-m", "swarmcli", "status", "dev", "--outputs", str(outputs)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
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
        made = context.make_context("organization/swarm/dev", OUTPUTS, None, None, home)
        assert made == "swarm-organization-swarm-dev"
    config = (home / ".ssh" / "config").read_text()
    assert config.startswith(context.INCLUDE + "\n") and config.count("Include") == 1 and "Host old" in config
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
    with pytest.raises(SwarmCliError, match="--identity" if missing == "sshPrivateKey" else "dockerHost"):
        context.make_context("dev", outputs, None, None, tmp_path)


# --- the command line: one entry point, the same global flags, an example in every --help ---

VERB_PATHS = {
    *("status", "context", "backups list", "backups verify", "backups drill", "roll", "night", "morning"),
    *("release-addresses", "adopt-ami", "logs"),
}
POSITIONAL_STACK = ["status", "context", "roll", "night", "morning", "release-addresses", "adopt-ami"]


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every verb's own parser, by its command path (`backups verify`)."""
    found = {}

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[" ".join(path)] = parser
        for name, child in subs[0].choices.items() if subs else ():
            walk(child, [*path, name])

    walk(main.build_parser(), [])
    return found


def parsed(argv: list[str]) -> argparse.Namespace:
    args = main.build_parser().parse_args(argv)
    main.resolve(args)
    return args


def test_every_verb_s_help_has_an_example_that_parses():
    parsers = leaf_parsers()
    assert set(parsers) == VERB_PATHS
    for path, parser in parsers.items():
        text = parser.format_help()
        assert "examples:" in text and f"scripts/swarm {path}" in text, path
        examples = [line.strip() for line in parser.epilog.splitlines() if f"scripts/swarm {path}" in line]
        assert examples, path
        for example in examples:
            words = shlex.split(example.split("scripts/swarm ", 1)[1].split(" | ")[0].split(" && ")[0])
            assert main.build_parser().parse_args(words).command_path == path, example


def test_the_entry_point_runs_as_a_module_with_help_for_each_verb(tmp_path):
    for verb in ("--help", "night --help", "backups drill --help"):
        run = subprocess.run([sys.executable, "-m", "swarmcli", *verb.split()], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert run.returncode == 0 and "examples:" in run.stdout and "scripts/swarm" in run.stdout, run.stderr


@pytest.mark.parametrize("path", sorted(VERB_PATHS))
def test_the_global_flags_are_accepted_by_every_verb_before_or_after_it(path, monkeypatch):
    monkeypatch.delenv("PULUMI_STACK", raising=False)
    verb = path.split()
    for argv in ([*verb, "--stack", "dev", "--json"], ["--stack", "dev", "--json", *verb], ["-s", "dev", *verb]):
        args = parsed(argv)
        assert args.stack == "dev" and args.json == ("--json" in argv), argv
    assert parsed([*verb, "--stack", "dev"]).json is False


@pytest.mark.parametrize("verb", POSITIONAL_STACK)
def test_a_stack_given_first_still_works_and_two_stacks_are_refused(verb, monkeypatch, capsys):
    monkeypatch.delenv("PULUMI_STACK", raising=False)
    assert parsed([verb, "organization/swarm/dev"]).stack == "organization/swarm/dev"
    assert parsed([verb, "dev", "--stack", "dev"]).stack == "dev"
    assert main.main([verb, "dev", "--stack", "prod"]) == 2
    assert "two stacks given: dev and --stack prod" in capsys.readouterr().err


@pytest.mark.parametrize("verb", POSITIONAL_STACK)
def test_the_stack_defaults_to_pulumi_stack_or_the_error_names_the_flag(verb, monkeypatch, capsys):
    monkeypatch.setenv("PULUMI_STACK", "staging")
    assert parsed([verb]).stack == "staging"
    monkeypatch.delenv("PULUMI_STACK")
    assert main.main([verb]) == 2
    assert "no stack: pass --stack STACK (or set $PULUMI_STACK)" in capsys.readouterr().err


def test_backups_need_a_stack_or_a_bucket_and_prefix(monkeypatch, capsys):
    monkeypatch.delenv("PULUMI_STACK", raising=False)
    assert main.main(["backups", "list"]) == 2
    assert "give --stack STACK (or set $PULUMI_STACK), or --bucket B and --prefix P" in capsys.readouterr().err
    args = parsed(["backups", "verify", "backups/x.tar.gz", "--bucket", "b", "--prefix", "swarm/dev/"])
    assert args.stack is None and args.key == "backups/x.tar.gz"


def test_status_json_is_the_view(tmp_path, monkeypatch, capsys):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(OUTPUTS))
    monkeypatch.setattr(status, "collect", lambda outputs, identity=None: status.parse_sections(COLLECTED))
    page = tmp_path / "status.html"
    assert main.main(["status", "dev", "--outputs", str(outputs), "--json", "--html", str(page)]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["stack"] == "dev" and view["backupCount"] == 2 and view["latestBackup"]["verified"]
    assert set(view) >= {"nodes", "services", "backups", "mirror", "clusterId", "bootstrapResult", "collectedAt"}
    assert "swarm-dev-manager-0" in page.read_text()


def fake_docker(tmp_path, monkeypatch) -> None:
    (tmp_path / "bin").mkdir(exist_ok=True)
    fake = tmp_path / "bin" / "docker"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")


def test_context_json_names_the_context(tmp_path, monkeypatch, capsys):
    fake_docker(tmp_path, monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(OUTPUTS))
    assert main.main(["context", "--stack", "dev", "--outputs", str(outputs), "--json", "--name", "mine"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stack": "dev", "context": "mine", "leader": "198.51.100.10"}


def instance(name: str, role: str) -> dict:
    return {"type": "aws:ec2/instance:Instance", "urn": f"urn:pulumi:dev::swarm::aws:ec2/instance:Instance::{name}",
            "outputs": {"tags": {"Name": name, "swarm:role": role}}}  # fmt: skip


def stand_in_pulumi(tmp_path, monkeypatch, resources: list[dict]):
    """A `pulumi` on PATH that answers `stack export` with `resources` and records its argv."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "export.json").write_text(json.dumps({"deployment": {"resources": resources}}))
    calls = tmp_path / "pulumi-calls"
    fake = tmp_path / "bin" / "pulumi"
    answer = f'[ "$1 $2" = "stack export" ] && cat {tmp_path}/export.json'
    fake.write_text(f'#!/bin/sh\necho "$*" >>{calls}\n{answer}\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return calls


def test_roll_s_plan_as_json_is_workers_then_managers_manager_0_last(tmp_path, monkeypatch, capsys):
    names = [("swarm-dev-manager-0", "manager"), ("swarm-dev-worker-1", "worker"), ("swarm-dev-manager-2", "manager"),
             ("swarm-dev-worker-0", "worker"), ("swarm-dev-manager-1", "manager")]  # fmt: skip
    calls = stand_in_pulumi(tmp_path, monkeypatch, [instance(n, r) for n, r in names])
    assert main.main(["roll", "dev", "--dry-run", "--json"]) == 0
    out, err = capsys.readouterr()
    plan = json.loads(out)
    assert plan["stack"] == "dev" and set(plan["plan"][0]) == {"urn", "name", "role"}
    assert [m["name"] for m in plan["plan"]] == [
        "swarm-dev-worker-0", "swarm-dev-worker-1", "swarm-dev-manager-1", "swarm-dev-manager-2", "swarm-dev-manager-0"
    ]  # fmt: skip
    assert "reading the stack's machines: done in" in err  # the progress line, on stderr
    assert "stack export --stack dev --non-interactive" in calls.read_text()
    assert "up" not in calls.read_text().split()  # a plan replaces nothing
    assert main.main(["roll", "--stack", "dev", "--dry-run", "--only", "workers", "--json"]) == 0
    assert [m["role"] for m in json.loads(capsys.readouterr().out)["plan"]] == ["worker", "worker"]


def test_the_old_entry_points_are_aliases_of_the_verbs(tmp_path):
    (tmp_path / "scripts").mkdir()
    stand_in = tmp_path / "scripts" / "swarm"
    stand_in.write_text('#!/bin/sh\necho "swarm $*"\n')
    stand_in.chmod(0o755)
    for name in ("roll", "morning-up", "nightly-teardown"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    said = {}
    for argv in (["roll", "dev", "--dry-run"], ["morning-up", "dev"], ["nightly-teardown", "dev"]):
        run = subprocess.run([str(tmp_path / "scripts" / argv[0]), *argv[1:]], capture_output=True, text=True,
                             timeout=30, check=True)  # fmt: skip
        said[argv[0]] = run.stdout.strip()
    assert said == {"roll": "swarm roll dev --dry-run", "morning-up": "swarm morning --stack dev",
                    "nightly-teardown": "swarm night --stack dev"}  # fmt: skip
    run = subprocess.run([str(tmp_path / "scripts" / "morning-up")], capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and "usage: scripts/morning-up STACK" in run.stderr
