"""Worker groups: the swarm's leader keeps its Auto Scaling groups' nodes honest (groups-watch).

A group's machines join by themselves at boot (group_join.py) and say which group and
instance they are with dockerd's engine labels. Those are claims: anything that holds the
worker join token could make them. So the leader asks Auto Scaling which instances each
group has, and only a node whose claimed instance AWS lists in that group's ASG gets the
node labels (`swarm.group`, `swarm.instance`, `swarm.capacity` and the group's own) that
placement constraints use. When AWS takes an instance away (scale-in, a spot reclaim,
an instance refresh), the group's lifecycle hook holds it in `Terminating:Wait`: the
leader drains its node, waits (bounded: a spot reclaim gives two minutes in all) until
its tasks have stopped, removes it from the swarm and lets AWS go on. A node whose
instance is gone and that is down (a machine lost without the hook, yesterday's nodes
after a restore) is removed. Pinned nodes and managers are Pulumi's: never touched here.

Who runs it: `swarm-groups.timer` on every manager every 10 s (only the leader acts, and
only with the node's lock free: a backup or a reconcile goes first); Pulumi's
`groups-watch --configure` each morning writes what the groups are; `reconcile --groups`
runs the labelling and dead-node passes itself and waits for each group's desired count.
Each pass leaves a record in /run for `scripts/swarm status`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from collections import Counter
from typing import NamedTuple

from swarm_agent import dockerd, env, lock, nodefs, nodes, paths, run
from swarm_agent.nodes import Node, checked_id
from swarm_agent.run import AgentError

GROUP = nodes.GROUP_LABEL  # swarm.group
INSTANCE = "swarm.instance"
CAPACITY = "swarm.capacity"
DRAINING_SINCE = "swarm.draining-since"  # unix seconds: when the leader began to drain it
CAPACITIES = ("spot", "on-demand")
# As the program checks them (components/settings/groups.py): a hostname is <name>-<instance id>.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}[a-z0-9]$|^[a-z]$")
ASG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
HOOK_RE = re.compile(r"^[A-Za-z0-9_./-]{1,255}$")
LABEL_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/-]{0,128}$")
INSTANCE_RE = re.compile(r"^i-[0-9a-f]{8,17}$")

WAITING = "Terminating:Wait"  # held by the group's termination hook until we complete it
GONE = ("Terminated", "Terminating:Proceed")
STARTING = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
DRAIN_BOUND = 90  # s from draining-since; a spot reclaim gives 120 s in all
DRAIN_POLL = 2
AWS_CALL_TIMEOUT = 60  # one Auto Scaling call; the next tick tries again
RECONCILE_POLL = 3
TIMER = "swarm-groups.timer"


class Group(NamedTuple):
    name: str
    asg: str
    hook: str
    labels: dict


class Asg(NamedTuple):
    desired: int
    min: int
    max: int
    instances: dict  # instance id -> LifecycleState


# -- what the groups are ----------------------------------------------------------------
def parse_config(text: str) -> list[Group]:
    """{"groups": [{"name", "asg", "hook", "labels"}]}, each field checked: the names go into
    docker's and aws's argvs."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise AgentError(f"groups-watch: the groups are not JSON ({error})") from None
    entries = raw.get("groups") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise AgentError('groups-watch: the groups must be {"groups": [{"name", "asg", "hook", "labels"}, ...]}')
    groups = [_group(entry) for entry in entries]
    for field in ("name", "asg"):
        values = [getattr(g, field) for g in groups]
        if len(set(values)) != len(values):
            raise AgentError(f"groups-watch: two groups have the same {field}: {', '.join(values)}")
    return groups


