"""health-report: every manager says whether its swarm has a leader; the leader adds the
nodes Down and the backup's age; nothing from a worker, nothing that would wake a dockerd
a backup stopped, and nothing said from the timer unless something is wrong."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from pathlib import Path

import pytest
from node_fakes import write_env
from swarm_agent import cli, health, paths

NAMESPACE = "Swarm/swarm/dev"
LS = ["node", "ls", "--format", "{{.Self}} {{.ManagerStatus}} {{.Status}}"]
NOW = datetime.datetime(2026, 12, 1, 9, 30, 0, tzinfo=datetime.timezone.utc)  # noqa: UP017 - the agent's 3.9
LATEST = {"Contents": [{"Key": "swarm/dev/backups/latest", "LastModified": "2026-11-30T19:00:00+00:00"}]}


@pytest.fixture
def manager(fakes, monkeypatch):
    """A manager with dockerd running (a dockerd in /proc, no systemd) and metrics on."""
    write_env(SWARM_METRICS_NAMESPACE=NAMESPACE)
    (Path(paths.PROC) / "4242").mkdir()
    (Path(paths.PROC) / "4242" / "comm").write_text("dockerd\n")
    monkeypatch.setattr(health, "_utc", lambda: NOW)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    fakes.docker_up()
    fakes.swarm()
    fakes.on("aws", "cloudwatch", "put-metric-data")
    return fakes


def sent(fakes) -> list[list[str]]:
    """The metrics of each put-metric-data (their file is gone: read from the argv's order)."""
    return [a for a in fakes.argvs("aws") if a[:2] == ["cloudwatch", "put-metric-data"]]


def published(fakes, monkeypatch) -> list[dict]:
    found: list[dict] = []
    monkeypatch.setattr(health.metrics, "publish", lambda node, values: found.append(dict(values)) or True)
    return found


def test_a_manager_whose_swarm_has_no_leader_reports_the_quorum_lost(manager, monkeypatch, capsys):
    found = published(manager, monkeypatch)
    manager.on("docker", *LS, rc=1, stderr="Error response from daemon: The swarm does not have a leader.\n")
    monkeypatch.setenv("INVOCATION_ID", "0123")  # from the timer: said, since it is wrong
    assert cli.main(["health-report"]) == 0
    assert found == [{"QuorumLost": 1}]
    out = capsys.readouterr().out
    assert "no leader" in out and "does not have a leader" in out and "QuorumLost=1 sent to" in out
    assert manager.calls("aws") == []  # no backup age without a leader


def test_a_follower_reports_only_the_quorum(manager, monkeypatch, capsys):
    found = published(manager, monkeypatch)
    manager.on("docker", *LS, stdout="true Reachable Ready\nfalse Leader Ready\nfalse  Down\n")
    assert cli.main(["health-report"]) == 0
    assert found == [{"QuorumLost": 0}]
    assert capsys.readouterr().out == f"health-report: QuorumLost=0 sent to {NAMESPACE}\n"  # by hand: said


def test_the_leader_reports_the_nodes_down_and_the_backup_s_age_every_15_minutes(manager, monkeypatch, capsys):
    found = published(manager, monkeypatch)
    manager.on(
        "docker", *LS, stdout="true Leader Ready\nfalse Reachable Ready\nfalse  Down\nfalse  Ready\nfalse  Down\n"
    )
    manager.on("aws", "--region", "eu-west-1", "s3api", "list-objects-v2", stdout=json.dumps(LATEST))
    assert cli.main(["health-report"]) == 0
    assert found == [{"QuorumLost": 0, "NodesDown": 2, "BackupAgeHours": 14.5}]
    assert manager.argvs("aws") == [["--region", "eu-west-1", "s3api", "list-objects-v2", "--bucket", "state-bucket",
                                     "--prefix", "swarm/dev/backups/latest", "--output", "json"]]  # fmt: skip
    assert "NodesDown=2" in capsys.readouterr().out
    # A minute later: no S3 call; 15 minutes after the look, one again.
    manager.clock.now += 60
    assert cli.main(["health-report"]) == 0
    assert found[-1] == {"QuorumLost": 0, "NodesDown": 2} and len(manager.argvs("aws")) == 1
    manager.clock.now += health.BACKUP_EVERY
    assert cli.main(["health-report"]) == 0
    assert "BackupAgeHours" in found[-1] and len(manager.argvs("aws")) == 2


def test_before_the_first_backup_there_is_no_age(manager, monkeypatch):
    found = published(manager, monkeypatch)
    write_env(SWARM_METRICS_NAMESPACE=NAMESPACE, SWARM_S3_ENDPOINT="http://10.200.255.254:9000")
    manager.on("docker", *LS, stdout="true Leader Ready\n")
    manager.on("aws", stdout="{}")
    assert cli.main(["health-report"]) == 0
    assert found == [{"QuorumLost": 0, "NodesDown": 0}]
    assert manager.argvs("aws")[0][2:4] == ["--endpoint-url", "http://10.200.255.254:9000"]


def test_a_store_that_does_not_answer_is_a_note_and_the_rest_is_sent(manager, monkeypatch, capsys):
    found = published(manager, monkeypatch)
    manager.on("docker", *LS, stdout="true Leader Ready\n")
    manager.on("aws", rc=255, stderr="An error occurred (AccessDenied) when calling ListObjectsV2\n")
    assert cli.main(["health-report"]) == 0
    assert found == [{"QuorumLost": 0, "NodesDown": 0}]
    assert "cannot list s3://state-bucket/swarm/dev/backups/latest: An error occurred" in capsys.readouterr().err


def test_the_metrics_really_go_to_cloudwatch(manager):
    manager.on("docker", *LS, stdout="true Reachable Ready\n")
    assert cli.main(["health-report"]) == 0
    assert sent(manager)[0][:4] == ["cloudwatch", "put-metric-data", "--namespace", NAMESPACE]


def test_from_the_timer_a_healthy_swarm_says_nothing(manager, monkeypatch, capsys):
    monkeypatch.setenv("INVOCATION_ID", "0123")
    manager.on("docker", *LS, stdout="true Leader Ready\nfalse  Ready\n")
    manager.on("aws", "--region", "eu-west-1", "s3api", stdout=json.dumps(LATEST))
    assert cli.main(["health-report"]) == 0
    assert capsys.readouterr() == ("", "") and len(sent(manager)) == 1


def test_a_worker_and_a_stack_without_metrics_report_nothing(manager, capsys):
    write_env(SWARM_ROLE="worker", SWARM_METRICS_NAMESPACE=NAMESPACE)
    assert cli.main(["health-report"]) == 0
    assert manager.calls() == [] and "a worker" in capsys.readouterr().out
    write_env()
    assert cli.main(["health-report"]) == 0
    assert manager.calls() == [] and "off (SWARM_METRICS_NAMESPACE is empty)" in capsys.readouterr().out


def test_a_stopped_dockerd_is_left_stopped(manager, capsys):
    os.remove(Path(paths.PROC) / "4242" / "comm")
    assert cli.main(["health-report"]) == 0
    assert manager.calls() == [] and "not running" in capsys.readouterr().out


def test_under_systemd_a_listening_socket_alone_is_a_stopped_dockerd(manager, capsys):
    os.makedirs(paths.SYSTEMD_RUN)
    manager.on("systemctl", "show", "-P", "LoadState", stdout="loaded\n")
    manager.on("systemctl", "is-active", "--quiet", "docker.socket")
    manager.on("systemctl", "is-active", "--quiet", "docker.service", rc=3)
    assert cli.main(["health-report"]) == 0
    assert manager.calls("docker") == [] and manager.calls("aws") == []


def test_while_a_backup_holds_the_node_s_lock_nothing_is_reported(manager, capsys):
    with open(paths.NODE_LOCK, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert cli.main(["health-report"]) == 0
    assert manager.calls() == [] and manager.clock.slept == 0
    assert "not now" in capsys.readouterr().out


def test_a_swarm_not_yet_made_reports_nothing(manager, capsys):
    manager.rules.clear()
    manager.docker_up()
    manager.swarm(state="inactive", manager=False)
    assert cli.main(["health-report"]) == 0
    assert [a[:1] for a in manager.argvs("docker")] == [["info"]] and manager.calls("aws") == []
