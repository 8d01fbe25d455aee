"""The `fakes` fixture for the agent's unit tests: fake docker, aws and systemctl, a fake
clock, and a node's files in a temporary directory (every path of swarm_agent.paths
points there). The stand-ins themselves are in node_fakes.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from node_fakes import Clock, Fakes, write_env
from swarm_agent import paths, run


@pytest.fixture
def fakes(tmp_path, monkeypatch) -> Fakes:
    """Fake tools first on the agent's PATH, every node path under tmp_path/node, an env file."""
    node = tmp_path / "node"
    for name in dir(paths):
        value = getattr(paths, name)
        if name.isupper() and isinstance(value, str) and value.startswith("/"):
            monkeypatch.setattr(paths, name, str(node) + value)
    (node / "proc").mkdir(parents=True)
    Path(paths.NODE_LOCK).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.WORK_DIR).mkdir(parents=True)
    fake = Fakes(tmp_path)
    monkeypatch.setattr(run, "SEARCH_PATH", f"{fake.bin}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_DIR", str(fake.dir))
    clock = Clock()
    monkeypatch.setattr(run, "pause", clock.sleep)  # a wait costs no real time, and stays bounded
    monkeypatch.setattr(run, "now", clock.monotonic)
    fake.clock = clock
    write_env()
    return fake
