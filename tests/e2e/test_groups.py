"""Worker groups on the bed: an Auto Scaling group of spot and on-demand workers that join
by themselves, are drained before AWS takes them, and come back every morning.

One stack (1 manager + 1 pinned worker, and the group `fleet`: desired 5 of which the
first 2 on-demand and the rest spot, so 2 on-demand + 3 spot) lives through the module:
the morning forms the swarm with the group (its machines fetch the agent from the bucket,
check its sha256, read the join token from SSM and join; the leader's watcher checks
each against AWS before it labels it); during the day the group is scaled 5 -> 2 -> 6 -> 2
as AWS would (the bed's Auto Scaling, outside Pulumi) while a probe service of 4 replicas
answers, a spot worker is reclaimed with its two minutes' notice, and the same 4 workers
are added as pinned workers in one `up` for comparison; then three nights and mornings
with the same tokens and the group back. Figures go to the engine's log (`groups:` lines).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request

import boto3
import pytest
from testbed.bed import BED_REGION, LOCAL_BUSYBOX, S3_CREDENTIALS, wait_until
from testbed.engine import scenario_engine
from testbed.verify import fp, wait_service

pytestmark = pytest.mark.e2e

STACK = "groups"
GROUP = {"name": "fleet", "desired": 5, "max": 6, "onDemandBase": 2, "onDemandPercent": 0,
         "instanceTypes": ["t3.medium", "t3a.medium"], "labels": {"tier": "fleet"}}  # fmt: skip
ASG = f"swarm-{STACK}-fleet"
PROBE_PORT = 8089
PARAMETER = f"/swarm/swarm/{STACK}/worker-join-token"


@pytest.fixture(scope="module")
def engine(bed, log_dir):
    config = {"swarm:workerGroups": json.dumps([GROUP])}
    for engine in scenario_engine(bed, log_dir, STACK, (1, 1), (160, 19), **config):
        try:
            yield engine
        finally:
            engine.destroy()


@pytest.fixture(scope="module")
def tokens():
    return {}


def labelled(leader) -> list[dict]:
    """The group's nodes as the swarm sees them: Ready and labelled by the watcher."""
    ids = leader.docker("node", "ls", "-q").split()
    # A node the watcher removes between the two calls: inspect says so and prints the rest.
    described = json.loads(leader.docker("node", "inspect", *ids, check=False) or "[]")
    return [
        n for n in described
        if (n["Spec"].get("Labels") or {}).get("swarm.group") == "fleet" and n["Status"]["State"] == "ready"
    ]  # fmt: skip


def group_hosts(engine) -> set[str]:
    return {i["InstanceId"] for i in engine.bed.autoscaling.describe(ASG)["Instances"]}


def wait_group(engine, count: int, timeout: float = 300) -> list[dict]:
    """`count` instances InService and as many Ready labelled nodes, and no other group node."""
    leader = engine.host_of("manager-0")

    def settled():
        instances = [i for i in engine.bed.autoscaling.describe(ASG)["Instances"] if i["LifecycleState"] == "InService"]
        nodes = labelled(leader)
        listed = [n for n in leader.docker("node", "ls", "--format", "{{.Hostname}}").split() if n.startswith("fleet-")]
        ok = len(instances) == count and len(nodes) == count and len(listed) == count
        return nodes if ok else None

    return wait_until(f"the group at {count} Ready nodes, and no other", settled, timeout, interval=1)


