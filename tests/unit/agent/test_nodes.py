"""reconcile, retire, teardown-mark and converge against a scripted `docker node ls`,
`docker node inspect` and `docker service ls` (all read as JSON)."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re

import pytest
from swarm_agent import nodes, paths, run
from swarm_agent.run import AgentError

SELF = "node0"


def ns(**kwargs) -> argparse.Namespace:
    return argparse.Namespace(**kwargs)


def node(node_id, host, state="ready", role="manager", addr="10.42.0.10", labels=None, reach="Reachable"):
    """One node as `docker node inspect` describes it; `reach` is what `docker node ls` shows."""
    described = {
        "ID": node_id,
        "Description": {"Hostname": host},
        "Status": {"State": state, "Addr": addr},
        "Spec": {"Role": role, "Labels": labels or {}, "Availability": "active"},
    }
    return described, (reach if role == "manager" else "")


def serve_nodes(fakes, table, times=None) -> None:
    """`docker node ls --format '{{json .}}'` and `docker node inspect IDS...` for `table`."""
    lines = "".join(
        json.dumps(
            {
                "ID": d["ID"],
                "Hostname": d["Description"]["Hostname"],
                "Status": d["Status"]["State"].capitalize(),
                "ManagerStatus": reach,
            }
        )
        + "\n"
        for d, reach in table
    )
    fakes.on("docker", "node", "ls", "--format", "{{json .}}", stdout=lines, times=times)
    fakes.on("docker", "node", "inspect", stdout=json.dumps([d for d, _ in table]), times=times)


def serve_managers(fakes, table) -> None:
    lines = "".join(
        json.dumps({"ID": d["ID"], "ManagerStatus": reach}) + "\n"
        for d, reach in table
        if d["Spec"]["Role"] == "manager"
    )
    fakes.on("docker", "node", "ls", "--filter", "role=manager", "--format", "{{json .}}", stdout=lines)


def serve_services(fakes, *services, times=None) -> None:
    lines = "".join(
        json.dumps({"Name": name, "Replicas": replicas, "Mode": "replicated"}) + "\n" for name, replicas in services
    )
    fakes.on("docker", "service", "ls", "--format", "{{json .}}", stdout=lines, times=times)


def manager_up(fakes) -> None:
    fakes.docker_up()
    fakes.swarm(state="active", manager=True, node_id=SELF)


def calls_starting(fakes, *prefix) -> list:
    return [argv for argv in fakes.argvs("docker") if argv[: len(prefix)] == list(prefix)]


@pytest.fixture
def long_pauses(fakes, monkeypatch):
    """Each pause moves the fake clock ten times as far: a bound is reached with fewer
    fake docker calls (each one is a process)."""
    monkeypatch.setattr(run, "pause", lambda seconds: fakes.clock.sleep(seconds * 10))


@pytest.fixture
def lock_dir(fakes):
    os.makedirs(os.path.dirname(paths.NODE_LOCK), exist_ok=True)


# -- reconcile -------------------------------------------------------------------------
def test_reconcile_removes_replaced_and_unexpected_down_nodes_and_keeps_the_rest(fakes, capsys):
    manager_up(fakes)
    table = [
        node(SELF, "m0", reach="Leader"),
        node("oldm1", "m1", state="down", reach="Unreachable"),  # replaced: a Ready m1 exists
        node("newm1", "m1"),
        node("gonew9", "w9", state="unknown", role="worker"),  # named nowhere
        node("downw1", "w1", state="down", role="worker"),  # named, no twin: it may come back
        node("extra7", "w7", role="worker"),  # Ready, named nowhere: Pulumi deletes it later
    ]
    serve_nodes(fakes, table, times=2)
    serve_nodes(
        fakes,
        [row for row in table if row[0]["ID"] not in ("oldm1", "gonew9", "downw1")]
        + [node("w1new", "w1", role="worker")],
    )
    fakes.on("docker", "node", "demote", rc=1, stderr="node oldm1 is not a manager in raft\n")
    fakes.on("docker", "node", "rm", "--force")
    fakes.on("docker", "node", "ls", stdout="ID  HOSTNAME  STATUS\nnode0 *  m0  Ready\n")
    nodes.reconcile(ns(managers="m0,m1", workers="w1", timeout=30))
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        "reconcile: removed down manager m1 (oldm1), a Ready twin exists",
        "reconcile: removed unknown worker w9 (gonew9), not expected",
    ]
    assert out[-3] == "reconcile: every node named is Ready (m0 m1 w1); still here until the end of this update: w7"
    assert out[-2:] == ["ID  HOSTNAME  STATUS", "node0 *  m0  Ready"]
    assert calls_starting(fakes, "node", "demote") == [["node", "demote", "oldm1"]]
    assert calls_starting(fakes, "node", "rm") == [
        ["node", "rm", "--force", "oldm1"],
        ["node", "rm", "--force", "gonew9"],
    ]


def test_reconcile_times_out_naming_what_the_swarm_has(fakes, long_pauses):
    manager_up(fakes)
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader"), node("w1", "w1", state="down", role="worker")])
    with pytest.raises(AgentError) as raised:
        nodes.reconcile(ns(managers="m0,m1", workers="w1", timeout=5))
    assert str(raised.value) == (
        "reconcile: timed out after 5s; not Ready in their role:"
        " m1 (wanted: Ready manager; the swarm has: no such node)"
        " w1 (wanted: Ready worker; the swarm has: down worker)"
    )
    assert 5 <= fakes.clock.slept <= 10
    assert calls_starting(fakes, "node", "rm") == []


def test_reconcile_wants_each_node_in_its_role(fakes):
    manager_up(fakes)
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader"), node("m1id", "m1", role="worker")])
    with pytest.raises(AgentError, match=re.escape("m1 (wanted: Ready manager; the swarm has: ready worker)")):
        nodes.reconcile(ns(managers="m0,m1", workers="", timeout=0))


def test_reconcile_requires_the_managers(fakes):
    with pytest.raises(AgentError, match=re.escape("reconcile: --managers names,... is required")):
        nodes.reconcile(ns(managers="", workers="w1", timeout=5))
    assert fakes.calls() == []


def test_reconcile_refuses_a_node_id_that_is_not_one(fakes):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "--format", "{{json .}}", stdout=json.dumps({"ID": "--force"}) + "\n")
    with pytest.raises(AgentError, match="where a node id belongs"):
        nodes.reconcile(ns(managers="m0", workers="", timeout=5))
    assert calls_starting(fakes, "node", "inspect") == [] and calls_starting(fakes, "node", "rm") == []


def test_reconcile_only_on_an_active_manager(fakes):
    fakes.docker_up()
    fakes.swarm(state="active", manager=False)
    with pytest.raises(AgentError, match=r"reconcile: this node is not an active swarm manager \(state: active\)"):
        nodes.reconcile(ns(managers="m0", workers="", timeout=5))


# -- retire ----------------------------------------------------------------------------
def retire_args(name="w1", addr="10.42.0.21", timeout=120):
    return ns(name=name, addr=addr, timeout=timeout)


def retiring_w1(fakes) -> None:
    """Manager m0, the leader, about to retire worker w1 (10.42.0.21): drains are accepted."""
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", stdout=f"{SELF}\n")
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader"), node("w1id", "w1", role="worker", addr="10.42.0.21")])
    fakes.on("docker", "node", "update")


def test_retire_drains_and_removes_a_worker(fakes, lock_dir, capsys):
    retiring_w1(fakes)
    fakes.on("docker", "node", "ps", "w1id", stdout=json.dumps({"CurrentState": "Running 2 hours ago"}) + "\n", times=2)
    fakes.on("docker", "node", "ps", "w1id", stdout=json.dumps({"CurrentState": "Shutdown 1 second ago"}) + "\n")
    serve_services(fakes, ("web", "2/3"), times=2)
    serve_services(fakes, ("web", "3/3"))
    fakes.on("docker", "node", "rm", "--force")
    nodes.retire(retire_args())
    assert capsys.readouterr().out == "retire: w1 (10.42.0.21) drained and removed from the swarm\n"
    assert calls_starting(fakes, "node", "update") == [["node", "update", "--availability", "drain", "w1id"]]
    assert calls_starting(fakes, "node", "rm") == [["node", "rm", "--force", "w1id"]]
    assert calls_starting(fakes, "node", "demote") == []
    assert 2 <= fakes.clock.slept <= 3  # waited for the tasks to move


def test_retire_does_not_wait_for_a_service_pinned_to_the_retiring_nodes_data(fakes, lock_dir, capsys):
    """Its task can only run on the node's next machine: waiting would spend the whole bound."""
    retiring_w1(fakes)
    fakes.on("docker", "node", "ps", "w1id", stdout=json.dumps({"CurrentState": "Shutdown 1 second ago"}) + "\n")
    serve_services(fakes, ("web", "3/3"), ("pg", "0/1"))
    pending = "Pending 2 seconds ago|no suitable node (scheduling constraints not satisfied on 1 node)\n"
    fakes.on("docker", "service", "ps", "--filter", "desired-state=running", stdout=pending)
    fakes.on("docker", "node", "rm", "--force")
    nodes.retire(retire_args())
    assert capsys.readouterr().out == "retire: w1 (10.42.0.21) drained and removed from the swarm\n"
    assert fakes.clock.slept < 1, "the retire waited for a service no node could take"
    assert fakes.argvs("docker")[-2][-1] == "pg"  # it asked the scheduler why pg waits


