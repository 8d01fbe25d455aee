"""Data through the night on the bed: a stateful service keeps every line it wrote.

One stack (1 manager + 1 worker; the worker carries the kept EBS volume `ledger`) lives
through the module: a morning, three nights and mornings (with Data Lifecycle Manager's
run after each teardown, keeping 2 snapshots), a replacement of the data node during the
day, a roll, and a second stack that starts its volume from the last snapshot. The
service appends a line a second to a file on its volume and says at start how many it
found. After every step: every line the file held before the step is still there, in
order, and the task that runs now counted at least those. The engine's log shows each
step's unmount, detach, attach and mount in that order.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from swarm_agent.data import UNIT as DATA_UNIT
from testbed.bed import LOCAL_BUSYBOX, wait_until
from testbed.engine import EngineError, scenario_engine
from testbed.lifecycle import TAKEN_BY
from testbed.providers import INSTANCE
from testbed.verify import BedStack, nodes, wait_service

from swarmcli import roll

pytestmark = pytest.mark.e2e

STACK = "data"
COPY_STACK = "data-copy"
VOLUME = {"name": "ledger", "node": "worker-0", "size": 1}
LEDGER = "/var/data/ledger.log"
# A line a second; at start, how many lines its volume already held. TERM ends it between
# two lines (busybox sh runs the trap after `sleep`), as a database flushes and exits.
APPENDER = (
    'trap "exit 0" TERM; f=/data/ledger.log; n=$(cat $f 2>/dev/null | wc -l); echo "start: $n lines"; i=0; '
    'while :; do i=$((i+1)); echo "$(hostname) $n+$i" >> $f; sleep 1; done'
)


@pytest.fixture(scope="module")
def engine(bed, log_dir):
    config = {"swarm:dataVolumes": json.dumps([VOLUME]), "swarm:dataSnapshotKeep": 2}
    for engine in scenario_engine(bed, log_dir, STACK, (1, 1), (160, 19), **config):
        try:
            yield engine
        finally:
            release_everything(engine)


KEPT_FOR_DATA = (
    "aws:ebs/volume:Volume",
    "aws:dlm/lifecyclePolicy:LifecyclePolicy",
    "aws:iam/role:Role",
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
)


def release_everything(engine) -> None:
    """The night, then the two deliberate steps that delete kept data (README); the
    state bucket stays, as every scenario leaves it."""
    with contextlib.suppress(EngineError):
        engine.destroy()
    for urn in [u for u, s in engine.state.items() if s.protect and s.type in KEPT_FOR_DATA]:
        engine.unprotect(urn)
    engine.destroy()


def volume_of(engine):
    (state,) = [s for s in engine.state.values() if s.type == "aws:ebs/volume:Volume"]
    return state


def ledger(engine) -> list[str]:
    return engine.host_of("worker-0").run(["cat", LEDGER]).stdout.decode().splitlines()


def log_since(engine, offset: int) -> str:
    with open(engine.log_path) as handle:
        handle.seek(offset)
        return handle.read()


def log_offset(engine) -> int:
    return engine.log_path.stat().st_size if engine.log_path.exists() else 0


def in_order(log: str, *needles: str) -> list[int]:
    """Where each needle first occurs after the one before it; fails naming the one missing."""
    places, start = [], 0
    for needle in needles:
        place = log.find(needle, start)
        assert place >= 0, f"{needle!r} not found (in that order) in the engine's log"
        places.append(place)
        start = place
    return places


def assert_kept(engine, before: list[str]) -> None:
    """The ledger runs on its node again, holds every line it held before, and grows."""
    leader = engine.host_of("manager-0")
    wait_service(leader, "ledger", 1, timeout=180)
    wait_until("the ledger to grow", lambda: len(ledger(engine)) > len(before) + 1, 60, interval=1)
    after = ledger(engine)
    assert after[: len(before)] == before, "a line written before the step is gone or changed"
    worker = engine.host_of("worker-0")
    (container,) = worker.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=ledger").split()
    counted = int(worker.docker("logs", container).split("start: ")[1].split()[0])
    assert counted >= len(before), f"the task started on {counted} lines, fewer than the {len(before)} kept"
    engine.log(f"ledger: {len(before)} lines before the step, {len(after)} now; the task started on {counted}")


# -- 1. Morning ---------------------------------------------------------------------------
def test_the_morning_mounts_the_volume_and_labels_its_node(engine, bed):
    engine.up()
    volume = volume_of(engine)
    assert volume.protect and volume.inputs["encrypted"] and volume.inputs["type"] == "gp3"
    worker = engine.host_of("worker-0")
    source, fstype = worker.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "/var/data"]).stdout.decode().split()
    assert fstype == "ext4" and source == bed.volumes.volumes[volume.id].device
    # Only the data node carries the label: a stack pins a service to its data by name.
    labels = {n["Hostname"]: n for n in nodes(engine.host_of("manager-0"))}
    leader = engine.host_of("manager-0")
    for name in labels:
        spec = json.loads(leader.docker("node", "inspect", "--format", "{{json .Spec.Labels}}", name))
        assert (spec or {}).get("swarm.data") == ("ledger" if name.endswith("worker-0") else None), (name, spec)
    leader.docker(
        "service", "create", "--detach", "--quiet", "--name", "ledger",
        "--constraint", "node.labels.swarm.data==ledger",
        "--mount", "type=bind,source=/var/data,target=/data", "--no-resolve-image", LOCAL_BUSYBOX, "sh", "-c", APPENDER,
    )  # fmt: skip
    assert_kept(engine, [])


# -- 2. Three nights ----------------------------------------------------------------------
def test_three_nights_keep_every_line_and_the_snapshots_are_pruned(engine, bed):
    volume_id = volume_of(engine).id
    for night in (1, 2, 3):
        before = ledger(engine)
        offset = log_offset(engine)
        engine.destroy()
        kept = bed.volumes.volumes[volume_id]
        assert kept.host_key is None and kept.path.exists(), f"night {night}: the volume was not kept, detached"
        taken = bed.lifecycle.run()  # the policy's hour, after the teardown
        assert [bed.volumes.snapshots[s].volume_id for s in taken] == [volume_id]
        engine.up()
        log = log_since(engine, offset)
        in_order(log, "data: unmounted /var/data", f"detach {volume_id}", f"attach {volume_id}", "data: mounted")
        assert_kept(engine, before)
    ours = [s for s in bed.volumes.snapshots.values() if s.volume_id == volume_id]
    assert len(ours) == 2, "dataSnapshotKeep 2: the oldest snapshot was not pruned"
    assert all(s.tags.get("swarm:snapshot-of") == f"swarm/{STACK}" and s.tags.get(TAKEN_BY) for s in ours)


# -- 3. Day two ---------------------------------------------------------------------------
def test_a_replacement_of_its_node_unmounts_detaches_attaches_and_mounts_in_that_order(engine):
    before = ledger(engine)
    volume_id = volume_of(engine).id
    offset = log_offset(engine)
    urn = engine.urn("-nodes-worker-0")
    old = engine.state[urn].id
    engine.up(replace=[urn])
    assert engine.state[urn].id != old
    log = log_since(engine, offset)
    places = in_order(log, "data: unmounted /var/data", f"detach {volume_id}", f"attach {volume_id}", "data: mounted")
    assert "drained and removed from the swarm" in log[: places[0]], "not drained before its data was unmounted"
    # The ledger, pinned to this node's data, had nowhere else to go: the drain did not wait for it.
    assert "services not at their replicas" not in log
    assert_kept(engine, before)


def test_a_roll_keeps_the_data(engine):
    """`scripts/swarm roll --only workers` (a lone manager is not rolled: it would lose the quorum)."""
    before = ledger(engine)
    done = roll.roll(BedStack(engine), only="workers", log=engine.log)
    assert [d["name"] for d in done] == [f"swarm-{STACK}-worker-0"]
    assert_kept(engine, before)


def test_a_reboot_mounts_the_volume_before_dockerd_starts(engine, bed):
    """What each boot does by itself, with no Pulumi there: swarm-data.service mounts the
    volume it recorded (`data-mount --boot`), and dockerd, which requires it, starts after."""
    before = ledger(engine)
    worker = engine.host_of("worker-0")
    worker.reboot()
    worker.wait_docker(180)

    def at(unit: str, moment: str) -> int:
        return int(worker.run(["systemctl", "show", "-P", moment, unit]).stdout.decode().strip() or 0)

    mounted = at(DATA_UNIT, "ExecMainExitTimestampMonotonic")
    docker = at("docker.service", "ExecMainStartTimestampMonotonic")
    assert 0 < mounted <= docker, f"dockerd started at {docker} µs, the volume's mount ended at {mounted} µs"
    engine.log(f"reboot: {DATA_UNIT} done {mounted / 1e6:.2f} s after boot, dockerd started {docker / 1e6:.2f} s")
    source = worker.run(["findmnt", "-n", "-o", "SOURCE", "/var/data"]).stdout.decode().strip()
    assert source == bed.volumes.volumes[volume_of(engine).id].device
    assert_kept(engine, before)


# -- 4. Another environment from a snapshot -----------------------------------------------
def test_a_second_stack_starts_its_volume_from_the_last_snapshot(engine, bed, log_dir):
    before = ledger(engine)
    engine.destroy()  # tonight
    (snapshot_id,) = bed.lifecycle.run()
    copy = {**VOLUME, "node": "manager-0", "snapshotId": snapshot_id}
    config = {"swarm:dataVolumes": json.dumps([copy]), "swarm:dataSnapshotKeep": 0}
    for other in scenario_engine(bed, log_dir, COPY_STACK, (1, 0), (192, 19), **config):
        try:
            other.up()
            volume = volume_of(other)
            assert volume.inputs["snapshotId"] == snapshot_id
            copied = other.host_of("manager-0").run(["cat", LEDGER]).stdout.decode().splitlines()
            assert copied[: len(before)] == before and len(copied) >= len(before)
            assert not [s for s in other.state.values() if s.type == INSTANCE and "worker" in s.name]
            # A disabled policy takes nothing: the copy is not snapshotted with keep 0.
            assert all(bed.volumes.snapshots[s].volume_id != volume.id for s in bed.lifecycle.run())
        finally:
            release_everything(other)
    assert not [v for v in bed.volumes.volumes.values() if v.tags.get("swarm:data-of") == f"swarm/{COPY_STACK}"]