class Prober(threading.Thread):
    """A client of the probe service, as a load balancer would be: every 0.3 s each of the
    stack's machines is asked; a probe fails when none answers. It also counts how many
    replicas answered, so a dip shows even when the probe as a whole did not fail."""

    def __init__(self, bed):
        super().__init__(daemon=True)
        self.bed, self.stop, self.total, self.failed = bed, threading.Event(), 0, 0
        self.answering: list[int] = []

    def addresses(self) -> list[str]:
        try:
            hosts = list(self.bed.hosts.values())
        except RuntimeError:  # the bed's host list changed under us: look again
            return []
        return [
            h.ip for h in hosts if h.alive and (h.name.startswith(f"swarm-{STACK}-") or h.name.startswith("fleet-"))
        ]

    def run(self):
        while not self.stop.wait(0.3):
            addresses = self.addresses()
            random.shuffle(addresses)
            answered = sum(self.answers(ip) for ip in addresses)
            self.total += 1
            self.answering.append(answered)
            self.failed += not answered

    @staticmethod
    def answers(ip: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{ip}:{PROBE_PORT}/hostname", timeout=0.5) as response:
                return response.status == 200
        except OSError:
            return False


# -- the morning ------------------------------------------------------------------------------
def test_the_morning_forms_the_swarm_with_the_group_spot_and_on_demand(engine, bed, tokens):
    started = time.monotonic()
    result = engine.up()
    formed = time.monotonic() - started
    leader = engine.host_of("manager-0")
    nodes = wait_group(engine, 5, timeout=60)
    capacity = sorted(n["Spec"]["Labels"]["swarm.capacity"] for n in nodes)
    assert capacity == ["on-demand"] * 2 + ["spot"] * 3, capacity
    described = {i["InstanceId"]: i for i in bed.autoscaling.describe(ASG)["Instances"]}
    for node in nodes:
        labels = node["Spec"]["Labels"]
        # Each label backed by AWS: the instance is the group's, of the capacity AWS gave it.
        assert labels["swarm.instance"] in described and labels["tier"] == "fleet"
        assert described[labels["swarm.instance"]]["Lifecycle"] == labels["swarm.capacity"]
        assert node["Description"]["Hostname"] == f"fleet-{labels['swarm.instance']}"
    (out,) = result.outputs["workerGroups"]
    assert out["autoScalingGroupName"] == ASG and out["placement"] == "node.labels.swarm.group==fleet"
    # The token in SSM is the swarm's, and it is nowhere in the state or the engine's log.
    ssm = boto3.client("ssm", endpoint_url=bed.s3_endpoint, region_name=BED_REGION, **S3_CREDENTIALS)
    token = ssm.get_parameter(Name=PARAMETER, WithDecryption=True)["Parameter"]["Value"]
    assert token == result.outputs["workerJoinToken"] and token.startswith("SWMTKN-1-")
    assert token not in engine.state_path.read_text() and token not in engine.log_path.read_text()
    tokens["worker"] = fp(token)
    # The whole morning: the formation waited for the group (reconcile counts it by label).
    engine.log(f"groups: morning formed with 5 group workers (2 on-demand, 3 spot) in {formed:.1f} s")
    assert leader.docker("node", "ls", "--filter", "role=manager", "-q").strip()


def test_a_claim_aws_does_not_back_is_never_labelled(engine):
    """A node may say anything in its engine labels; only AWS's word makes node labels."""
    leader = engine.host_of("manager-0")
    worker = engine.host_of("worker-0")  # a pinned worker claims to be of the group
    original = worker.run(["cat", "/etc/docker/daemon.json"]).stdout.decode()
    claim = {**json.loads(original), "labels": ["swarm.group=fleet", "swarm.instance=i-0123456789abcdef0"]}
    name = f"swarm-{STACK}-worker-0"

    def engine_labels() -> dict:
        return json.loads(leader.docker("node", "inspect", name))[0]["Description"]["Engine"].get("Labels") or {}

    try:
        worker.run(["sh", "-c", "cat > /etc/docker/daemon.json"], input=json.dumps(claim).encode())
        worker.run(["systemctl", "restart", "docker"])
        wait_until("the claim in the node's description", lambda: "swarm.group" in engine_labels(), 60, interval=1)
        watched = leader.run(["/usr/local/sbin/swarm-node", "groups-watch"], check=False)
        mine = json.loads(leader.docker("node", "inspect", name))[0]
        assert "swarm.group" not in (mine["Spec"].get("Labels") or {}), "a claim nobody backs was labelled"
        assert len(labelled(leader)) == 5, watched.stdout.decode() + watched.stderr.decode()
    finally:
        worker.run(["sh", "-c", "cat > /etc/docker/daemon.json"], input=original.encode())
        worker.run(["systemctl", "restart", "docker"])
        wait_until("the pinned worker Ready again", lambda: "swarm.group" not in engine_labels(), 60, interval=1)


# -- the day ----------------------------------------------------------------------------------
def test_scaled_5_2_6_2_by_aws_while_the_probe_answers_and_a_spot_reclaim_is_drained(engine, bed):
    leader = engine.host_of("manager-0")
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "probe", "--replicas", "4",
        "--replicas-max-per-node", "1", "--publish", f"mode=host,target=8080,published={PROBE_PORT}",
        "--no-resolve-image", LOCAL_BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/etc",
    )  # fmt: skip
    wait_service(leader, "probe", 4)
    prober = Prober(bed)
    prober.start()
    try:
        for size in (2, 6):
            started = time.monotonic()
            bed.autoscaling.set_desired(ASG, size)
            wait_group(engine, size)
            engine.log(f"groups: desired {size}: settled in {time.monotonic() - started:.1f} s")
            wait_service(leader, "probe", 4)
        reclaim_a_spot_worker(engine, bed)
        bed.autoscaling.set_desired(ASG, 2)
        wait_group(engine, 2)
        wait_service(leader, "probe", 4)
    finally:
        prober.stop.set()
        prober.join(timeout=10)
    engine.log(
        f"groups: day 5->2->6->2 with a reclaim: probe failed {prober.failed} of {prober.total}; replicas "
        f"answering: min {min(prober.answering)}, fewer than 4 in {sum(a < 4 for a in prober.answering)} probes"
    )
    assert prober.total > 50 and prober.failed == 0, f"probe failed {prober.failed} of {prober.total}"
    assert not [n for n in leader.docker("node", "ls", "--format", "{{.Status}}").split() if n != "Ready"]