def test_retire_waits_for_a_service_that_can_run_elsewhere(fakes, lock_dir):
    retiring_w1(fakes)
    fakes.on("docker", "node", "ps", "w1id", stdout="")
    serve_services(fakes, ("web", "2/3"), times=3)
    serve_services(fakes, ("web", "3/3"))
    fakes.on("docker", "service", "ps", "--filter", "desired-state=running", stdout="Preparing 1 second ago|\n")
    fakes.on("docker", "node", "rm", "--force")
    nodes.retire(retire_args())
    assert 3 <= fakes.clock.slept <= 4


def test_retire_demotes_a_manager_within_quorum(fakes, lock_dir, capsys):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", stdout=f"{SELF}\n")
    table = [node(SELF, "m0", reach="Leader"), node("m2id", "m2", addr="10.42.0.12"), node("m1id", "m1")]
    serve_managers(fakes, table)
    fakes.on("docker", "node", "inspect", "m2id", stdout=json.dumps([table[1][0]]), times=1)
    fakes.on("docker", "node", "inspect", "m2id", stdout=json.dumps([node("m2id", "m2", role="worker")[0]]))
    serve_nodes(fakes, table)
    fakes.on("docker", "node", "update")
    fakes.on("docker", "node", "ps", "m2id", stdout="")
    serve_services(fakes, ("web", "3/3"))
    fakes.on("docker", "node", "demote", "m2id", rc=1, stderr="Error: rpc error: raft proposal dropped\n", times=1)
    fakes.on("docker", "node", "demote", "m2id")
    fakes.on("docker", "node", "rm", "--force")
    nodes.retire(retire_args(name="m2", addr="10.42.0.12"))
    assert capsys.readouterr().out == "retire: m2 (10.42.0.12) drained, demoted and removed from the swarm\n"
    steps = [
        argv[:2]
        for argv in fakes.argvs("docker")
        if argv[:2] in (["node", "update"], ["node", "demote"], ["node", "rm"])
    ]
    assert steps == [["node", "update"], ["node", "demote"], ["node", "demote"], ["node", "rm"]]
    assert len(calls_starting(fakes, "node", "ls", "--filter", "role=manager")) == 2  # before drain and before demote


