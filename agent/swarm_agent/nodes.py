"""The swarm's node list and services, kept as Pulumi wants them, from a manager.

`reconcile` runs on manager 0 after every node has joined (yesterday's nodes, Down after
a restore, are removed); `retire` runs on a manager that stays before a node's machine
goes during the day (drained, demoted within quorum, removed); `teardown-mark` is set by
the nightly teardown once its backup is taken, so the retire hooks that follow have
nothing to do; `converge` waits until every service runs its desired replicas. What
docker prints is read as JSON, and every node id is checked before it goes into a call.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import NamedTuple

from swarm_agent import data, dockerd, env, lock, run
from swarm_agent.run import AgentError, CallFailed

NODE_ID_RE = re.compile(r"^[a-z0-9]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9.-]+$")
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
IPV4_RE = re.compile(r"^[0-9.]+$")
TEARDOWN_LABEL = "swarm.teardown"
# A worker group's node (groups.py): its engine label claims it, the leader's node label
# confirms it once AWS lists its instance. Reconcile leaves such nodes to the watcher.
GROUP_LABEL = "swarm.group"
RETIRE_LOCK_WAIT = 600


class Node(NamedTuple):
    id: str
    host: str
    status: str  # ready, down, unknown (Status.State)
    role: str  # manager, worker (Spec.Role)
    addr: str
    labels: dict  # node labels (Spec.Labels): what the swarm's managers set
    engine_labels: dict = {}  # dockerd's own labels (Description.Engine.Labels): what the node claims
    availability: str = "active"  # active, pause, drain (Spec.Availability)


def checked_id(value: object) -> str:
    if not isinstance(value, str) or not NODE_ID_RE.match(value):
        raise AgentError(f"docker gave {str(value)[:40]!r} where a node id belongs")
    return value


def json_lines(text: str) -> list[dict]:
    """`--format '{{json .}}'`: one JSON object a line."""
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise AgentError(f"docker printed something that is not JSON: {text[:200]!r}") from None


def node_list(*filters: str) -> list[dict]:
    """`docker node ls` as JSON objects (ID, Hostname, Status, ManagerStatus, ...)."""
    return json_lines(run.docker("node", "ls", *filters, "--format", "{{json .}}").stdout)


def node_table() -> list[Node]:
    """Every node of the swarm, as `docker node inspect` describes it."""
    ids = [checked_id(n.get("ID")) for n in node_list()]
    return describe(ids) if ids else []


def describe(ids: list[str]) -> list[Node]:
    text = run.docker("node", "inspect", *ids).stdout
    try:
        described = json.loads(text)
    except json.JSONDecodeError:
        raise AgentError(f"docker node inspect printed something that is not JSON: {text[:200]!r}") from None
    nodes = []
    for d in described:
        status, spec, description = d.get("Status") or {}, d.get("Spec") or {}, d.get("Description") or {}
        nodes.append(
            Node(
                checked_id(d.get("ID")),
                description.get("Hostname", ""),
                status.get("State", ""),
                spec.get("Role", ""),
                status.get("Addr", ""),
                spec.get("Labels") or {},
                (description.get("Engine") or {}).get("Labels") or {},
                spec.get("Availability", "active"),
            )
        )
    return nodes


def _names(csv: str) -> list[str]:
    return [name for name in csv.split(",") if name]


def is_group_node(node: Node) -> bool:
    """A node that is, or claims to be, a worker group's: the groups' watcher adds, drains and
    removes those (groups.py), never reconcile or the count of named nodes."""
    return GROUP_LABEL in node.labels or GROUP_LABEL in node.engine_labels


def of_watched_group(node: Node, watched: set[str]) -> bool:
    """A group node whose group the watcher still watches (reconcile --groups names it). A
    down node of a group taken out of swarm:workerGroups has no watcher left to remove it."""
    return is_group_node(node) and (node.labels.get(GROUP_LABEL) or node.engine_labels.get(GROUP_LABEL)) in watched


# -- reconcile --------------------------------------------------------------------------
@lock.exclusive(600)
def reconcile(args) -> None:
    """Every node named is Ready in its role. Down nodes that were replaced (a Ready node has
    the name) or are named nowhere are removed; Ready nodes named nowhere are left alone:
    Pulumi deletes removed and replaced machines at the end of the update, after their
    retire hooks. With --groups, then each worker group's nodes labelled (those AWS vouches
    for), its dead ones removed, and its ASG's current desired count of them Ready."""
    managers, workers = args.managers, args.workers or ""
    if not managers:
        raise AgentError("reconcile: --managers names,... is required")
    labels = _data_labels(getattr(args, "data", "") or "")
    group_names = _names(getattr(args, "groups", "") or "")
    if group_names:
        # groups.py builds on this module: imported only when reconcile waits for groups.
        from swarm_agent import groups

        groups.configured("reconcile: --groups", group_names)  # before anything changes
    env.load()
    self_id = checked_id(dockerd.require_manager("reconcile").get("NodeID"))
    wanted = set(_names(managers) + _names(workers))
    deadline = run.now() + args.timeout
    while True:
        remove_stale_nodes(wanted, self_id, set(group_names))
        table = node_table()
        missing = missing_nodes(table, "manager", managers) + missing_nodes(table, "worker", workers)
        if not missing:
            break
        if run.now() >= deadline:
            raise AgentError(f"reconcile: timed out after {args.timeout}s; not Ready in their role:{missing}")
        # A node that has just joined reads Ready a moment later: look again soon.
        run.pause(0.5)
    label_data_nodes(table, labels)
    if group_names:
        groups.reconcile_groups(group_names, args.timeout, self_id)
    extra = "".join(
        f" {n.host}" for n in table if n.status == "ready" and n.host not in wanted and not is_group_node(n)
    )
    named = managers.replace(",", " ") + (" " + workers.replace(",", " ") if workers else "")
    print(
        f"reconcile: every node named is Ready ({named})"
        + (f"; still here until the end of this update:{extra}" if extra else "")
    )
    print(run.docker("node", "ls").stdout, end="", flush=True)


