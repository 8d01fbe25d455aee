"""scripts/sandbox, as a newcomer runs it: one command, a swarm, how to reach it, gone again."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_sandbox_stands_up_a_reachable_swarm_shows_a_night_and_a_morning_and_removes_it(bed_prerequisites):
    run = subprocess.run(
        [str(ROOT / "scripts" / "sandbox"), "--managers", "1", "--workers", "1", "--hold", "0", "--check", "--cycle"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    socket = re.search(r"export DOCKER_HOST=unix://(\S+)", out)
    assert socket, out[-3000:]
    # `docker node ls` through the forwarded socket listed both machines.
    assert re.search(r"swarm-sandbox-manager-0\s+Ready\s+Active\s+Leader", out), out[-3000:]
    assert re.search(r"swarm-sandbox-worker-0\s+Ready\s+Active", out), out[-3000:]
    assert "sandbox: removed" in out
    # The status view, before it waited: the nodes, the leader, this morning's bootstrap.
    assert "manager ★ leader" in out and "initialised a new swarm" in out and "Backups (" in out, out[-3000:]
    # The night and the morning: the backup taken, every machine gone, the same swarm back.
    assert re.search(r"night done in \d+s: 0 machines left; backup backups/\d{8}T\d{6}Z\.tar\.gz", out), out[-3000:]
    came_back = out.split("what came back this morning:", 1)[1]
    assert "worker token: the same" in came_back and "manager token: the same" in came_back, came_back[:2000]
    assert re.search(r"services: the same \([^)]*\bhello\b", came_back), came_back[:2000]
    assert re.search(r"secrets: the same \([^)]*\bsandbox-secret\b", came_back), came_back[:2000]
    assert "bootstrap: bootstrap: restored from backups/" in came_back
    assert not Path(socket.group(1)).parent.parent.exists(), "the sandbox left its bed directory behind"
    assert "PRIVATE KEY" not in out and "SWMTKN-" not in out
