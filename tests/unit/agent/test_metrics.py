"""The metrics the alarms read: one bounded put-metric-data, never a verb's failure; the
morning's and the night's outcome sent by bootstrap and backup whatever it was."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pytest
from node_fakes import write_env
from swarm_agent import backup, cli, metrics, paths, run
from test_backup import Bed, swarm_tar

NAMESPACE = "Swarm/swarm/dev"
ENDPOINT = "http://10.200.255.254:4566"


@pytest.fixture
def sent(fakes, monkeypatch):
    """Each put-metric-data's metrics as the aws call read them (the agent removes the file)."""
    write_env(SWARM_METRICS_NAMESPACE=NAMESPACE, SWARM_METRICS_ENDPOINT=ENDPOINT)
    documents: list[dict] = []
    real = run.call

    def spy(program, *args, **kwargs):
        if "--metric-data" in args:
            path = args[args.index("--metric-data") + 1][len("file://") :]
            mode = oct(os.stat(path).st_mode & 0o777)
            documents.append({"metrics": json.loads(Path(path).read_text()), "mode": mode, "env": kwargs["env"]})
        return real(program, *args, **kwargs)

    monkeypatch.setattr(run, "call", spy)
    return documents


def values(sent: list[dict]) -> list[dict[str, float]]:
    return [{m["MetricName"]: m["Value"] for m in document["metrics"]} for document in sent]


def test_one_call_sends_every_value_with_its_unit(fakes, sent):
    fakes.on("aws", "cloudwatch", "put-metric-data")
    node = metrics.env.load_any()
    assert metrics.publish(node, {"NodesDown": 2, "BackupAgeHours": 13.5})
    assert sent[0]["metrics"] == [
        {"MetricName": "NodesDown", "Value": 2.0, "Unit": "Count"},
        {"MetricName": "BackupAgeHours", "Value": 13.5, "Unit": "None"},
    ]
    assert sent[0]["mode"] == "0o600" and "AWS_SHARED_CREDENTIALS_FILE" not in sent[0]["env"]
    argv = fakes.argvs("aws")[0]
    assert argv[:4] == ["cloudwatch", "put-metric-data", "--namespace", NAMESPACE]
    assert argv[4] == "--metric-data" and argv[5].startswith("file://")
    assert argv[6:] == ["--region", "eu-west-1", "--endpoint-url", ENDPOINT]
    assert list(Path(paths.WORK_DIR).iterdir()) == []


def test_a_host_s_logs_only_key_sends_the_metrics(fakes, sent):
    Path(paths.LOGS_CREDS_FILE).write_text("[default]\n")
    Path(paths.CREDS_FILE).write_text("[default]\n")  # the S3 keys: not for CloudWatch
    fakes.on("aws", "cloudwatch", "put-metric-data")
    assert metrics.report({"QuorumLost": 0})
    assert sent[0]["env"]["AWS_SHARED_CREDENTIALS_FILE"] == paths.LOGS_CREDS_FILE


def test_a_failure_is_a_note_that_says_where_and_what_aws_said(fakes, sent, capsys):
    fakes.on("aws", "cloudwatch", rc=254, stderr="An error occurred (AccessDenied) when calling PutMetricData\n")
    assert not metrics.report({"BackupFailed": 0})
    err = capsys.readouterr().err
    assert err == f"metrics: BackupFailed not sent to {NAMESPACE} at {ENDPOINT}: " + (
        "An error occurred (AccessDenied) when calling PutMetricData\n"
    )


def test_without_a_namespace_nothing_is_sent(fakes, capsys):
    assert not metrics.report({"BackupFailed": 1})
    assert fakes.calls() == [] and capsys.readouterr() == ("", "")


# -- who sends them ----------------------------------------------------------------------
def test_a_morning_that_works_sends_how_long_the_machine_took(fakes, sent, capsys):
    # From user-data's start, not /proc/uptime (in a container that is the host's).
    Path(paths.PROC, "uptime").write_text("999999.00 1500.20\n")
    Path(paths.USER_DATA_STARTED).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.USER_DATA_STARTED).write_text(f"{int(time.time()) - 412}\n")
    fakes.docker_up()
    fakes.swarm()
    fakes.on("aws", "cloudwatch", "put-metric-data")
    assert cli.main(["bootstrap"]) == 0
    [sent_values] = values(sent)
    assert sent_values["MorningFailed"] == 0 and 411 <= sent_values["MorningSeconds"] <= 420
    assert sent[0]["metrics"][1]["Unit"] == "Seconds"
    out = capsys.readouterr().out.splitlines()  # stdout: the contract line alone, as before
    assert len(out) == 1 and json.loads(out[0])["kind"] == "swarm-bootstrap"


def test_a_morning_that_fails_says_so_and_fails_as_before(fakes, sent, capsys):
    fakes.docker_up()
    fakes.swarm(state="locked")
    fakes.on("aws", "cloudwatch", "put-metric-data")
    assert cli.main(["bootstrap"]) == 1
    assert values(sent) == [{"MorningFailed": 1}]
    assert capsys.readouterr().err.startswith("swarm-node: bootstrap: the swarm on this node is locked")


def test_a_morning_whose_metric_is_refused_still_works(fakes, sent, capsys):
    fakes.docker_up()
    fakes.swarm()
    fakes.on("aws", "cloudwatch", rc=255, stderr="Could not connect to the endpoint URL\n")
    assert cli.main(["bootstrap"]) == 0
    assert "metrics: MorningFailed not sent" in capsys.readouterr().err


def test_a_night_s_backup_sends_its_outcome(fakes, sent, monkeypatch):
    bed = Bed(fakes, monkeypatch)
    tar = swarm_tar()
    bed.fake_tar(tar)
    bed.ready(read_back=tar)
    backup.backup(argparse.Namespace(stdout=False, keep=[]))
    assert values(sent) == [{"BackupFailed": 0}]


def test_a_night_without_a_backup_says_so(fakes, sent):
    fakes.docker_up()
    fakes.swarm(manager=False)
    fakes.on("aws", "cloudwatch", "put-metric-data")
    assert cli.main(["backup"]) == 1
    assert values(sent) == [{"BackupFailed": 1}]


def test_a_handover_with_nothing_to_hand_over_sends_nothing(fakes, sent, monkeypatch):
    from swarm_agent import nodes

    monkeypatch.setattr(nodes, "teardown_marked", lambda: True)
    Bed(fakes, monkeypatch).ready()
    backup.backup(argparse.Namespace(stdout=False, keep=[], handover=True))
    assert sent == []
    monkeypatch.setattr(nodes, "teardown_marked", lambda: False)
    monkeypatch.setattr(backup, "take_and_ship", lambda *a: (_ for _ in ()).throw(run.AgentError("upload failed")))
    with pytest.raises(run.AgentError, match="upload failed"):
        backup.backup(argparse.Namespace(stdout=False, keep=[], handover=True))
    assert values(sent) == [{"BackupFailed": 1}]  # a handover that backs up counts
