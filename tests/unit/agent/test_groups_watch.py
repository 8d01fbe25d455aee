"""groups-watch: the leader labels only the group nodes AWS backs, drains a node whose
instance AWS is taking away before it lets AWS go on (within the bound), removes only
down nodes whose instance is gone, and leaves a record for the status view. (Named apart
from tests/e2e/test_groups.py: pytest imports test modules by their basename.)"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from pathlib import Path

import pytest
from node_fakes import Fakes
from swarm_agent import cli, groups, install, paths
from swarm_agent.run import AgentError

SELF = "node0"
ASG, WEB_ASG = "swarm-dev-batch", "swarm-dev-web"
CONFIG = {
    "groups": [
        {"name": "batch", "asg": ASG, "hook": "swarm-drain", "labels": {"tier": "batch"}},
        {"name": "web", "asg": WEB_ASG, "hook": "swarm-drain", "labels": {}},
    ]
}
I1, I2, I3 = "i-0aaa1111bbbb2222c", "i-0123456789abcdef0", "i-0fff5555eeee6666d"
AGENT = Path(__file__).resolve().parents[3] / "agent"


def described(node_id, host, state="ready", role="worker", claim=None, labels=None, availability="active"):
    """One node as `docker node inspect` describes it; `claim` = (group, instance, capacity)."""
    engine = {}
    if claim:
        engine = dict(zip(("swarm.group", "swarm.instance", "swarm.capacity"), claim, strict=True))
    return {
        "ID": node_id,
        "Description": {"Hostname": host, "Engine": {"Labels": engine}},
        "Status": {"State": state, "Addr": "10.42.1.5"},
        "Spec": {"Role": role, "Labels": labels or {}, "Availability": availability},
    }


def backed_labels(group, instance, capacity="spot", **extra):
    return {"swarm.group": group, "swarm.instance": instance, "swarm.capacity": capacity, **extra}


def serve_nodes(fakes, table, times=None) -> None:
    lines = "".join(json.dumps({"ID": d["ID"]}) + "\n" for d in table)
    fakes.on("docker", "node", "ls", "--format", "{{json .}}", stdout=lines, times=times)
    fakes.on("docker", "node", "inspect", "self", stdout="true\n")
    fakes.on("docker", "node", "inspect", stdout=json.dumps(table), times=times)


def serve_asgs(fakes, batch, web=None, desired=(2, 1)) -> None:
    """describe-auto-scaling-groups: instance id -> LifecycleState for each group."""

    def asg(name, want, instances):
        listed = [{"InstanceId": i, "LifecycleState": s} for i, s in instances.items()]
        return {"AutoScalingGroupName": name, "DesiredCapacity": want, "MinSize": 0, "MaxSize": 6, "Instances": listed}

    answer = {"AutoScalingGroups": [asg(ASG, desired[0], batch), asg(WEB_ASG, desired[1], web or {})]}
    fakes.on("aws", "autoscaling", "describe-auto-scaling-groups", stdout=json.dumps(answer))


@pytest.fixture
def leader(fakes):
    """The swarm's leader (systemd running, docker.service active) with the two groups configured."""
    os.makedirs(paths.SYSTEMD_RUN, exist_ok=True)
    fakes.on("systemctl", "show", "-P", "LoadState", stdout="loaded\n")
    fakes.on("systemctl", "is-active", "--quiet")
    fakes.docker_up()
    fakes.swarm(node_id=SELF)
    Path(paths.GROUPS_CONFIG).write_text(json.dumps(CONFIG))
    return fakes


def watch() -> int:
    return cli.main(["groups-watch"])


def record() -> dict:
    return json.loads(Path(paths.GROUPS_RECORD).read_text())


def docker_steps(fakes) -> list[list[str]]:
    """The calls that change something, docker's and aws's, in the order they were made."""
    changing = (["node", "update"], ["node", "rm"], ["autoscaling", "complete-lifecycle-action"])
    return [c["args"] for c in fakes.calls() if c["args"][:2] in changing]


