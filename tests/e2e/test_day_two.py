"""Day two on the bed: nodes replaced, scaled and rolled during the day, today's swarm kept.

One stack (3 managers + 2 workers) lives through the module, in Pulumi's own step order
(the engine defers the deletes of replaced and dropped machines to the end of the
update; pinned managers are deleted before they are replaced): a worker replaced, manager
0 replaced, workers scaled 2 to 5 to 1, managers 3 to 5 to 3, a switch to a key pair of
your own, an instance type change, and `scripts/swarm roll` applying it one machine at a time
while a 4-replica probe service is asked every few tenths of a second. After every step:
one swarm (every manager lists the same node IDs), every node named by the program Ready,
today's service and secret still there at their replicas, the join tokens unchanged.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.request

import pytest
from testbed.bed import LOCAL_BUSYBOX, wait_until
from testbed.engine import EngineError, generate_key, scenario_engine
from testbed.providers import INSTANCE
from testbed.ssh import release, ssh_connect
from testbed.verify import BedStack, fp, nodes, wait_service

from swarmcli import roll

pytestmark = pytest.mark.e2e

STACK = "day"
PROBE_PORT = 8081


@pytest.fixture(scope="module")
def engine(bed, log_dir):
    # Its own quarter of the bed's /16 (third octets 192-255).
    yield from scenario_engine(bed, log_dir, STACK, (3, 2), (192, 18))


@pytest.fixture(scope="module")
def today():
    """What the morning made and every later step must keep: tokens, node names."""
    return {}


def names(managers: int, workers: int) -> list[str]:
    return sorted(
        [f"swarm-{STACK}-manager-{i}" for i in range(managers)] + [f"swarm-{STACK}-worker-{i}" for i in range(workers)]
    )


def assert_one_swarm(engine, today, managers: int, workers: int) -> None:
    """One swarm: every manager lists the same nodes, exactly the program's, all Ready;
    today's service and secret are there at their replicas; the tokens are unchanged."""
    listings = {}
    for i in range(managers):
        listing = nodes(engine.host_of(f"manager-{i}"))
        listings[i] = sorted(n["ID"] for n in listing)
        assert sorted(n["Hostname"] for n in listing) == names(managers, workers), listing
        assert all(n["Status"] == "Ready" for n in listing), listing
    assert len({tuple(ids) for ids in listings.values()}) == 1, f"managers disagree on the nodes: {listings}"
    leader = engine.host_of("manager-0")
    roles = sorted(n["ManagerStatus"] for n in nodes(leader))
    assert roles == sorted(["Leader"] + ["Reachable"] * (managers - 1) + [""] * workers), roles
    wait_service(leader, "keep", 2, timeout=180)
    assert "today-secret" in leader.docker("secret", "ls", "--format", "{{.Name}}").split()
    for kind in ("worker", "manager"):
        token = leader.docker("swarm", "join-token", "-q", kind).strip()
        assert fp(token) == today[f"{kind}_token"], f"the {kind} join token changed"


def instance_urn(engine, node: str) -> str:
    return engine.urn(f"-nodes-{node}")


def machines_touched(result) -> list[str]:
    """The instances an update created, replaced, updated or deleted."""
    return sorted(urn.rsplit("::", 1)[-1] for urn, op in result.changed().items() if f"${INSTANCE}::" in urn)


# -- the morning -------------------------------------------------------------------------------
def test_morning(engine, today):
    result = engine.up()
    assert result.outputs["bootstrapResult"] == "bootstrap: initialised a new swarm"
    leader = engine.host_of("manager-0")
    today["worker_token"] = fp(leader.docker("swarm", "join-token", "-q", "worker").strip())
    today["manager_token"] = fp(leader.docker("swarm", "join-token", "-q", "manager").strip())
    leader.run(["docker", "secret", "create", "today-secret", "-"], input=b"made today")
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "keep", "--replicas", "2",
        "--endpoint-mode", "dnsrr", "--secret", "today-secret", "--no-resolve-image",
        LOCAL_BUSYBOX, "sleep", "86400",
    )  # fmt: skip
    assert_one_swarm(engine, today, 3, 2)