def _group(entry: object) -> Group:
    if not isinstance(entry, dict) or set(entry) - {"name", "asg", "hook", "labels"}:
        raise AgentError(f"groups-watch: a group is a map of name, asg, hook and labels, not {str(entry)[:80]!r}")
    name, asg, hook = (str(entry.get(key, "")) for key in ("name", "asg", "hook"))
    labels = entry.get("labels") or {}
    for what, value, pattern in (("name", name, NAME_RE), ("asg", asg, ASG_RE), ("hook", hook, HOOK_RE)):
        if not pattern.match(value):
            raise AgentError(f"groups-watch: group {what} {value[:80]!r} does not match {pattern.pattern}")
    if not isinstance(labels, dict):
        raise AgentError(f"groups-watch: group {name}'s labels must be a map, not {str(labels)[:80]!r}")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(str(key)) or str(key).startswith("swarm.") or not LABEL_VALUE_RE.match(str(value)):
            raise AgentError(
                f"groups-watch: group {name}'s label {str(key)[:64]}={str(value)[:64]!r} is not allowed "
                "(names: a-z 0-9 . _ -, not swarm.*; values: A-Z a-z 0-9 . _ : / -)"
            )
    return Group(name, asg, hook, {str(k): str(v) for k, v in labels.items()})


def load_config() -> list[Group] | None:
    """The groups --configure wrote; None when this node watches none."""
    try:
        with open(paths.GROUPS_CONFIG) as handle:
            return parse_config(handle.read())
    except FileNotFoundError:
        return None


def configured(verb: str, names: list[str]) -> list[Group]:
    """The groups, when each name is one of them: the ASG, hook and labels come from the
    file --configure wrote (Pulumi runs it before reconcile)."""
    bad = [name for name in names if not NAME_RE.match(name)]
    if bad:
        raise AgentError(f"{verb} wants group names (a-z 0-9 -), got {bad[0][:40]!r}")
    groups = load_config() or []
    missing = [name for name in names if name not in {g.name for g in groups}]
    if missing:
        raise AgentError(
            f"{verb}: group {missing[0]} is not in {paths.GROUPS_CONFIG}: 'swarm-node groups-watch --configure' "
            "(Pulumi's groups-watch command on each manager) must run first"
        )
    return groups


def configure(text: str) -> None:
    """Write the groups (only when they changed; no secret in them) and start the timer."""
    groups = parse_config(text)
    document = {"groups": [g._asdict() for g in groups]}
    changed = nodefs.write_if_changed(paths.GROUPS_CONFIG, json.dumps(document, indent=2, sort_keys=True) + "\n")
    if not dockerd.has_systemd():
        raise AgentError(
            f"groups-watch: {paths.GROUPS_CONFIG} written, but this node has no systemd to run {TIMER}: "
            "worker groups need managers with systemd (their nodes would never be drained)"
        )
    run.systemctl("enable", "--now", TIMER)
    names = ", ".join(f"{g.name} ({g.asg})" for g in groups) or "none"
    print(f"groups-watch: watching {names}; {paths.GROUPS_CONFIG} {'written' if changed else 'unchanged'}")


def unconfigure() -> None:
    if dockerd.has_systemd():
        run.systemctl("disable", "--now", TIMER, check=False)  # an agent without the unit: nothing to stop
    for path in (paths.GROUPS_CONFIG, paths.GROUPS_RECORD):
        if os.path.exists(path):
            os.remove(path)
    print("groups-watch: no worker groups watched here any more")


# -- Auto Scaling -----------------------------------------------------------------------
def _aws(node: env.NodeEnv, *args: str) -> run.Result:
    """One Auto Scaling call, bounded, in the node's region (the bed: its stand-in)."""
    where = ["--region", node.region] if node.region else []
    if node.get("SWARM_AUTOSCALING_ENDPOINT"):
        where += ["--endpoint-url", node.get("SWARM_AUTOSCALING_ENDPOINT")]
    return run.call(
        "aws", "autoscaling", *args, *where, "--output", "json",
        timeout=AWS_CALL_TIMEOUT, env=node.aws_env(), check=False,
    )  # fmt: skip


def _failed(what: str, result: run.Result) -> AgentError:
    lines = (result.stderr or "no message").strip().splitlines() or ["no message"]
    return AgentError(
        f"groups-watch: aws autoscaling {what} failed: {lines[-1][:400]}. The managers' role needs "
        "autoscaling:DescribeAutoScalingGroups and CompleteLifecycleAction (the README's Rights table)"
    )