# -- verify and label -------------------------------------------------------------------
def test_a_claim_aws_backs_is_labelled_and_one_it_does_not_never_is(leader, capsys):
    serve_asgs(leader, {I1: "InService"}, {I2: "InService"})
    serve_nodes(
        leader,
        [
            described(SELF, "m0", role="manager"),
            described("good", f"batch-{I1}", claim=("batch", I1, "spot")),
            described("liar", "batch-x", claim=("batch", I3, "on-demand")),  # AWS has no such instance
            described("wrong", "batch-y", claim=("batch", I2, "spot")),  # I2 is web's, not batch's
            described("unknown", "ml-z", claim=("ml", I1, "spot")),  # no group ml is watched
            described("mgr", "m1", role="manager", claim=("batch", I1, "spot")),  # never a manager
            described("pinned", "w1"),
        ],
    )
    leader.on("docker", "node", "update")
    assert watch() == 0
    expected = ["node", "update", "--label-add", "swarm.capacity=spot", "--label-add", "swarm.group=batch",
                "--label-add", f"swarm.instance={I1}", "--label-add", "tier=batch", "good"]  # fmt: skip
    assert docker_steps(leader) == [expected]
    out = capsys.readouterr().out
    assert f"batch-{I1} is {I1} of batch (spot): labelled" in out
    said = [line for line in out.splitlines() if "not labelled" in line]
    assert len(said) == 1  # once per pass, naming each claim
    assert f"batch-x (batch/{I3})" in said[0] and f"batch-y (batch/{I2})" in said[0] and "ml-z" in said[0]
    assert "m1 (batch/" in said[0]


def test_a_node_already_labelled_is_not_updated_again(leader):
    serve_asgs(leader, {I1: "InService"})
    labels = backed_labels("batch", I1, tier="batch")
    serve_nodes(leader, [described(SELF, "m0", role="manager"), described("good", "b", claim=("batch", I1, "spot"),
                                                                          labels=labels)])  # fmt: skip
    assert watch() == 0
    assert docker_steps(leader) == []
    counted = {"name": "batch", "asg": ASG, "desired": 2, "min": 0, "max": 6, "in_service": 1, "joining": 0}
    assert record()["groups"][0] == {**counted, "draining": 0, "spot": 1, "on_demand": 0}


def test_a_claim_copied_by_a_second_node_labels_neither_newcomer(leader, capsys):
    """Anything with the worker token can claim an instance AWS lists: two Ready nodes with
    one claim get no labels, and the one labelled first keeps its own."""
    serve_asgs(leader, {I1: "InService", I2: "InService"})
    serve_nodes(
        leader,
        [
            described(SELF, "m0", role="manager"),
            described(
                "real", f"batch-{I1}", claim=("batch", I1, "spot"), labels=backed_labels("batch", I1, tier="batch")
            ),
            described("copy", "w7", claim=("batch", I1, "spot")),
            described("twin1", f"batch-{I2}", claim=("batch", I2, "spot")),
            described("twin2", "w8", claim=("batch", I2, "spot")),
        ],
    )
    assert watch() == 0
    assert docker_steps(leader) == []
    said = next(line for line in capsys.readouterr().out.splitlines() if "not labelled" in line)
    assert f"w7 (batch/{I1}, claimed by 2 Ready nodes)" in said and f"w8 (batch/{I2}, claimed by 2 Ready nodes)" in said
    assert f"batch-{I1} (" not in said


# -- scale-in ---------------------------------------------------------------------------
def leaving_node(fakes, labels=None, availability="active", state="ready"):
    serve_asgs(fakes, {I1: "Terminating:Wait", I2: "InService"})
    table = [
        described(SELF, "m0", role="manager"),
        described("going", f"batch-{I1}", claim=("batch", I1, "spot"), state=state,
                  labels=labels or backed_labels("batch", I1, tier="batch"), availability=availability),
        described("staying", f"batch-{I2}", claim=("batch", I2, "on-demand"),
                  labels=backed_labels("batch", I2, "on-demand", tier="batch")),
    ]  # fmt: skip
    serve_nodes(fakes, table)
    fakes.on("docker", "node", "update")
    fakes.on("docker", "node", "rm", "--force")
    fakes.on("aws", "autoscaling", "complete-lifecycle-action")


def running(fakes, times=None) -> None:
    fakes.on("docker", "node", "ps", "going", stdout=json.dumps({"CurrentState": "Running 1 hour ago"}) + "\n",
             times=times)  # fmt: skip