# -- replacements ------------------------------------------------------------------------------
def test_a_worker_replaced_during_the_day_leaves_cleanly(engine, today):
    old_ip = engine.host_of("worker-0").ip
    old_id = next(n["ID"] for n in nodes(engine.host_of("manager-0")) if n["Hostname"] == f"swarm-{STACK}-worker-0")
    result = engine.up(replace=[instance_urn(engine, "worker-0")])
    # Pulumi's order: the new machine first, the old one's retire and deletion at the end.
    steps = result.order()
    assert (
        steps.index(("replace", f"swarm-{STACK}-nodes-worker-0"))
        < steps.index(("delete-replaced", f"swarm-{STACK}-swarm-retire-swarm-{STACK}-worker-0"))
        < steps.index(("delete-replaced", f"swarm-{STACK}-nodes-worker-0"))
    )
    assert engine.host_of("worker-0").ip != old_ip
    assert_one_swarm(engine, today, 3, 2)
    assert old_id not in {n["ID"] for n in nodes(engine.host_of("manager-0"))}
    log = engine.log_path.read_text()
    assert f"retire: swarm-{STACK}-worker-0 ({old_ip}) drained and removed from the swarm" in log


def test_manager_0_replaced_during_the_day_joins_todays_swarm(engine, today):
    leader = engine.host_of("manager-0")
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "made-today", "--no-resolve-image",
        "--endpoint-mode", "dnsrr", LOCAL_BUSYBOX, "sleep", "86400",
    )  # fmt: skip
    result = engine.up(replace=[instance_urn(engine, "manager-0")])
    # Its pinned address goes first: retired from manager 1 (demoted, removed), then deleted.
    steps = result.order()
    retired = steps.index(("delete-replaced", f"swarm-{STACK}-swarm-retire-swarm-{STACK}-manager-0"))
    assert retired < steps.index(("delete-replaced", f"swarm-{STACK}-nodes-manager-0"))
    assert result.outputs["bootstrapResult"].startswith("bootstrap: joined the live swarm through "), result.outputs
    assert_one_swarm(engine, today, 3, 2)
    services = engine.host_of("manager-0").docker("service", "ls", "--format", "{{.Name}}").split()
    assert "made-today" in services, "manager 0 came back with another swarm than today's"
    # The mirror follows the live swarm: a worker pulls through it.
    engine.host_of("worker-1").docker("pull", "busybox", timeout=180)


# -- scaling -----------------------------------------------------------------------------------
def test_workers_scale_out_and_in(engine, today):
    engine.config["swarm:workerCount"] = 5
    result = engine.up()
    assert len(machines_touched(result)) == 3, machines_touched(result)
    assert_one_swarm(engine, today, 3, 5)

    engine.config["swarm:workerCount"] = 1
    result = engine.up()
    assert sorted(machines_touched(result)) == [f"swarm-{STACK}-nodes-worker-{i}" for i in range(1, 5)]
    assert_one_swarm(engine, today, 3, 1)
    log = engine.log_path.read_text()
    for i in range(1, 5):
        assert f"retire: swarm-{STACK}-worker-{i} (" in log and "drained and removed" in log


def test_managers_scale_out_and_in(engine, today, bed):
    engine.config["swarm:managerCount"] = 5
    engine.up()
    assert_one_swarm(engine, today, 5, 1)

    engine.config["swarm:managerCount"] = 3
    engine.up()
    assert_one_swarm(engine, today, 3, 1)
    log = engine.log_path.read_text()
    for i in (3, 4):
        assert f"retire: swarm-{STACK}-manager-{i} (" in log
    assert log.count("drained, demoted and removed from the swarm") >= 3  # manager 0 above, 3 and 4 here

    # The dropped managers' addresses are kept (protected, unassociated), and said so; the
    # release step gives them back, and the next `up` neither misses nor re-makes them.
    dropped = [engine.urn(f"addresses-manager-{i}") for i in (3, 4)]
    held = {engine.state[u].id: engine.state[u].outputs["publicIp"] for u in dropped}
    assert all(engine.state[u].protect for u in dropped)
    assert all(bed.addresses.eips[a].association_id is None for a in held)
    assert "the Elastic IPs of manager-3, manager-4 are kept, unassociated" in log
    for urn in dropped:
        engine.release(urn)
    assert not set(held) & set(bed.addresses.eips)
    engine.config["swarm:workerCount"] = 2
    engine.up()
    assert_one_swarm(engine, today, 3, 2)
    assert not [u for u in engine.state if "addresses-manager-3" in u or "addresses-manager-4" in u]


