"""swarmcli.logs (`scripts/swarm logs`) against an in-process CloudWatch Logs (moto): a
stack's group with streams of each kind (a task's container, a journal, an agent's verb),
read back as the operator does after the teardown, with the flags alone (no Pulumi CLI)
or with a stand-in Pulumi CLI answering the stack's config."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import boto3
import pytest
from harness import ROOT
from moto import mock_aws

from swarmcli import logs, main
from swarmcli.errors import UsageError

GROUP, REGION = "/swarm/swarm/dev", "eu-west-1"
M0, W1 = "swarm-dev-manager-0", "swarm-dev-worker-1"
# moto, as AWS, takes events of the last 14 days only: the day is built back from now.
NOW = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


def ms(hours_ago: float) -> int:
    return logs.millis(NOW - dt.timedelta(hours=hours_ago))


def put(client, stream: str, *events: tuple[float, str]) -> None:
    """Events (hours ago, message) in a stream, made if it is new."""
    try:
        client.create_log_stream(logGroupName=GROUP, logStreamName=stream)
    except client.exceptions.ResourceAlreadyExistsException:
        pass
    batch = sorted(({"timestamp": ms(h), "message": m} for h, m in events), key=lambda e: e["timestamp"])
    client.put_log_events(logGroupName=GROUP, logStreamName=stream, logEvents=batch)


@pytest.fixture
def cloud(monkeypatch):
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", REGION),
    ):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("PULUMI_STACK", raising=False)
    with mock_aws():
        client = boto3.client("logs", region_name=REGION)
        client.create_log_group(logGroupName=GROUP)
        yield client


@pytest.fixture
def day(cloud):
    """A day of a small stack: the web service on two nodes, a journal, the agent's verbs."""
    put(cloud, f"{W1}/containers/web.1.k2j3abc", (5, "GET / 200\n"), (1, "GET /health 200\n"))
    put(cloud, f"{M0}/containers/web.2.x9y8zzz", (4, "GET /login 200\n"))
    put(cloud, f"{W1}/containers/webapp.1.q1w2e3r", (3, "not the web service\n"))
    put(cloud, f"{M0}/journal", (6, "dockerd[812]: API listen on /run/docker.sock"), (2, "systemd[1]: Started x."))
    put(cloud, f"{M0}/agent/bootstrap", (7, "bootstrap: restoring backups/20261206T190000Z.tar.gz"))
    put(cloud, f"{M0}/agent/bootstrap", (6.5, "bootstrap: restore failed: sha256 mismatch"))
    put(cloud, f"{W1}/agent/join", (6.2, "join: joined as worker"))
    return cloud


def run(capsys, *argv: str) -> tuple[int, list[str], str]:
    """`scripts/swarm logs` with the flags that need no Pulumi CLI: (exit, stdout lines, stderr)."""
    code = main.main(["logs", "--group", GROUP, "--region", REGION, *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def streams_of(lines: list[str]) -> set[str]:
    return {line.split(" ", 2)[1] for line in lines}


# --- which streams ------------------------------------------------------------------------


def test_every_stream_by_default_merged_oldest_first(day, capsys):
    code, lines, err = run(capsys)
    assert code == 0
    assert [line.split(" ", 2)[2] for line in lines] == [
        "bootstrap: restoring backups/20261206T190000Z.tar.gz",
        "bootstrap: restore failed: sha256 mismatch",
        "join: joined as worker",
        "dockerd[812]: API listen on /run/docker.sock",
        "GET / 200",
        "GET /login 200",
        "not the web service",
        "systemd[1]: Started x.",
        "GET /health 200",
    ]  # across the streams, by time; each message without its trailing newline
    first = NOW - dt.timedelta(hours=7)
    assert (
        lines[0]
        == f"{first:%Y-%m-%dT%H:%M:%S}Z {M0}/agent/bootstrap bootstrap: restoring backups/20261206T190000Z.tar.gz"
    )
    assert f"{GROUP}: 6 of 6 streams (no filter), from " in err and "cut off" not in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--node", M0], {f"{M0}/containers/web.2.x9y8zzz", f"{M0}/journal", f"{M0}/agent/bootstrap"}),
        (["--service", "web"], {f"{W1}/containers/web.1.k2j3abc", f"{M0}/containers/web.2.x9y8zzz"}),
        (["--service", "webapp"], {f"{W1}/containers/webapp.1.q1w2e3r"}),
        (["--verb", "bootstrap"], {f"{M0}/agent/bootstrap"}),
        (["--journal"], {f"{M0}/journal"}),
        (["--node", W1, "--service", "web"], {f"{W1}/containers/web.1.k2j3abc"}),
        (["--node", W1, "--verb", "join"], {f"{W1}/agent/join"}),
    ],
)
def test_the_filters_pick_the_streams_and_and_together(day, capsys, flags, expected):
    code, lines, _ = run(capsys, *flags)
    assert code == 0 and streams_of(lines) == expected