def reclaim_a_spot_worker(engine, bed) -> None:
    """A service pinned to spot workers; its worker reclaimed: the task runs elsewhere
    before the machine goes (the two minutes are not extended by anything)."""
    leader = engine.host_of("manager-0")
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "victim", "--constraint",
        "node.labels.swarm.capacity==spot", "--no-resolve-image", LOCAL_BUSYBOX,
        "sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done',  # stops when asked, as a service should
    )  # fmt: skip
    wait_service(leader, "victim", 1)
    node = leader.docker("service", "ps", "victim", "--filter", "desired-state=running", "--format", "{{.Node}}")
    instance_id = node.strip().removeprefix("fleet-")
    noticed = time.monotonic()
    bed.autoscaling.reclaim(instance_id)
    moved_at = None
    while bed.autoscaling.instance(instance_id).state != "Terminated":
        assert time.monotonic() - noticed < 150, "the reclaimed instance outlived its two minutes"
        running = leader.docker(
            "service", "ps", "victim", "--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}"
        )  # fmt: skip
        if moved_at is None and any(
            line.split()[0] != node.strip() and "Running" in line for line in running.splitlines()
        ):
            moved_at = time.monotonic() - noticed
        time.sleep(0.5)
    gone_at = time.monotonic() - noticed
    assert moved_at is not None and moved_at < gone_at, "the task did not run elsewhere before its machine went"
    engine.log(f"groups: reclaim: task elsewhere {moved_at:.1f} s after the notice; machine went at {gone_at:.1f} s")
    leader.docker("service", "rm", "victim")


def test_a_machine_that_dies_without_notice_leaves_the_swarm_once_aws_lists_it_no_more(engine, bed):
    """No hook, no drain: the node goes Down, Auto Scaling replaces the machine, and the
    watcher removes the node once AWS no longer lists its instance."""
    leader = engine.host_of("manager-0")
    (victim, *_) = [n["Spec"]["Labels"]["swarm.instance"] for n in labelled(leader)]
    died = time.monotonic()
    bed.autoscaling.kill(victim)

    def gone() -> bool:
        return f"fleet-{victim}" not in leader.docker("node", "ls", "--format", "{{.Hostname}}").split()

    wait_until(f"fleet-{victim} removed from the swarm", gone, 180, interval=1)
    removed = time.monotonic() - died
    wait_group(engine, 2)
    engine.log(f"groups: a machine lost without notice: its node removed {removed:.1f} s later, the group back at 2")