# -- keys and instance types -------------------------------------------------------------------
def test_switching_to_your_own_key_pair_replaces_no_machine(engine, today):
    key = generate_key("ED25519")
    engine.config["swarm:sshPublicKey"] = key["publicKeyOpenssh"].strip()
    engine.config["swarm:sshPrivateKey"] = key["privateKeyOpenssh"]
    engine.secret_keys = (*engine.secret_keys, "swarm:sshPrivateKey")
    result = engine.up()
    assert machines_touched(result) == [], "a key switch touched the machines"
    assert "sshPrivateKey" not in result.outputs
    assert engine.up().changed() == {}
    # Your key now opens every machine.
    for node in ("manager-0", "worker-0"):
        connection = {"host": engine.host_of(node).ip, "user": "ec2-user", "privateKey": key["privateKeyOpenssh"]}
        release(ssh_connect({**connection, "dialErrorLimit": 2, "perDialTimeout": 5}, lambda m: None, "check"))
    assert_one_swarm(engine, today, 3, 2)


def test_a_new_instance_type_restarts_nothing_until_rolled(engine, today):
    engine.config["swarm:instanceType"] = "t3.large"
    boots = {h.key: h.boots for h in engine.hosts()}
    result = engine.up()
    assert machines_touched(result) == [], "a new instance type stopped machines in the middle of the day"
    assert {h.key: h.boots for h in engine.hosts()} == boots


NEWER_AMI = "ami-0bed0bed0bed0bed1"


def test_a_newer_ami_waits_until_adopted_and_then_replaces_no_machine(engine, bed):
    """The morning's engine is the stack's choice: a new AMI in SSM changes nothing until
    `scripts/swarm adopt-ami` (unprotect the record, `up --replace` it); the running
    machines take it only when replaced (the roll below)."""
    pinned = engine.up().outputs["amiId"]
    bed.newest_ami = NEWER_AMI
    result = engine.up()
    assert result.outputs["amiId"] == pinned != NEWER_AMI and result.outputs["amiNewest"] == NEWER_AMI
    assert machines_touched(result) == [] and result.changed() == {}
    record = engine.urn("-nodes-ami")
    engine.unprotect(record)
    result = engine.up(replace=[record])
    assert result.outputs["amiId"] == NEWER_AMI and engine.state[record].protect
    assert machines_touched(result) == [], "adopting an AMI replaced a running machine"


