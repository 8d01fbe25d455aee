"""A fresh Raft snapshot before the backup: asked for, waited for (bounded), and the
interval always set back."""

from __future__ import annotations

import json

import pytest
from swarm_agent import snapshot
from swarm_agent.run import AgentError


def swarm_with_interval(fakes, interval: int) -> None:
    info = {
        "LocalNodeState": "active",
        "ControlAvailable": True,
        "Cluster": {"Spec": {"Raft": {"SnapshotInterval": interval}}},
    }
    fakes.on("docker", "info", "--format", "{{json .Swarm}}", stdout=json.dumps(info) + "\n")
    fakes.on("docker", "swarm", "update")


def updates(fakes) -> list[str]:
    return [a[-1] for a in fakes.argvs("docker") if a[:2] == ["swarm", "update"]]


def test_a_snapshot_is_asked_for_waited_for_and_the_interval_set_back(fakes, monkeypatch):
    swarm_with_interval(fakes, 10000)
    seen = iter([(1.0, "a.snap"), (1.0, "a.snap"), (2.0, "b.snap"), (2.0, "b.snap"), (3.0, "c.snap"), (3.0, "c.snap")])
    monkeypatch.setattr(snapshot, "newest", lambda: next(seen))
    assert snapshot.fresh_snapshot() == "snapshot: fresh Raft snapshot c.snap (interval back at 10000)"
    assert updates(fakes) == ["1", "10000"]


def test_no_snapshot_in_time_is_only_a_note_and_the_interval_goes_back(fakes, monkeypatch):
    swarm_with_interval(fakes, 5000)
    monkeypatch.setattr(snapshot, "newest", lambda: (1.0, "a.snap"))
    message = snapshot.fresh_snapshot()
    assert "none written within 10s" in message
    assert updates(fakes) == ["1", "5000"]
    assert 10 <= fakes.clock.slept <= 12


def test_the_interval_goes_back_even_when_the_wait_fails(fakes, monkeypatch):
    swarm_with_interval(fakes, 10000)
    calls = iter([(1.0, "a.snap")])

    def newest():
        try:
            return next(calls)
        except StopIteration:
            raise AgentError("the raft directory vanished") from None

    monkeypatch.setattr(snapshot, "newest", newest)
    with pytest.raises(AgentError, match="vanished"):
        snapshot.fresh_snapshot()
    assert updates(fakes) == ["1", "10000"]


def test_an_unknown_interval_asks_for_nothing(fakes):
    fakes.swarm()
    assert "none asked for" in snapshot.fresh_snapshot()
    assert updates(fakes) == []


def test_the_newest_snapshot_file_is_found_on_disk(fakes, tmp_path):
    from pathlib import Path

    from swarm_agent import paths

    directory = Path(paths.SWARM_DIR) / "raft" / "snap-v3-encrypted"
    directory.mkdir(parents=True)
    assert snapshot.newest() == (0.0, "")
    (directory / "0000000000000002-0000000000002710.snap").write_bytes(b"x")
    assert snapshot.newest()[1] == "0000000000000002-0000000000002710.snap"