def test_scale_in_drains_waits_for_the_tasks_then_removes_then_lets_aws_go_on(leader, capsys):
    leaving_node(leader)
    running(leader, times=2)
    leader.on("docker", "node", "ps", "going", stdout=json.dumps({"CurrentState": "Shutdown 1 second ago"}) + "\n")
    before = int(time.time())
    assert watch() == 0
    drain, remove, done = docker_steps(leader)
    assert drain[:5] == ["node", "update", "--availability", "drain", "--label-add"] and drain[-1] == "going"
    since = int(drain[5].split("=")[1])
    assert drain[5].startswith("swarm.draining-since=") and before <= since <= time.time()
    assert remove == ["node", "rm", "--force", "going"]
    assert done == ["autoscaling", "complete-lifecycle-action", "--lifecycle-action-result", "CONTINUE",
                    "--auto-scaling-group-name", ASG, "--lifecycle-hook-name", "swarm-drain", "--instance-id", I1,
                    "--region", "eu-west-1", "--output", "json"]  # fmt: skip
    assert 4 <= leader.clock.slept <= 6  # two polls while its tasks stopped
    counted = record()["groups"][0]
    assert counted["in_service"] == 1 and counted["draining"] == 0 and counted["on_demand"] == 1
    assert record()["ok"] and "lifecycle action completed" in capsys.readouterr().out


def test_a_drain_that_does_not_finish_goes_at_its_bound(leader, capsys):
    leaving_node(leader)
    running(leader)
    assert watch() == 0
    assert [step[:2] for step in docker_steps(leader)] == [
        ["node", "update"], ["node", "rm"], ["autoscaling", "complete-lifecycle-action"],
    ]  # fmt: skip
    assert groups.DRAIN_BOUND <= leader.clock.slept <= groups.DRAIN_BOUND + 2
    assert "removed from the swarm at the drain's bound (90s), 1 task(s) still running" in capsys.readouterr().out


def test_a_later_pass_keeps_the_first_drains_clock(leader):
    """Drained 80 s ago by a pass that was stopped: 10 s are left, and no second drain."""
    since = str(int(time.time()) - 80)
    labels = backed_labels("batch", I1, tier="batch", **{"swarm.draining-since": since})
    leaving_node(leader, labels=labels, availability="drain")
    running(leader)
    assert watch() == 0
    assert [step[:2] for step in docker_steps(leader)] == [["node", "rm"], ["autoscaling", "complete-lifecycle-action"]]
    assert 9 <= leader.clock.slept <= 13


def test_a_node_that_is_already_down_goes_at_once(leader):
    leaving_node(leader, state="down")
    running(leader)  # a down node's tasks read Running: they cannot stop
    assert watch() == 0
    assert [s[:2] for s in docker_steps(leader)][1:] == [["node", "rm"], ["autoscaling", "complete-lifecycle-action"]]
    assert leader.clock.slept == 0


def test_an_instance_that_never_joined_is_let_go_at_once(leader):
    serve_asgs(leader, {I3: "Terminating:Wait"})
    serve_nodes(leader, [described(SELF, "m0", role="manager")])
    leader.on("aws", "autoscaling", "complete-lifecycle-action")
    assert watch() == 0
    assert [s[:2] for s in docker_steps(leader)] == [["autoscaling", "complete-lifecycle-action"]]
    assert leader.clock.slept == 0


def test_no_active_lifecycle_action_is_not_an_error_but_another_failure_is(leader, capsys):
    serve_asgs(leader, {I3: "Terminating:Wait"})
    serve_nodes(leader, [described(SELF, "m0", role="manager")])
    no_action = "An error occurred (ValidationError) when calling the CompleteLifecycleAction operation: " \
                "No active Lifecycle Action found with instance ID i-0fff5555eeee6666d\n"  # fmt: skip
    denied = "An error occurred (AccessDenied) when calling the CompleteLifecycleAction operation: not allowed\n"
    leader.on("aws", "autoscaling", "complete-lifecycle-action", rc=254, stderr=no_action, times=1)
    leader.on("aws", "autoscaling", "complete-lifecycle-action", rc=254, stderr=denied)
    assert watch() == 0 and "lifecycle action no longer waiting" in capsys.readouterr().out
    assert watch() == 1
    error = capsys.readouterr().err
    assert "complete-lifecycle-action (batch i-0fff5555eeee6666d) failed: An error occurred (AccessDenied)" in error
    assert not record()["ok"] and "AccessDenied" in record()["said"]


def test_a_manager_is_never_drained_or_removed(leader):
    serve_asgs(leader, {I1: "Terminating:Wait"})
    serve_nodes(leader, [described(SELF, "m0", role="manager", claim=("batch", I1, "spot"),
                                   labels=backed_labels("batch", I1))])  # fmt: skip
    leader.on("aws", "autoscaling", "complete-lifecycle-action")
    assert watch() == 0
    assert [s[:2] for s in docker_steps(leader)] == [["autoscaling", "complete-lifecycle-action"]]