def _data_labels(csv: str) -> dict[str, str]:
    """--data host=label,...: which node carries which data volume."""
    labels = {}
    for pair in _names(csv):
        host, _, label = pair.partition("=")
        if not NAME_RE.match(host) or not data.NAME_RE.match(label):
            raise AgentError(f"reconcile: --data wants host=label,..., got '{pair}'")
        labels[host] = label
    return labels


def label_data_nodes(table: list[Node], labels: dict[str, str]) -> None:
    """Each Ready node with a data volume carries `swarm.data=<its name>`, and no other
    node carries it: a stack's `node.labels.swarm.data == <name>` must only ever place
    the service where its data is mounted (a volume moved or dropped takes its label)."""
    for node in table:
        if node.status != "ready":
            continue
        want, have = labels.get(node.host), node.labels.get(data.LABEL)
        if want == have:
            continue
        change = ["--label-add", f"{data.LABEL}={want}"] if want else ["--label-rm", data.LABEL]
        run.docker("node", "update", *change, checked_id(node.id))
        print(f"reconcile: {node.host} labelled {data.LABEL}={want}" if want else
              f"reconcile: {node.host} no longer carries {data.LABEL} ({have})", flush=True)  # fmt: skip


def remove_stale_nodes(wanted: set[str], self_id: str, watched: set[str] = frozenset()) -> None:
    table = node_table()
    for node in table:
        # Yesterday's nodes read "unknown" right after a restore and "down" later. A watched
        # group's nodes are the watcher's: it removes them once AWS no longer lists their
        # instance; a Ready group node is never removed here, whatever its group.
        if node.status == "ready" or node.id == self_id or of_watched_group(node, watched):
            continue
        if is_group_node(node) and node.status != "down":
            continue  # "unknown" right after a leader change: wait until the swarm says down
        twin = any(other.host == node.host and other.status == "ready" for other in table)
        if not twin and node.host in wanted:
            continue
        if node.role == "manager":
            # After --force-new-cluster old managers are no longer in Raft and demote says so.
            _quietly("node", "demote", node.id)
        run.docker("node", "rm", "--force", node.id)
        why = "a Ready twin exists" if twin else "not expected"
        print(f"reconcile: removed {node.status} {node.role} {node.host} ({node.id}), {why}", flush=True)