def test_four_more_workers_a_group_against_pinned(engine, bed):
    """The figure: a group's desired capacity raised by 4 until all 4 are Ready in the
    swarm, against the same 4 as pinned workers in one `up`."""
    leader = engine.host_of("manager-0")
    started = time.monotonic()
    bed.autoscaling.set_desired(ASG, 6)
    before = {n["ID"] for n in labelled(leader)}

    def four_new_ready():
        return len({n["ID"] for n in labelled(leader)} - before) >= 4

    wait_until("4 new group workers Ready and labelled", four_new_ready, 300, interval=0.5)
    grouped = time.monotonic() - started
    watcher = leader.run(["journalctl", "-u", "swarm-groups.service", "--since", f"-{int(grouped) + 5}s", "-o", "cat"])
    engine.log("groups: the watcher meanwhile:\n" + watcher.stdout.decode(errors="replace")[-3000:])
    engine.config["swarm:workerCount"] = 5
    started = time.monotonic()
    engine.up()
    pinned = time.monotonic() - started
    ready = [n for n in leader.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}").splitlines()
             if n.startswith(f"swarm-{STACK}-worker-") and n.endswith("Ready")]  # fmt: skip
    assert len(ready) == 5
    engine.log(
        f"groups: 4 more workers: a group's desired +4 to 4 Ready {grouped:.1f} s; 4 pinned in one up {pinned:.1f} s"
    )
    engine.config["swarm:workerCount"] = 1
    bed.autoscaling.set_desired(ASG, 2)
    # Settled before the night: the nights check the group goes after the backup, which a
    # scale-in still draining (up to its 90 s bound) when the teardown starts would blur.
    wait_group(engine, 2, timeout=300)
    wait_until("no group machine still terminating", lambda: len(group_hosts(engine)) == 2, 300, interval=1)


# -- three nights ---------------------------------------------------------------------------
@pytest.mark.parametrize("night", [1, 2, 3])
def test_each_night_the_group_goes_after_the_backup_and_comes_back_with_the_same_token(engine, bed, tokens, night):
    """Each night: the backup first, then every group machine at once; each morning the
    group back at `desired` with the same token, and yesterday's group nodes removed."""
    offset = engine.log_path.stat().st_size
    started = time.monotonic()
    teardown = engine.destroy()
    night_took = time.monotonic() - started
    steps = {step.name: step for step in teardown.steps if step.op == "delete"}
    backup = next(step for name, step in steps.items() if name.endswith("-swarm-backup"))
    group = next(step for name, step in steps.items() if name.endswith("-fleet-group"))
    after_backup = max(step.end for step in steps.values()) - backup.end
    assert not [h for h in bed.hosts.values() if h.name.startswith("fleet-") and h.alive], (
        "a group machine outlived the night"
    )
    with open(engine.log_path) as handle:
        handle.seek(offset)
        log = handle.read()
    backed_up, gone = log.find("backup: wrote"), log.find("terminate fleet-")
    assert 0 <= backed_up < gone, "the group went before the backup (or one is missing from the log)"
    started = time.monotonic()
    result = engine.up()
    morning = time.monotonic() - started
    assert fp(result.outputs["workerJoinToken"]) == tokens["worker"], "a new token: the group could not join tomorrow"
    wait_group(engine, 5, timeout=120)
    leader = engine.host_of("manager-0")
    listing = leader.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}").splitlines()
    assert len(listing) == 7 and all(line.endswith("Ready") for line in listing), listing  # yesterday's removed
    wait_service(leader, "probe", 4, timeout=180)
    engine.log(
        f"groups: night {night} {night_took:.1f} s (its backup {backup.end - backup.start:.1f} s, then "
        f"{after_backup:.1f} s, the group's force delete {group.end - group.start:.1f} s), morning {morning:.1f} s; "
        "5 group workers back, same token"
    )