def test_two_kinds_of_stream_at_once_is_a_usage_error(day, capsys):
    code, lines, err = run(capsys, "--service", "web", "--journal")
    assert code == 2 and not lines and "--service and --journal pick different streams" in err


def test_nothing_matched_says_so_with_the_filters_the_range_and_what_there_is(day, capsys):
    code, lines, err = run(capsys, "--service", "api")
    assert code == 0 and not lines
    assert f"nothing matched: no stream of {GROUP} matches --service api (its services: web, webapp)" in err
    code, lines, err = run(capsys, "--node", "swarm-dev-worker-9")
    assert code == 0 and not lines and f"(its nodes: {M0}, {W1})" in err
    code, lines, err = run(capsys, "--verb", "join", "--since", "1h")
    assert code == 0 and not lines
    assert "nothing matched: 1 stream(s) match --verb join, none has an event from " in err


def test_grep_is_a_literal_term(day, capsys):
    code, lines, _ = run(capsys, "--grep", "restore failed")
    assert code == 0 and [line.split(" ", 2)[2] for line in lines] == ["bootstrap: restore failed: sha256 mismatch"]
    code, lines, err = run(capsys, "--grep", 'say "hi"')
    assert code == 2 and "cannot search for a double quote" in err


# --- the time range -----------------------------------------------------------------------


def test_since_and_until_take_ages_and_iso_times():
    now = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
    assert logs.parse_when("30m", "--since", now) == dt.datetime(2026, 12, 7, 7, 30, tzinfo=dt.UTC)
    assert logs.parse_when("6h", "--since", now) == dt.datetime(2026, 12, 7, 2, 0, tzinfo=dt.UTC)
    assert logs.parse_when("2d", "--since", now) == dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)
    assert logs.parse_when("2026-12-07T06:00", "--since", now) == dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)
    assert logs.parse_when("2026-12-07T07:00+01:00", "--until", now) == dt.datetime(2026, 12, 7, 6, tzinfo=dt.UTC)
    assert logs.parse_when("2026-12-07T06:00:01.250Z", "--since", now).microsecond == 250_000
    assert logs.time_range(None, None, now) == (dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC), now)  # 24h


@pytest.mark.parametrize("bad", ["yesterday", "6 hours", "3w", "2026-13-01T00:00", "99999999999d"])
def test_a_bad_time_names_the_flag_and_the_forms(bad):
    now = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
    with pytest.raises(UsageError, match=r"--until .* is not a time: give an age \(30m, 6h, 2d.*ISO 8601"):
        logs.time_range(None, bad, now)
    with pytest.raises(UsageError, match="--since 2026-12-07T07:00:00Z is after --until 2026-12-07T06:00:00Z"):
        logs.time_range("1h", "2026-12-07T06:00", now)