def test_retire_refuses_to_demote_below_quorum_and_changes_nothing(fakes, lock_dir):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", stdout=f"{SELF}\n")
    table = [
        node(SELF, "m0", reach="Leader"),
        node("m1id", "m1", reach="Unreachable"),
        node("m2id", "m2", addr="10.42.0.12"),
    ]
    serve_managers(fakes, table)
    serve_nodes(fakes, table)
    with pytest.raises(AgentError) as raised:
        nodes.retire(retire_args(name="m2", addr="10.42.0.12"))
    assert str(raised.value).startswith(
        "retire: demoting manager m2 would leave 2 manager(s), of which 1 reachable; Raft needs 2. Nothing was demoted"
    )
    assert calls_starting(fakes, "node", "update") == [] and calls_starting(fakes, "node", "demote") == []


def test_retire_has_nothing_to_do_in_a_teardown(fakes, lock_dir, capsys):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", stdout=f"{SELF}\n")
    serve_nodes(
        fakes, [node(SELF, "m0", labels={"swarm.teardown": "20261201T230000Z"}), node("w1id", "w1", role="worker")]
    )
    nodes.retire(retire_args())
    assert capsys.readouterr().out == "retire: the swarm is being torn down; nothing to do for w1\n"
    assert calls_starting(fakes, "node", "update") == [] and calls_starting(fakes, "node", "rm") == []