def describe(node: env.NodeEnv, groups: list[Group]) -> dict[str, Asg]:
    """Each group's ASG as AWS sees it now, by group name; a missing ASG fails the pass."""
    if not groups:
        return {}
    result = _aws(node, "describe-auto-scaling-groups", "--auto-scaling-group-names", *[g.asg for g in groups])
    if result.returncode != 0:
        raise _failed("describe-auto-scaling-groups", result)
    try:
        found = {
            a["AutoScalingGroupName"]: Asg(
                int(a["DesiredCapacity"]), int(a["MinSize"]), int(a["MaxSize"]),
                {str(i["InstanceId"]): str(i["LifecycleState"]) for i in a.get("Instances") or []},
            )
            for a in json.loads(result.stdout)["AutoScalingGroups"]
        }  # fmt: skip
    except (ValueError, KeyError, TypeError) as error:
        raise AgentError(f"groups-watch: describe-auto-scaling-groups answered {error!r}, not its JSON") from None
    for group in groups:
        if group.asg not in found:
            raise AgentError(
                f"groups-watch: AWS has no Auto Scaling group {group.asg} (group {group.name}); "
                "'pulumi up' makes it, or the groups --configure wrote name one that is gone"
            )
    return {group.name: found[group.asg] for group in groups}


def complete(node: env.NodeEnv, group: Group, instance: str) -> str:
    """Let AWS terminate the instance now; 'completed' or 'no longer waiting'."""
    if not INSTANCE_RE.match(instance):
        raise AgentError(f"groups-watch: AWS gave {instance[:40]!r} where an instance id belongs")
    result = _aws(
        node, "complete-lifecycle-action", "--lifecycle-action-result", "CONTINUE",
        "--auto-scaling-group-name", group.asg, "--lifecycle-hook-name", group.hook, "--instance-id", instance,
    )  # fmt: skip
    if result.returncode == 0:
        return "completed"
    # The hook timed out, or another pass completed it: nothing waits any more.
    if "no active lifecycle action" in result.stderr.lower():
        return "no longer waiting"
    raise _failed(f"complete-lifecycle-action ({group.name} {instance})", result)


# -- whose node is whose ----------------------------------------------------------------
def claim(node: Node) -> tuple[str, str, str] | None:
    """(group, instance, capacity) the node's engine labels claim; None without a claim."""
    labels = node.engine_labels
    if GROUP not in labels:
        return None
    return str(labels.get(GROUP)), str(labels.get(INSTANCE, "")), str(labels.get(CAPACITY, ""))


def instance_of(node: Node) -> tuple[str, str] | None:
    """(group, instance) by the leader's node labels, else by the node's claim."""
    if GROUP in node.labels:
        return node.labels[GROUP], node.labels.get(INSTANCE, "")
    claimed = claim(node)
    return claimed[:2] if claimed else None


def backed(asg: Asg | None, instance: str) -> bool:
    return asg is not None and INSTANCE_RE.match(instance) is not None and asg.instances.get(instance) not in (
        None, *GONE,
    )  # fmt: skip