def test_a_node_that_only_claims_a_leaving_instance_another_node_holds_is_not_drained(leader):
    """The leader's labels say whose instance it is; a copied claim is not drained or removed."""
    leaving_node(leader)
    leader.on("docker", "node", "ps", "going", stdout="")
    leader.rules[:] = [r for r in leader.rules if r["args"][:2] not in (["node", "ls"], ["node", "inspect"])]
    serve_nodes(
        leader,
        [
            described(SELF, "m0", role="manager"),
            described(
                "going", f"batch-{I1}", claim=("batch", I1, "spot"), labels=backed_labels("batch", I1, tier="batch")
            ),
            described("liar", "w7", claim=("batch", I1, "spot")),
        ],
    )
    assert watch() == 0
    touched = [step[-1] for step in docker_steps(leader) if step[0] == "node"]
    assert "liar" not in touched and touched == ["going", "going"]  # drained, then removed


# -- dead nodes -------------------------------------------------------------------------
def test_only_down_group_nodes_whose_instance_is_gone_are_removed(leader, capsys):
    serve_asgs(leader, {I2: "InService", I3: "Terminated"})
    gone = "i-0bbbbbbbbbbbbbbbb"
    serve_nodes(
        leader,
        [
            described(SELF, "m0", role="manager"),
            described("deadgone", "b1", state="down", labels=backed_labels("batch", gone)),
            described("deadterm", "b3", state="down", labels=backed_labels("batch", I3)),
            described("deadclaim", "b4", state="down", claim=("batch", gone, "spot")),  # never labelled
            described("readygone", "b5", labels=backed_labels("batch", gone)),  # Ready: never removed
            described("downlisted", "b2", state="down", labels=backed_labels("batch", I2)),  # may come back
            described("pinned", "w1", state="down"),  # Pulumi's
            described("otherg", "ml1", state="down", labels=backed_labels("ml", gone)),  # not watched here
            described("oldmgr", "m9", state="down", role="manager", labels=backed_labels("batch", gone)),
        ],
    )
    leader.on("docker", "node", "rm", "--force")
    assert watch() == 0
    assert docker_steps(leader) == [["node", "rm", "--force", n] for n in ("deadgone", "deadterm", "deadclaim")]
    assert "removed down node b1 (deadgone): AWS no longer has i-0bbbbbbbbbbbbbbbb in batch" in capsys.readouterr().out


# -- when not to act --------------------------------------------------------------------
def test_a_manager_that_is_not_the_leader_does_nothing(leader, capsys):
    leader.on("docker", "node", "inspect", "self", stdout="false\n", times=1)
    assert watch() == 0
    assert "not the swarm's leader" in capsys.readouterr().out
    assert leader.calls("aws") == [] and not os.path.exists(paths.GROUPS_RECORD)


def test_without_groups_nothing_is_asked(fakes, capsys):
    assert watch() == 0
    assert "no worker groups here" in capsys.readouterr().out and fakes.calls() == []