def test_the_range_bounds_the_events(day, capsys):
    code, lines, _ = run(capsys, "--since", "150m")
    assert [line.split(" ", 2)[2] for line in lines] == ["systemd[1]: Started x.", "GET /health 200"]
    since, until = NOW - dt.timedelta(hours=6, minutes=30), NOW - dt.timedelta(hours=4)
    code, lines, _ = run(capsys, "--since", f"{since:%Y-%m-%dT%H:%M}", "--until", until.isoformat())
    assert code == 0 and [line.split(" ", 2)[2] for line in lines] == [
        "bootstrap: restore failed: sha256 mismatch",
        "join: joined as worker",
        "dockerd[812]: API listen on /run/docker.sock",
        "GET / 200",
        "GET /login 200",
    ]  # both ends included
    code, lines, err = run(capsys, "--since", "soon")
    assert code == 2 and "--since 'soon' is not a time" in err


# --- the bound, the JSON, the many streams ------------------------------------------------


def test_the_limit_keeps_the_oldest_and_says_where_to_go_on(day, capsys):
    code, lines, err = run(capsys, "--limit", "3")
    assert code == 0 and len(lines) == 3 and lines[-1].endswith("join: joined as worker")
    fourth = logs.iso(ms(6), precise=True)
    assert "cut off at --limit 3, oldest first: more events follow" in err and f"--since {fourth}" in err
    code, lines, err = run(capsys, "--since", fourth)
    assert lines[0].endswith("dockerd[812]: API listen on /run/docker.sock")
    code, lines, err = run(capsys, "--limit", "9")
    assert len(lines) == 9 and "cut off" not in err
    code, _, err = run(capsys, "--limit", "0")
    assert code == 2 and "--limit 0: give 1 or more events" in err


def test_json_is_one_object_a_line(day, capsys):
    code, lines, _ = run(capsys, "--json", "--node", W1)
    records = [json.loads(line) for line in lines]
    assert code == 0 and [(r["kind"], r["name"]) for r in records] == [
        ("agent", "join"),
        ("container", "web.1.k2j3abc"),
        ("container", "webapp.1.q1w2e3r"),
        ("container", "web.1.k2j3abc"),
    ]
    assert set(records[0]) == {"timestamp", "stream", "node", "kind", "name", "message"}
    assert records[1] == {
        "timestamp": logs.iso(ms(5), precise=True),
        "stream": f"{W1}/containers/web.1.k2j3abc",
        "node": W1,
        "kind": "container",
        "name": "web.1.k2j3abc",
        "message": "GET / 200",
    }
    (journal,) = [json.loads(line) for line in run(capsys, "--json", "--journal", "--since", "3h")[1]]
    assert (journal["kind"], journal["name"], journal["node"]) == ("journal", None, M0)


def test_more_than_100_streams_are_searched_100_at_a_time(cloud, capsys, monkeypatch):
    for i in range(150):
        put(cloud, f"swarm-dev-spot-i-{i:04d}/containers/web.{i}.task{i:04d}", (2 + i / 1000, f"line {i}"))
    put(cloud, f"{M0}/journal", (2, "not asked for"))
    asked = []
    made = logs.client_for

    def spying(where):
        client = made(where)
        client.meta.events.register(
            "provide-client-params.logs.FilterLogEvents",
            lambda params, **_: asked.append(len(params["logStreamNames"])),
        )
        return client

    monkeypatch.setattr(logs, "client_for", spying)
    code, lines, err = run(capsys, "--service", "web", "--limit", "500")
    assert code == 0 and asked == [100, 50] and "150 of 151 streams" in err
    assert [line.split(" ", 2)[2] for line in lines] == [f"line {i}" for i in reversed(range(150))]  # merged by time