def label_pass(
    table: list[Node], groups: list[Group], asgs: dict[str, Asg], verb: str = "groups-watch"
) -> tuple[list[Node], list[str]]:
    """Give each worker whose claim AWS backs its group's node labels. Returns the table as
    labelled now and the claims AWS does not back ("host (group/instance)"). Two Ready nodes
    claiming one instance: a copied claim; only the one labelled first keeps it."""
    by_name = {g.name: g for g in groups}
    claimants = Counter(claim(n)[:2] for n in table if n.status == "ready" and n.role == "worker" and claim(n))
    labelled, unbacked = [], []
    for node in table:
        claimed = claim(node)
        if claimed is None:
            labelled.append(node)
            continue
        name, instance, capacity = claimed
        group = by_name.get(name)
        copied = claimants[(name, instance)] > 1 and node.labels.get(INSTANCE) != instance
        if group is None or node.role != "worker" or capacity not in CAPACITIES or not backed(asgs.get(name), instance):
            unbacked.append(f"{node.host} ({name[:40]}/{instance[:40]})")
            labelled.append(node)
            continue
        if copied:
            unbacked.append(f"{node.host} ({name}/{instance}, claimed by {claimants[(name, instance)]} Ready nodes)")
            labelled.append(node)
            continue
        want = {GROUP: name, INSTANCE: instance, CAPACITY: capacity, **group.labels}
        change = {key: value for key, value in sorted(want.items()) if node.labels.get(key) != value}
        if change:
            adds = [arg for key, value in change.items() for arg in ("--label-add", f"{key}={value}")]
            run.docker("node", "update", *adds, checked_id(node.id))
            print(f"{verb}: {node.host} is {instance} of {name} ({capacity}): labelled", flush=True)
        labelled.append(node._replace(labels={**node.labels, **change}))
    return labelled, unbacked


# -- scale-in: drain, wait, remove, let AWS go on ---------------------------------------
class Leaving(NamedTuple):
    group: Group
    instance: str
    node: Node | None
    deadline: float  # run.now() by which it goes, drained or not


def drain_pass(
    node_env: env.NodeEnv, table: list[Node], groups: list[Group], asgs: dict[str, Asg]
) -> tuple[list[str], list[str]]:
    """Every instance held in Terminating:Wait: its node drained (all at once, so several
    reclaims share the bound), then each removed and completed as soon as its tasks have
    stopped or its bound is reached. Returns the instances completed and the nodes removed."""
    leaving = []
    for group in groups:
        for instance, state in sorted(asgs[group.name].instances.items()):
            if state != WAITING or not INSTANCE_RE.match(instance):
                continue
            found = _nodes_of(table, group.name, instance)
            if not found:
                leaving.append(Leaving(group, instance, None, run.now()))  # it never joined: at once
            for node in found:
                leaving.append(Leaving(group, instance, node, _drain(node)))
    completed, removed = [], []
    # Bounded: each item leaves by its deadline, at most DRAIN_BOUND from now.
    while leaving:
        for item in list(leaving):
            if item.node is None or run.now() >= item.deadline or _settled(item.node):
                leaving.remove(item)
                if item.node is not None:
                    _remove(item.node)
                    removed.append(item.node.id)
                # Two nodes claiming one instance (a node that joined twice): AWS goes on after the last.
                if item.instance not in [i.instance for i in leaving]:
                    outcome = complete(node_env, item.group, item.instance)
                    print(f"groups-watch: {item.instance} of {item.group.name}: lifecycle action {outcome}", flush=True)
                    completed.append(item.instance)
        if leaving:
            run.pause(DRAIN_POLL)
    return completed, removed


def _nodes_of(table: list[Node], name: str, instance: str) -> list[Node]:
    """The workers the leader labelled with the instance; else the one node that claims it
    (joined, not labelled yet). A claim two nodes make drains neither: one of them lies."""
    workers = [n for n in table if n.role == "worker"]
    labelled = [n for n in workers if n.labels.get(GROUP) == name and n.labels.get(INSTANCE) == instance]
    claimants = [n for n in workers if (claim(n) or ())[:2] == (name, instance)]
    return labelled or (claimants if len(claimants) == 1 else [])


def _drain(node: Node) -> float:
    """Drain the node (once: a later pass finds the label) and return its deadline."""
    since = node.labels.get(DRAINING_SINCE, "")
    if not since.isdigit() or node.availability != "drain":
        since = str(int(time.time()))
        run.docker(
            "node", "update", "--availability", "drain", "--label-add", f"{DRAINING_SINCE}={since}", checked_id(node.id)
        )
        print(f"groups-watch: {node.host} drained: AWS is taking its instance away", flush=True)
    left = DRAIN_BOUND - (time.time() - int(since))
    return run.now() + max(0.0, min(left, DRAIN_BOUND))