def test_a_held_lock_means_not_now_and_no_wait(leader, capsys):
    with open(paths.NODE_LOCK, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        other.write("backup (pid 4242, since 19:00:01 UTC)\n")
        other.flush()
        assert watch() == 0
    assert "groups-watch: not now: groups-watch: 'swarm-node backup (pid 4242" in capsys.readouterr().out
    assert leader.calls() == [] and leader.clock.slept == 0


def test_a_stopped_dockerd_is_not_woken(leader, capsys):
    leader.rules.insert(0, {"tool": "systemctl", "args": ["is-active"], "rc": 3, "times": None, "writes": []})
    leader._save()
    assert watch() == 0
    assert "docker.service is not running" in capsys.readouterr().out and leader.calls("docker") == []


def test_a_failed_describe_fails_the_pass_shows_the_cli_and_records_it(leader, capsys):
    leader.on(
        "aws", "autoscaling", "describe-auto-scaling-groups", rc=255, stderr="Could not connect to the endpoint URL\n"
    )
    serve_nodes(leader, [described(SELF, "m0", role="manager")])
    assert watch() == 1
    assert "describe-auto-scaling-groups failed: Could not connect to the endpoint URL" in capsys.readouterr().err
    assert record()["ok"] is False and "Could not connect" in record()["said"] and record()["at"].endswith("Z")
    assert docker_steps(leader) == []


def test_a_missing_asg_fails_the_pass_naming_it(leader, capsys):
    answer = {"AutoScalingGroups": [{"AutoScalingGroupName": ASG, "DesiredCapacity": 1, "MinSize": 0, "MaxSize": 2}]}
    leader.on("aws", "autoscaling", "describe-auto-scaling-groups", stdout=json.dumps(answer))
    serve_nodes(leader, [described(SELF, "m0", role="manager")])
    assert watch() == 1
    assert "AWS has no Auto Scaling group swarm-dev-web (group web)" in capsys.readouterr().err


def test_the_bed_s_endpoint_is_used(leader):
    from node_fakes import write_env

    write_env(SWARM_AUTOSCALING_ENDPOINT="http://10.200.255.254:8180")
    serve_asgs(leader, {})
    serve_nodes(leader, [described(SELF, "m0", role="manager")])
    assert watch() == 0
    assert leader.argvs("aws")[0][-4:] == ["--endpoint-url", "http://10.200.255.254:8180", "--output", "json"]


def test_the_record_counts_each_group(leader):
    serve_asgs(leader, {I1: "InService", I2: "Pending", I3: "Terminating:Wait"}, desired=(3, 0))
    serve_nodes(
        leader,
        [described(SELF, "m0", role="manager"),
         described("a", "b1", claim=("batch", I1, "on-demand"), labels=backed_labels("batch", I1, "on-demand",
                                                                                       tier="batch"))],
    )  # fmt: skip
    leader.on("aws", "autoscaling", "complete-lifecycle-action")
    assert watch() == 0
    batch, web = record()["groups"]
    assert batch == {"name": "batch", "asg": ASG, "desired": 3, "min": 0, "max": 6, "in_service": 1,
                     "joining": 1, "draining": 0, "spot": 0, "on_demand": 1}  # fmt: skip
    assert web["in_service"] == 0 and web["desired"] == 0
    assert record()["said"] == "groups-watch: batch 1/3 in service (0 spot), 1 joining, 0 draining; " \
                               "web 0/0 in service (0 spot), 0 joining, 0 draining"  # fmt: skip


# -- configure --------------------------------------------------------------------------
@pytest.fixture
def systemd(fakes):
    os.makedirs(paths.SYSTEMD_RUN, exist_ok=True)
    fakes.on("systemctl")
    return fakes


def test_configure_writes_the_groups_once_and_starts_the_timer(systemd, capsys):
    text = json.dumps(CONFIG)
    assert cli.main(["groups-watch", "--configure", text]) == 0
    written = Path(paths.GROUPS_CONFIG)
    assert json.loads(written.read_text()) == CONFIG and oct(written.stat().st_mode & 0o777) == "0o644"
    assert "written" in capsys.readouterr().out
    mtime = written.stat().st_mtime_ns
    assert cli.main(["groups-watch", "--configure", text]) == 0
    assert written.stat().st_mtime_ns == mtime and "unchanged" in capsys.readouterr().out
    assert systemd.argvs("systemctl") == [["enable", "--now", "swarm-groups.timer"]] * 2


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("{not json", "not JSON"), ('{"groups": {}}', "must be"),
     ('{"groups": [{"name": "Batch!", "asg": "a", "hook": "h"}]}', "group name"),
     ('{"groups": [{"name": "b", "asg": "--force", "hook": "h"}]}', "group asg"),
     ('{"groups": [{"name": "b", "asg": "a", "hook": "h", "labels": {"swarm.group": "x"}}]}', "not allowed"),
     ('{"groups": [{"name": "b", "asg": "a", "hook": "h", "extra": 1}]}', "a map of name"),
     ('{"groups": [{"name": "b", "asg": "a", "hook": "h"}, {"name": "b", "asg": "c", "hook": "h"}]}', "same name")],
)  # fmt: skip
def test_configure_refuses_what_is_not_a_group_and_writes_nothing(systemd, capsys, text, complaint):
    assert cli.main(["groups-watch", "--configure", text]) == 1
    assert complaint in capsys.readouterr().err
    assert not os.path.exists(paths.GROUPS_CONFIG) and systemd.calls() == []