def missing_nodes(table: list[Node], role: str, csv: str) -> str:
    """ " name (what the swarm has)" for each name with no Ready node in `role`."""
    missing = ""
    for name in _names(csv):
        if any(n.host == name and n.status == "ready" and n.role == role for n in table):
            continue
        seen = ", ".join(f"{n.status} {n.role}" for n in table if n.host == name)
        missing += f" {name} (wanted: Ready {role}; the swarm has: {seen or 'no such node'})"
    return missing


# -- retire -----------------------------------------------------------------------------
def retire(args) -> None:
    """Run on a manager that stays, before NAME's machine goes during the day: drain it and
    wait (bounded) for its tasks to run elsewhere, demote it if it is a manager (never
    below quorum), then remove it from the node list. A swarm being torn down (the
    teardown hook marked it after the backup) needs none of it."""
    name, addr = args.name, args.addr
    if not (NAME_RE.match(name or "") and IPV4_RE.match(addr or "")):
        raise AgentError("retire: --name NAME and --addr IPv4 are required")
    env.load()
    if dockerd.in_no_swarm():
        why = "its morning failed before the swarm formed"
        print(f"retire: this manager is in no swarm ({why}); nothing to do for {name}")
        return
    self_id = checked_id(dockerd.require_manager("retire").get("NodeID"))
    dockerd.wait_leader(60)
    if teardown_marked():
        print(f"retire: the swarm is being torn down; nothing to do for {name}")
        return
    # One at a time here: two demotions at once could each count the other as reachable.
    # The node's lock (not the whole verb's): a torn-down swarm's retires, above, need none.
    with lock.held("retire", RETIRE_LOCK_WAIT):
        node = find_node(name, addr)
        if node is None:
            print(f"retire: {name} ({addr}) is not in the swarm; nothing to do")
            return
        if node.id == self_id:
            raise AgentError(f"retire: {name} is this node; retire it from another manager")
        manager = node.role == "manager"
        if manager:
            check_quorum_without(node.id, name)
        dockerd.raft_retry("node", "update", "--availability", "drain", node.id)
        wait_drained(node.id, name, args.timeout)
        if manager:
            check_quorum_without(node.id, name)
            dockerd.raft_retry("node", "demote", node.id)
            wait_role(node.id, name, "worker")
        dockerd.raft_retry("node", "rm", "--force", node.id)
    print(f"retire: {name} ({addr}) drained{', demoted' if manager else ''} and removed from the swarm")


def find_node(name: str, addr: str) -> Node | None:
    """The node with this hostname at this address (a replaced worker and its successor share
    the name until the end of the update, not the address), or else the only node with
    this hostname (a manager sees a worker at the address it connects from, which on a
    machine with two addresses need not be the advertised one)."""
    named = [n for n in node_table() if n.host == name]
    exact = [n for n in named if n.addr == addr]
    if exact:
        return exact[-1]
    return named[0] if len(named) == 1 else None


def check_quorum_without(node_id: str, name: str) -> None:
    """Refuse (nothing changed) unless the managers left once NAME is demoted still have a
    reachable majority."""
    managers = node_list("--filter", "role=manager")
    total = len(managers)
    reachable = sum(1 for m in managers if m.get("ID") != node_id and m.get("ManagerStatus") in ("Leader", "Reachable"))
    need = (total - 1) // 2 + 1
    if reachable < need:
        raise AgentError(
            f"retire: demoting manager {name} would leave {total - 1} manager(s), of which {reachable} "
            f"reachable; Raft needs {need}. Nothing was demoted: bring the unreachable managers back "
            "('docker node ls' on a manager), then run 'pulumi up' again."
        )