def _settled(node: Node) -> bool:
    """No task runs on it any more; a node that is down runs none that could stop."""
    return node.status != "ready" or nodes.tasks_running(node.id) == 0


def _remove(node: Node) -> None:
    running = 0 if node.status != "ready" else nodes.tasks_running(node.id)
    run.docker("node", "rm", "--force", checked_id(node.id))
    left = f" at the drain's bound ({DRAIN_BOUND}s), {running} task(s) still running" if running else ""
    print(f"groups-watch: {node.host} removed from the swarm{left}", flush=True)


# -- dead nodes -------------------------------------------------------------------------
def dead_pass(table: list[Node], asgs: dict[str, Asg], self_id: str, verb: str = "groups-watch") -> list[str]:
    """Remove each down node of a watched group whose instance AWS no longer has in it (or
    that a Ready node of the same instance replaced). Never a Ready node, never a manager,
    never a node that is not a group's. Returns the ids removed."""
    removed = []
    for node in table:
        whose = instance_of(node)
        if node.status != "down" or node.role != "worker" or node.id == self_id or whose is None:
            continue
        name, instance = whose
        if name not in asgs:
            continue  # a group this node does not watch: nothing is known of it
        twin = any(o.id != node.id and o.status == "ready" and instance_of(o) == whose for o in table)
        if backed(asgs[name], instance) and not twin:
            continue
        run.docker("node", "rm", "--force", checked_id(node.id))
        why = (
            "a Ready node has its instance"
            if backed(asgs[name], instance)
            else f"AWS no longer has {instance[:40]} in {name}"
        )
        print(f"{verb}: removed down node {node.host} ({node.id}): {why}", flush=True)
        removed.append(node.id)
    return removed


# -- what the status view shows ---------------------------------------------------------
def census(table: list[Node], groups: list[Group], asgs: dict[str, Asg], completed: list[str]) -> list[dict]:
    counted = []
    for group in groups:
        asg = asgs[group.name]
        serving = [
            n for n in table
            if n.labels.get(GROUP) == group.name and n.status == "ready" and n.availability != "drain"
        ]  # fmt: skip
        up = {n.labels.get(INSTANCE) for n in serving}
        states = asg.instances
        counted.append(
            {
                "name": group.name, "asg": group.asg, "desired": asg.desired, "min": asg.min, "max": asg.max,
                "in_service": len(serving),
                "joining": sum(1 for i, s in states.items() if s in STARTING and i not in up),
                "draining": sum(1 for i, s in states.items() if s == WAITING and i not in completed),
                "spot": sum(1 for n in serving if n.labels.get(CAPACITY) == "spot"),
                "on_demand": sum(1 for n in serving if n.labels.get(CAPACITY) == "on-demand"),
            }
        )  # fmt: skip
    return counted


def write_record(ok: bool, said: str, groups: list[dict]) -> None:
    """The last pass, for `scripts/swarm status` (written whole: the view never reads half)."""
    at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    nodefs.replace(paths.GROUPS_RECORD, json.dumps({"at": at, "ok": ok, "said": said, "groups": groups}) + "\n")


def summary(counted: list[dict]) -> str:
    return "; ".join(
        f"{g['name']} {g['in_service']}/{g['desired']} in service ({g['spot']} spot), "
        f"{g['joining']} joining, {g['draining']} draining"
        for g in counted
    )


# -- the verb ---------------------------------------------------------------------------
def groups_watch(args) -> None:
    if getattr(args, "configure", None) is not None:
        configure(args.configure)
        return
    if getattr(args, "unconfigure", False):
        unconfigure()
        return
    groups = load_config()
    if groups is None:
        print(f"groups-watch: no worker groups here ({paths.GROUPS_CONFIG} is not there)")
        return
    node_env = env.load()
    try:
        with lock.held("groups-watch", 0):  # a backup, a join or reconcile first; the next tick runs
            _watch(node_env, groups)
    except lock.Busy as busy:
        print(f"groups-watch: not now: {busy}")