def test_retire_of_a_node_not_in_the_swarm_does_nothing(fakes, lock_dir, capsys):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", stdout=f"{SELF}\n")
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader")])
    nodes.retire(retire_args())
    assert capsys.readouterr().out == "retire: w1 (10.42.0.21) is not in the swarm; nothing to do\n"


def test_retire_refuses_this_node(fakes, lock_dir):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", stdout=f"{SELF}\n")
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader", addr="10.42.0.10")])
    with pytest.raises(AgentError, match="retire: m0 is this node; retire it from another manager"):
        nodes.retire(retire_args(name="m0", addr="10.42.0.10"))


def test_retire_waits_a_bounded_time_for_another_retire(fakes, lock_dir):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", stdout=f"{SELF}\n")
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader"), node("w1id", "w1", role="worker", addr="10.42.0.21")])
    with open(paths.NODE_LOCK, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        other.write("backup (pid 4242, since 19:00:01 UTC)\n")
        other.flush()
        held_by = r"retire: 'swarm-node backup \(pid 4242, since 19:00:01 UTC\)' holds this node's lock .* after 600s"
        with pytest.raises(AgentError, match=held_by):
            nodes.retire(retire_args())
    assert 600 <= fakes.clock.slept <= 601
    assert calls_starting(fakes, "node", "update") == []


def test_retire_refuses_a_name_or_address_that_is_not_one(fakes):
    with pytest.raises(AgentError, match="retire: --name NAME and --addr IPv4 are required"):
        nodes.retire(retire_args(name="w1;reboot"))
    with pytest.raises(AgentError, match="retire: --name NAME and --addr IPv4 are required"):
        nodes.retire(retire_args(addr="fe80::1"))
    assert fakes.calls() == []


def test_retire_needs_a_leader(fakes, lock_dir, long_pauses):
    manager_up(fakes)
    fakes.on("docker", "node", "ls", "-q", rc=1, stderr="The swarm does not have a leader.\n")
    with pytest.raises(AgentError, match="the swarm has no leader after 60s"):
        nodes.retire(retire_args())


def test_a_drain_that_does_not_finish_is_a_note_and_retire_goes_on(fakes, lock_dir, capsys):
    retiring_w1(fakes)
    fakes.on("docker", "node", "ps", "w1id", stdout=json.dumps({"CurrentState": "Running 2 hours ago"}) + "\n")
    serve_services(fakes, ("web", "2/3"), ("db", "1/1"))
    fakes.on("docker", "node", "rm", "--force")
    nodes.retire(retire_args(timeout=4))
    captured = capsys.readouterr()
    assert captured.err == (
        "retire: w1 drained, but after 4s: 1 task(s) still running on it; "
        "services not at their replicas: web 2/3; going on\n"
    )
    assert captured.out.endswith("removed from the swarm\n")


@pytest.mark.parametrize(
    ("table", "wanted"),
    [
        # A replaced worker and its successor share the name, not the address.
        (
            [node("new", "w1", role="worker", addr="10.42.0.31"), node("old", "w1", role="worker", addr="10.42.0.21")],
            "old",
        ),
        # The only node with the name, seen at another address (a machine with two).
        ([node("only", "w1", role="worker", addr="172.17.0.5")], "only"),
        # Two with the name, neither at the address: no guess.
        ([node("a", "w1", role="worker", addr="10.0.0.1"), node("b", "w1", role="worker", addr="10.0.0.2")], None),
    ],
)
def test_find_node_picks_the_node_at_the_address_or_the_only_one(fakes, table, wanted):
    serve_nodes(fakes, table)
    found = nodes.find_node("w1", "10.42.0.21")
    assert (found.id if found else None) == wanted


# -- converge, teardown-mark -------------------------------------------------------------
def test_converge_waits_until_every_service_runs_its_replicas(fakes, capsys):
    manager_up(fakes)
    fakes.on("docker", "service", "ls", rc=1, stderr="rpc error: raft proposal dropped\n", times=1)
    serve_services(fakes, ("web", "1/3"), times=2)
    serve_services(fakes, ("web", "3/3"), ("mirror", "1/1"))
    nodes.converge(ns(timeout=300))
    assert capsys.readouterr().out == "converge: every service runs its desired replicas\n"
    assert len(calls_starting(fakes, "service", "ls")) == 4


def test_converge_times_out_naming_the_late_services(fakes):
    manager_up(fakes)
    serve_services(fakes, ("web", "1/3 (max 1 per node)"), ("job", "0/1 (1/1 completed)"), ("db", "1/1"))
    with pytest.raises(AgentError) as raised:
        nodes.converge(ns(timeout=3))
    assert str(raised.value) == "converge: after 3s, services not at their replicas: web 1/3 job 0/1"
    assert 3 <= fakes.clock.slept <= 4


def test_teardown_mark_labels_this_node_and_clear_removes_the_label(fakes, capsys):
    manager_up(fakes)
    fakes.on("docker", "node", "update")
    nodes.teardown_mark(ns(clear=False))
    nodes.teardown_mark(ns(clear=True))
    assert capsys.readouterr().out == (
        "teardown-mark: marked; the retire hooks of this teardown have nothing to do\nteardown-mark: clear\n"
    )
    mark, clear = calls_starting(fakes, "node", "update")
    assert mark[:3] == ["node", "update", "--label-add"] and mark[4] == SELF
    assert re.fullmatch(r"swarm\.teardown=[0-9]{8}T[0-9]{6}Z", mark[3])
    assert clear == ["node", "update", "--label-rm", "swarm.teardown", SELF]


def test_teardown_mark_clear_ignores_a_label_that_is_not_there(fakes, capsys):
    manager_up(fakes)
    fakes.on("docker", "node", "update", rc=1, stderr="label swarm.teardown does not exist\n")
    nodes.teardown_mark(ns(clear=True))
    assert capsys.readouterr().out == "teardown-mark: clear\n"


def test_teardown_mark_fails_when_the_label_cannot_be_set(fakes):
    manager_up(fakes)
    fakes.on("docker", "node", "update", rc=1, stderr="rpc error: no leader\n")
    with pytest.raises(AgentError, match="docker node update --label-add"):
        nodes.teardown_mark(ns(clear=False))


def test_the_cli_hands_the_verbs_their_arguments(fakes, capsys):
    from swarm_agent import cli

    assert cli.main(["retire", "--name", "w1", "--addr", "not-an-ip"]) == 1
    assert capsys.readouterr().err == "swarm-node: retire: --name NAME and --addr IPv4 are required\n"
    manager_up(fakes)
    serve_services(fakes, ("web", "3/3"))
    assert cli.main(["converge", "--timeout", "5"]) == 0
    assert capsys.readouterr().out == "converge: every service runs its desired replicas\n"


# -- reconcile and worker groups --------------------------------------------------------
BATCH = {"groups": [{"name": "batch", "asg": "swarm-dev-batch", "hook": "swarm-drain", "labels": {"tier": "batch"}}]}
ASG = "swarm-dev-batch"


def group_node(node_id, instance, state="ready", engine=True, labelled=False, group="batch"):
    """A worker of a group: its engine labels claim the instance; `labelled`, the leader agreed."""
    described, reach = node(node_id, f"{group}-{instance}", state=state, role="worker", addr="10.42.1.5")
    claim = {"swarm.group": group, "swarm.instance": instance, "swarm.capacity": "spot"}
    described["Description"]["Engine"] = {"Labels": claim if engine else {}}
    if labelled:
        described["Spec"]["Labels"] = {**claim, "tier": "batch"}
    return described, reach


def serve_asg(fakes, desired, instances, times=None) -> None:
    """What `aws autoscaling describe-auto-scaling-groups` answers for the batch group."""
    asg = {
        "AutoScalingGroupName": ASG, "DesiredCapacity": desired, "MinSize": 0, "MaxSize": 6,
        "Instances": [{"InstanceId": i, "LifecycleState": s} for i, s in instances.items()],
    }  # fmt: skip
    answer = json.dumps({"AutoScalingGroups": [asg]})
    fakes.on("aws", "autoscaling", "describe-auto-scaling-groups", stdout=answer, times=times)


def configure_batch() -> None:
    os.makedirs(os.path.dirname(paths.GROUPS_CONFIG), exist_ok=True)
    with open(paths.GROUPS_CONFIG, "w") as handle:
        json.dump(BATCH, handle)


def test_reconcile_without_groups_makes_exactly_todays_calls(fakes, capsys):
    manager_up(fakes)
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader"), node("w1id", "w1", role="worker")])
    fakes.on("docker", "node", "ls", stdout="ID  HOSTNAME\n")
    nodes.reconcile(ns(managers="m0", workers="w1", timeout=30))
    assert fakes.argvs("docker") == [
        ["info", "--format", "{{.ServerVersion}}"],
        ["info", "--format", "{{json .Swarm}}"],
        ["node", "ls", "--format", "{{json .}}"],
        ["node", "inspect", SELF, "w1id"],
        ["node", "ls", "--format", "{{json .}}"],
        ["node", "inspect", SELF, "w1id"],
        ["node", "ls"],
    ]
    assert fakes.calls("aws") == [] and fakes.calls("systemctl") == []
    assert capsys.readouterr().out.splitlines()[0] == "reconcile: every node named is Ready (m0 w1)"


def test_reconcile_never_removes_a_watched_group_s_node_nor_counts_it_as_a_pinned_worker(fakes, capsys):
    """Yesterday's group nodes, Down after a restore, are the watcher's to remove (it asks AWS)."""
    manager_up(fakes)
    configure_batch()
    table = [
        node(SELF, "m0", reach="Leader"),
        node("w1id", "w1", role="worker"),
        group_node("claimsonly", "i-0aaa1111bbbb2222c", state="down"),  # joined, never labelled
        group_node("readygroup", "i-0123456789abcdef0", labelled=True),
    ]
    serve_nodes(fakes, table)
    fakes.on("docker", "node", "ls", stdout="")
    nodes.remove_stale_nodes({"m0", "w1"}, SELF, {"batch"})
    assert calls_starting(fakes, "node", "rm") == [] and calls_starting(fakes, "node", "demote") == []


def test_reconcile_removes_the_down_nodes_of_a_group_no_longer_configured_and_no_ready_one(fakes, capsys):
    """A group taken out of swarm:workerGroups has no watcher any more: its down nodes go
    as yesterday's pinned ones do; a Ready one (or one 'unknown' a moment) stays."""
    manager_up(fakes)
    table = [
        node(SELF, "m0", reach="Leader"),
        node("w1id", "w1", role="worker"),
        group_node("claimsonly", "i-0aaa1111bbbb2222c", state="down"),  # joined, never labelled
        group_node("labelonly", "i-0ddd3333eeee4444f", state="unknown", engine=False, labelled=True),
        group_node("readygroup", "i-0123456789abcdef0", labelled=True),
    ]
    serve_nodes(fakes, table)
    fakes.on("docker", "node", "ls", stdout="")
    fakes.on("docker", "node", "rm", "--force")
    nodes.reconcile(ns(managers="m0", workers="w1", timeout=30))
    assert calls_starting(fakes, "node", "rm") == [["node", "rm", "--force", "claimsonly"]]
    assert calls_starting(fakes, "node", "demote") == []
    out = capsys.readouterr().out
    # A Ready group node is not a pinned node Pulumi is about to delete.
    assert "reconcile: every node named is Ready (m0 w1)\n" in out and "still here" not in out


def test_reconcile_with_groups_labels_what_aws_backs_and_waits_for_the_asgs_desired_count(fakes, capsys):
    manager_up(fakes)
    configure_batch()
    first, second = "i-0aaa1111bbbb2222c", "i-0123456789abcdef0"
    pinned = [node(SELF, "m0", reach="Leader"), node("w1id", "w1", role="worker")]
    # The ASG was scaled to 2 during the day (the config says nothing of it): wait for two.
    serve_asg(fakes, 2, {first: "InService", second: "Pending"})
    serve_nodes(fakes, [*pinned, group_node("g1", first)], times=3)  # the pinned work, then one look
    serve_nodes(fakes, [*pinned, group_node("g1", first, labelled=True), group_node("g2", second)])
    fakes.on("docker", "node", "update")
    fakes.on("docker", "node", "ls", stdout="")
    nodes.reconcile(ns(managers="m0", workers="w1", timeout=60, groups="batch"))
    updates = calls_starting(fakes, "node", "update")
    label = ["--label-add", "swarm.capacity=spot", "--label-add", "swarm.group=batch"]
    assert updates[0] == ["node", "update", *label, "--label-add", f"swarm.instance={first}", "--label-add",
                          "tier=batch", "g1"]  # fmt: skip
    assert [u[-1] for u in updates] == ["g1", "g2"]  # g1 once: the second look sees its labels
    assert fakes.argvs("aws")[0] == [
        "autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names", ASG,
        "--region", "eu-west-1", "--output", "json",
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert "reconcile: worker groups at their desired count: batch 2/2 in service (2 spot)" in out
    assert 3 <= fakes.clock.slept <= 4  # one look again


def test_reconcile_with_groups_times_out_naming_the_group_the_count_and_the_log(fakes, long_pauses):
    manager_up(fakes)
    configure_batch()
    serve_asg(fakes, 3, {"i-0aaa1111bbbb2222c": "InService", "i-0123456789abcdef0": "Pending"})
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader"), group_node("g1", "i-0aaa1111bbbb2222c", labelled=True)])
    with pytest.raises(AgentError) as raised:
        nodes.reconcile(ns(managers="m0", workers="", timeout=60, groups="batch"))
    message = str(raised.value)
    assert message.startswith("reconcile: timed out after 60s; worker group batch has 1 Ready node(s) labelled "
                              "swarm.group=batch of 3 desired (1 instance(s) still joining)")  # fmt: skip
    assert "/var/log/swarm-user-data.log" in message and ASG in message
    assert 60 <= fakes.clock.slept <= 100


def test_reconcile_with_groups_removes_yesterdays_down_group_nodes_whose_instances_are_gone(fakes, capsys):
    manager_up(fakes)
    configure_batch()
    serve_asg(fakes, 1, {"i-0123456789abcdef0": "InService"})
    table = [
        node(SELF, "m0", reach="Leader"),
        group_node("yesterday", "i-0aaa1111bbbb2222c", state="down", labelled=True),
        group_node("today", "i-0123456789abcdef0", labelled=True),
    ]
    serve_nodes(fakes, table)
    fakes.on("docker", "node", "rm", "--force")
    fakes.on("docker", "node", "ls", stdout="")
    nodes.reconcile(ns(managers="m0", workers="", timeout=60, groups="batch"))
    assert calls_starting(fakes, "node", "rm") == [["node", "rm", "--force", "yesterday"]]
    assert "AWS no longer has i-0aaa1111bbbb2222c in batch" in capsys.readouterr().out


def test_reconcile_refuses_a_group_it_was_not_configured_with_before_changing_anything(fakes):
    manager_up(fakes)
    configure_batch()
    with pytest.raises(AgentError, match=r"group web is not in .*groups\.json: 'swarm-node groups-watch --configure'"):
        nodes.reconcile(ns(managers="m0", workers="", timeout=60, groups="batch,web"))
    with pytest.raises(AgentError, match="reconcile: --groups wants group names"):
        nodes.reconcile(ns(managers="m0", workers="", timeout=60, groups="--force"))
    assert fakes.calls() == []


def test_reconcile_with_groups_fails_on_a_failed_aws_call_showing_the_cli(fakes):
    manager_up(fakes)
    configure_batch()
    serve_nodes(fakes, [node(SELF, "m0", reach="Leader")])
    fakes.on(
        "aws", "autoscaling", rc=254, stderr="An error occurred (AccessDenied) when calling DescribeAutoScalingGroups\n"
    )
    with pytest.raises(AgentError, match=r"^reconcile: groups-watch: aws autoscaling describe-auto-scaling-groups "
                                         r"failed: An error occurred \(AccessDenied\)"):  # fmt: skip
        nodes.reconcile(ns(managers="m0", workers="", timeout=60, groups="batch"))