def wait_drained(node_id: str, name: str, timeout: int) -> None:
    """Until no task runs on the node and every service that has somewhere else to go is
    at its replicas (one pinned to this node's data waits for its new machine: waiting
    for it would only spend the bound); at the bound, a note and on (the node goes anyway)."""
    deadline = run.now() + timeout
    while True:
        running = tasks_running(node_id)
        late = unconverged_services(placeable_only=True)
        if running == 0 and not late:
            return
        if run.now() >= deadline:
            run.note(
                f"retire: {name} drained, but after {timeout}s: {running} task(s) still running on it; "
                f"services not at their replicas:{late or ' none'}; going on"
            )
            return
        run.pause(1)


def tasks_running(node_id: str) -> int:
    """Tasks Running on the node; 0 when docker cannot say (as the bash agent counted)."""
    try:
        result = run.docker("node", "ps", node_id, "--format", "{{json .}}", check=False)
    except CallFailed:
        return 0
    if result.returncode != 0:
        return 0
    return sum(1 for t in json_lines(result.stdout) if str(t.get("CurrentState", "")).startswith("Running"))


def wait_role(node_id: str, name: str, role: str) -> None:
    def has_role() -> bool:
        try:
            return describe([node_id])[0].role == role
        except (AgentError, IndexError):  # asked again until the bound
            return False

    run.wait_until(has_role, 60, lambda: f"retire: {name} is not a {role} 60s after 'docker node demote'")


# -- services ---------------------------------------------------------------------------
def unconverged_services(placeable_only: bool = False) -> str:
    """Services whose running replicas are not their desired count (" name 2/3 ..."); with
    `placeable_only`, not those whose missing tasks no node can take now."""
    late = ""
    for service in json_lines(run.docker("service", "ls", "--format", "{{json .}}").stdout):
        # "2/3", or "0/1 (1/1 completed)" for a job: the count is the first word.
        replicas = (str(service.get("Replicas") or "").split() or [""])[0]
        running, _, desired = replicas.partition("/")
        name = str(service.get("Name", ""))
        if running != desired and not (placeable_only and unplaceable(name)):
            late += f" {name} {replicas}"
    return late


def unplaceable(service: str) -> bool:
    """Whether every task the service still wants running waits for a node that does not
    exist yet (the scheduler's "no suitable node": a constraint such as the node label of
    a data volume whose machine is being replaced)."""
    if not SERVICE_NAME_RE.match(service):
        return False
    listing = run.docker(
        "service", "ps", "--filter", "desired-state=running", "--format", "{{.CurrentState}}|{{.Error}}", service,
        check=False,
    )  # fmt: skip
    waiting = [line for line in listing.stdout.splitlines() if not line.startswith("Running")]
    return listing.returncode == 0 and bool(waiting) and all("no suitable node" in line for line in waiting)


def converge(args) -> None:
    """Until every service runs its desired replicas (bounded by args.timeout)."""
    env.load()
    dockerd.require_manager("converge")
    seen = {"late": ""}

    def settled() -> bool:
        try:
            seen["late"] = unconverged_services()
        except CallFailed as error:
            # A leader election can fail one `docker service ls`: look again.
            seen["late"] = f" (docker service ls failed: {error})"
            return False
        return not seen["late"]

    run.wait_until(
        settled, args.timeout, lambda: f"converge: after {args.timeout}s, services not at their replicas:{seen['late']}"
    )
    print("converge: every service runs its desired replicas")


# -- teardown-mark ----------------------------------------------------------------------
def teardown_mark(args) -> None:
    """The nightly teardown marks the swarm (a label on this node) once its backup is taken,
    so the retire hooks that follow skip a day-two removal's work."""
    env.load()
    self_id = checked_id(dockerd.require_manager("teardown-mark").get("NodeID"))
    if args.clear:
        _quietly("node", "update", "--label-rm", TEARDOWN_LABEL, self_id)
        print("teardown-mark: clear")
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run.docker("node", "update", "--label-add", f"{TEARDOWN_LABEL}={stamp}", self_id)
    print("teardown-mark: marked; the retire hooks of this teardown have nothing to do")


def teardown_marked() -> bool:
    return any(node.labels.get(TEARDOWN_LABEL) for node in node_table())


def _quietly(*args: str) -> None:
    """A docker call whose failure changes nothing (bash's `|| true`)."""
    try:
        run.docker(*args, check=False)
    except CallFailed:  # timed out
        pass