def _watch(node_env: env.NodeEnv, groups: list[Group]) -> None:
    if dockerd.has_systemd() and "docker.service" not in dockerd.active_units():
        # Calling docker would start it through its socket, under a backup that stopped it.
        print("groups-watch: docker.service is not running; nothing done")
        return
    leader = run.docker("node", "inspect", "self", "--format", "{{.ManagerStatus.Leader}}", check=False)
    if leader.returncode != 0 or leader.stdout.strip() != "true":
        if not _from_timer():
            print("groups-watch: not the swarm's leader; the leader watches the groups")
        return
    self_id = checked_id(dockerd.swarm_info().get("NodeID"))
    seen: list[dict] = []
    before = _last_said()
    try:
        said = one_pass(node_env, groups, self_id, seen)
    except AgentError as error:
        write_record(False, str(error), seen)
        raise
    write_record(True, said, seen)
    if said != before or not _from_timer():
        print(said)


def _from_timer() -> bool:
    """Run by swarm-groups.timer (systemd sets INVOCATION_ID for its units): every 10 s on
    every manager, so a pass that changed nothing says nothing, and the journal holds the
    changes. By hand every pass speaks. Labels, drains and removals always speak."""
    return bool(os.environ.get("INVOCATION_ID"))


def _last_said() -> str:
    try:
        with open(paths.GROUPS_RECORD) as handle:
            return str(json.load(handle).get("said", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def one_pass(node_env: env.NodeEnv, groups: list[Group], self_id: str, seen: list[dict]) -> str:
    """Label, drain, remove the dead, count; `seen` gets the counts as soon as they are known."""
    asgs = describe(node_env, groups)
    table, unbacked = label_pass(nodes.node_table(), groups, asgs)
    if unbacked:
        print(f"groups-watch: not labelled, AWS does not list their instance in their group: {', '.join(unbacked)}")
    seen[:] = census(table, groups, asgs, [])
    completed, gone = drain_pass(node_env, table, groups, asgs)
    table = [n for n in table if n.id not in gone]
    removed = dead_pass(table, asgs, self_id)
    seen[:] = census([n for n in table if n.id not in removed], groups, asgs, completed)
    return f"groups-watch: {summary(seen) or 'no groups'}"


# -- reconcile --groups -----------------------------------------------------------------
def reconcile_groups(names: list[str], timeout: int, self_id: str) -> None:
    """reconcile's part for worker groups: label and remove the dead as the watcher does
    (its timer waits while reconcile holds the lock), until each group named has at least
    its ASG's current desired count of Ready nodes labelled with it."""
    node_env = env.load()
    groups = configured("reconcile: --groups", names)
    deadline, said = run.now() + timeout, set()
    while True:
        try:
            asgs = describe(node_env, groups)
        except AgentError as error:
            raise AgentError(f"reconcile: {error}") from None
        table, unbacked = label_pass(nodes.node_table(), groups, asgs, "reconcile")
        for line in sorted(set(unbacked) - said):
            print(f"reconcile: not labelled, AWS does not list its instance in its group: {line}", flush=True)
        said |= set(unbacked)
        removed = dead_pass(table, asgs, self_id, "reconcile")
        counted = {c["name"]: c for c in census([n for n in table if n.id not in removed], groups, asgs, [])}
        short = [counted[name] for name in names if counted[name]["in_service"] < counted[name]["desired"]]
        if not short:
            print(f"reconcile: worker groups at their desired count: {summary([counted[n] for n in names])}")
            return
        if run.now() >= deadline:
            raise AgentError(f"reconcile: timed out after {timeout}s; {_short(short[0])}")
        run.pause(RECONCILE_POLL)


def _short(group: dict) -> str:
    return (
        f"worker group {group['name']} has {group['in_service']} Ready node(s) labelled {GROUP}={group['name']} of "
        f"{group['desired']} desired ({group['joining']} instance(s) still joining). Look at "
        f"/var/log/swarm-user-data.log on its instances ('aws autoscaling describe-auto-scaling-groups "
        f"--auto-scaling-group-names {group['asg']}' lists them)"
    )