# -- the rolling upgrade -----------------------------------------------------------------------
class Prober(threading.Thread):
    """A client of the probe service, as a load balancer would be: every 0.3 s, every node
    is asked; a probe fails when none answers. It also counts how many replicas answered."""

    def __init__(self, bed):
        super().__init__(daemon=True)
        self.bed, self.stop, self.total, self.failed = bed, threading.Event(), 0, 0
        self.answering: list[int] = []

    def addresses(self) -> list[str]:
        try:
            return [h.ip for h in list(self.bed.hosts.values()) if h.alive and h.name.startswith(f"swarm-{STACK}-")]
        except RuntimeError:  # the bed's host list changed under us: look again
            return []

    def run(self):
        while not self.stop.wait(0.3):
            addresses = self.addresses()
            random.shuffle(addresses)
            answered = sum(self.answers(ip) for ip in addresses)
            self.total += 1
            self.answering.append(answered)
            if not answered:
                self.failed += 1

    @staticmethod
    def answers(ip: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{ip}:{PROBE_PORT}/hostname", timeout=0.5) as response:
                return response.status == 200
        except OSError:
            return False


def test_rolling_upgrade_reaches_every_machine_one_at_a_time_while_the_probe_answers(engine, today, bed):
    leader = engine.host_of("manager-0")
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "probe", "--replicas", "4",
        "--replicas-max-per-node", "1", "--publish", f"mode=host,target=8080,published={PROBE_PORT}",
        "--endpoint-mode", "dnsrr", "--no-resolve-image", LOCAL_BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/etc",
    )  # fmt: skip
    wait_service(leader, "probe", 4)
    before = {s.inputs["tags"]["Name"]: s.id for s in engine.state.values() if s.type == INSTANCE}
    prober = Prober(bed)
    prober.start()
    try:
        done = roll.roll(BedStack(engine), log=engine.log)
    finally:
        prober.stop.set()
        prober.join(timeout=10)
    engine.log(
        f"roll: probe failed {prober.failed} of {prober.total}; replicas answering: min {min(prober.answering)}, "
        f"fewer than 4 in {sum(a < 4 for a in prober.answering)} probes; per machine: {done}"
    )
    order = [d["name"] for d in done]
    assert order == [f"swarm-{STACK}-worker-0", f"swarm-{STACK}-worker-1", f"swarm-{STACK}-manager-1",
                     f"swarm-{STACK}-manager-2", f"swarm-{STACK}-manager-0"]  # fmt: skip
    after = {s.inputs["tags"]["Name"]: s for s in engine.state.values() if s.type == INSTANCE}
    assert all(after[name].id != before[name] for name in before), "a machine was not replaced"
    assert all(s.inputs["instanceType"] == "t3.large" for s in after.values()), "the new type did not reach a machine"
    assert all(s.inputs["ami"] == NEWER_AMI for s in after.values()), "the adopted AMI did not reach a machine"
    assert prober.total > 50 and prober.failed == 0, f"probe failed {prober.failed} of {prober.total}"
    assert_one_swarm(engine, today, 3, 2)
    wait_service(engine.host_of("manager-0"), "probe", 4)


def test_a_replacement_that_would_break_quorum_is_refused_and_demotes_nothing(engine):
    """Manager 2 is down; replacing manager 0 would leave 2 managers with 1 reachable."""
    engine.host_of("manager-2").kill()
    survivor = engine.host_of("manager-1")

    def seen_down() -> bool:
        listing = {n["Hostname"]: n for n in nodes(survivor)} if survivor.run(
            ["docker", "node", "ls"], check=False).returncode == 0 else {}  # fmt: skip
        return listing.get(f"swarm-{STACK}-manager-2", {}).get("ManagerStatus") == "Unreachable"

    wait_until("the managers to see manager 2 unreachable", seen_down, 90, interval=1)
    with pytest.raises(EngineError) as refused:
        engine.up(replace=[instance_urn(engine, "manager-0")])
    assert f"retire: demoting manager swarm-{STACK}-manager-0 would leave 2 manager(s), of which 1 reachable" in str(
        refused.value
    )
    assert "Raft needs 2. Nothing was demoted" in str(refused.value)
    listing = {n["Hostname"]: n for n in nodes(engine.host_of("manager-1"))}
    assert listing[f"swarm-{STACK}-manager-0"]["ManagerStatus"] in ("Leader", "Reachable"), listing
    assert listing[f"swarm-{STACK}-manager-0"]["Availability"] == "Active"  # refused before draining


def test_the_night_after_takes_its_backup_from_the_new_manager_0_and_retires_nothing(engine):
    started = time.monotonic()
    result = engine.destroy()
    log = engine.log_path.read_text().split(f"== destroy {STACK}")[-1]
    assert "backup: wrote backups/" in log
    # Every retire that still stands (manager 2 is down: its retire has nothing to reach).
    assert log.count("retire: the swarm is being torn down; nothing to do") == 5
    assert time.monotonic() - started < 120 and result.seconds < 120