def test_a_stream_quiet_since_before_the_range_is_not_searched():
    described = [
        {"logStreamName": "a/journal", "firstEventTimestamp": ms(80), "lastEventTimestamp": ms(72)},
        {"logStreamName": "b/journal", "firstEventTimestamp": ms(80), "lastEventTimestamp": ms(25)},  # an hour's lag
        {"logStreamName": "c/journal"},  # no event yet, or not yet counted
        {"logStreamName": "d/journal", "firstEventTimestamp": ms(-1), "lastEventTimestamp": ms(-2)},  # after --until
    ]
    chosen, searched = logs.pick(described, logs.Selection(journal=True), ms(24), ms(0))
    assert chosen == ["a/journal", "b/journal", "c/journal", "d/journal"] and searched == ["b/journal", "c/journal"]


# --- where the logs are, and the errors ---------------------------------------------------


def test_a_missing_group_names_it_its_region_and_endpoint_and_why(cloud, capsys):
    code = main.main(["logs", "--group", "/swarm/swarm/trust", "--region", REGION])
    err = capsys.readouterr().err
    assert code == 1
    assert "no log group /swarm/swarm/trust in eu-west-1 at AWS's own endpoint" in err
    assert "swarm:logs may be none, or it never ran a morning with logs on" in err


def test_no_credentials_says_how_to_give_them(monkeypatch, capsys, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "PULUMI_STACK"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(var, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    code = main.main(["logs", "--group", GROUP, "--region", REGION, "--endpoint", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1 and f"no AWS credentials to read {GROUP}" in err and "AWS_PROFILE" in err


def test_it_needs_a_stack_or_a_group_and_a_url_for_an_endpoint(monkeypatch, capsys):
    monkeypatch.delenv("PULUMI_STACK", raising=False)
    assert main.main(["logs"]) == 2
    assert "give --stack STACK (or set $PULUMI_STACK), or --group G (with --region R)" in capsys.readouterr().err
    assert main.main(["logs", "--group", GROUP, "--region", REGION, "--endpoint", "10.0.0.5:5000"]) == 2
    assert "--endpoint '10.0.0.5:5000' is not a URL: give http(s)://host:port" in capsys.readouterr().err


def stand_in_pulumi(tmp_path, monkeypatch, config: dict) -> object:
    """A `pulumi` on PATH that answers `config --json` (all a torn-down stack still answers)."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({k: {"value": v, "secret": False} for k, v in config.items()}))
    calls = tmp_path / "pulumi-calls"
    fake = tmp_path / "bin" / "pulumi"
    fake.write_text(f'#!/bin/sh\necho "$*" >>{calls}\n[ "$1 $2" = "config --json" ] && cat {tmp_path}/config.json\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return calls


def test_the_stack_s_config_says_where_unless_the_flags_do(tmp_path, monkeypatch):
    calls = stand_in_pulumi(tmp_path, monkeypatch, {"aws:region": "eu-central-1", "swarm:logsEndpoint": "http://x:1"})
    args = main.build_parser().parse_args(["logs", "organization/swarm/dev"])
    main.resolve(args)
    assert logs.where_of(args) == logs.Where("/swarm/swarm/dev", "eu-central-1", "http://x:1")
    assert "config --json --stack organization/swarm/dev --non-interactive" in calls.read_text()
    args = main.build_parser().parse_args(["logs", "dev", "--region", "us-east-1", "--endpoint", "http://y:2"])
    main.resolve(args)
    assert logs.where_of(args) == logs.Where("/swarm/swarm/dev", "us-east-1", "http://y:2")
    calls.unlink()
    args = main.build_parser().parse_args(["logs", "dev", "--group", "/g", "--region", "us-east-1"])
    main.resolve(args)
    assert logs.where_of(args) == logs.Where("/g", "us-east-1", None) and not calls.exists()  # no Pulumi CLI asked


def test_without_the_pulumi_cli_the_error_names_the_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main.main(["logs", "dev"]) == 1
    assert "the Pulumi CLI is not on PATH" in capsys.readouterr().err


def test_logs_help_runs_as_a_module(tmp_path):
    run = subprocess.run([sys.executable, "-m", "swarmcli", "logs", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert run.returncode == 0 and "scripts/swarm logs" in run.stdout and "--group G" in run.stdout, run.stderr
