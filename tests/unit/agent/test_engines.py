"""Engines known to break the morning are refused on the nodes they break, before any join
(moby/swarmkit#3231: Docker 29.1.0 to 29.4.x on managers; the range from swarmkit's and
moby's histories, see agent/swarm_agent/engines.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from node_fakes import write_env
from swarm_agent import engines, paths, ready
from swarm_agent.run import AgentError


@pytest.mark.parametrize(
    ("version", "refused"),
    [("29.1.0", True), ("29.1.0-rc.1", True), ("29.2.1", True), ("29.4.3", True), ("29.4.99+dfsg1", True),
     ("29.5.0", False), ("29.5.0-rc.1", False), ("29.7.2", False), ("29.0.4", False), ("28.5.2+dfsg1", False),
     ("26.1.5+dfsg1", False), ("20.10.24+dfsg1", False), ("", False), ("dev", False)],
)  # fmt: skip
def test_the_range_on_managers(version, refused):
    assert (engines.refusal(version, "manager") is not None) == refused
    assert engines.refusal(version, "worker") is None  # workers receive no Raft snapshot


def test_the_refusal_says_why_and_names_the_fix():
    message = engines.refusal("29.2.1", "manager")
    assert "moby/swarmkit#3231" in message and "29.5.0 or later" in message
    assert "pulumi config set swarm:amiId" in message and "Nothing was joined" in message


def test_wait_ready_refuses_a_manager_with_a_broken_engine_and_lets_a_worker_pass(fakes, capsys):
    Path(paths.READY).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.READY).touch()
    fakes.docker_up(version="29.3.0")
    args = argparse.Namespace(timeout=5)
    with pytest.raises(AgentError, match=r"Docker 29\.3\.0 on this manager"):
        ready.wait_ready(args)
    write_env(SWARM_ROLE="worker")
    ready.wait_ready(args)
    assert "wait-ready: docker 29.3.0 ready" in capsys.readouterr().out