def test_unconfigure_stops_the_timer_and_forgets_the_groups(systemd):
    Path(paths.GROUPS_CONFIG).write_text(json.dumps(CONFIG))
    Path(paths.GROUPS_RECORD).write_text("{}")
    assert cli.main(["groups-watch", "--unconfigure"]) == 0
    assert systemd.argvs("systemctl") == [["disable", "--now", "swarm-groups.timer"]]
    assert not os.path.exists(paths.GROUPS_CONFIG) and not os.path.exists(paths.GROUPS_RECORD)
    assert cli.main(["groups-watch", "--unconfigure"]) == 0  # again: nothing left, no error


def test_configure_and_unconfigure_are_one_or_the_other(capsys):
    with pytest.raises(SystemExit):
        cli.main(["groups-watch", "--configure", "{}", "--unconfigure"])
    assert "not allowed with argument" in capsys.readouterr().err


# -- the units --------------------------------------------------------------------------
def test_the_timer_ticks_every_10_seconds_to_the_second():
    timer = (AGENT / "units" / "swarm-groups.timer").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in timer if "=" in line and not line.startswith("#"))
    assert settings["OnActiveSec"] == "10s" and settings["OnUnitActiveSec"] == "10s"
    assert settings["AccuracySec"] == "1s"
    service = (AGENT / "units" / "swarm-groups.service").read_text()
    assert "Type=oneshot" in service and "ExecStart=/usr/local/sbin/swarm-node groups-watch\n" in service
    # It must not start a dockerd a backup stopped.
    assert not [line for line in service.splitlines() if line.startswith(("Requires=", "BindsTo=", "Wants="))]


def test_the_installer_puts_the_watcher_s_units_in_place_but_does_not_enable_them(tmp_path, monkeypatch):
    base = tmp_path / "usr/local/lib/swarm"
    (base / "incoming").mkdir(parents=True)
    for name, value in (("BASE", base), ("SYSTEMD_RUN", tmp_path / "run/systemd/system"),
                        ("UNIT_DIR", tmp_path / "etc/systemd/system")):  # fmt: skip
        Path(value).mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(install, name, str(value))
    monkeypatch.setattr(install, "LINKS", {})
    monkeypatch.setattr(install.os, "chown", lambda *args: None)
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = Fakes(tools)
    fake.on("systemctl")
    monkeypatch.setenv("PATH", f"{fake.bin}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(fake.dir))
    import shutil

    shutil.copytree(AGENT, base / "incoming/x", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    install.install(str(base / "incoming/x"), install.tree_digest(str(AGENT)))
    for unit in ("swarm-groups.service", "swarm-groups.timer"):
        assert (tmp_path / "etc/systemd/system" / unit).read_bytes() == (AGENT / "units" / unit).read_bytes()
    enables = [argv for argv in fake.argvs("systemctl") if argv[0] == "enable"]
    every_node = ["swarm-image-cleanup.timer", "swarm-registry-auth.timer", "swarm-logs.timer", "swarm-health.timer"]
    assert enables == [["enable", "--no-reload", "--now", *every_node]]


def test_a_node_without_systemd_is_told_the_watcher_cannot_run(fakes):
    with pytest.raises(AgentError, match=r"no systemd to run swarm-groups\.timer"):
        groups.groups_watch(argparse.Namespace(configure=json.dumps(CONFIG), unconfigure=False))


def test_from_the_timer_a_pass_that_changed_nothing_says_nothing(leader, capsys, monkeypatch):
    """Every 10 s on every manager: the journal keeps the changes, not a line per tick. By
    hand (no INVOCATION_ID) every pass speaks."""
    serve_asgs(leader, {I1: "InService"}, {})
    serve_nodes(leader, [described(SELF, "m0", role="manager"),
                         described("good", f"batch-{I1}", claim=("batch", I1, "spot"),
                                   labels=backed_labels("batch", I1, tier="batch"))])  # fmt: skip
    monkeypatch.setenv("INVOCATION_ID", "0123")
    assert watch() == 0
    assert "batch 1/2 in service" in capsys.readouterr().out  # the first pass: a change
    assert watch() == 0
    assert capsys.readouterr().out == "", "a pass that changed nothing spoke from the timer"
    monkeypatch.delenv("INVOCATION_ID")
    assert watch() == 0
    assert "batch 1/2 in service" in capsys.readouterr().out


def test_from_the_timer_a_follower_says_nothing(leader, capsys, monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "0123")
    leader.on("docker", "node", "inspect", "self", stdout="false\n", times=1)
    assert watch() == 0 and capsys.readouterr().out == "", "a follower spoke every tick"
    assert leader.calls("aws") == [], "the follower's pass asked AWS: it was taken for the leader"
