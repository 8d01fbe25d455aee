"""The bed itself: machines as EC2 has them, and nothing left behind, even by a killed run."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from testbed.bed import reap_stale_beds, sh
from testbed.host import cgroup_left

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_two_machines_may_share_a_name(bed):
    """As two EC2 instances may (a replacement and the machine it replaces)."""
    first = bed.create_host("twin", str(bed.network[200 * 256 + 30]))
    second = bed.create_host("twin", str(bed.network[200 * 256 + 31]))
    try:
        assert first.key != second.key and first.name == second.name == "twin"
        for host in (first, second):
            assert host.run(["hostname"]).stdout.decode().strip() == "twin"
            assert host.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.decode().count(host.ip) == 1
    finally:
        bed.wipe_host(first.key)
        bed.wipe_host(second.key)


KILLED_RUN = """
import time
from testbed.bed import Bed
bed = Bed()
bed.start()
bed.create_host("doomed", str(bed.network[10]))
print(bed.run_id, bed.root, flush=True)
time.sleep(600)
"""


def leftovers(run_id: str, root: Path) -> list[str]:
    """Everything of run `run_id` still on this machine."""
    found = [f"netns {n}" for n in sh("ip", "netns", "list").split() if n.startswith(f"swarmbed-{run_id}-")]
    links = json.loads(sh("ip", "-j", "link") or "[]")
    found += [f"link {link['ifname']}" for link in links if link.get("ifname", "").startswith(f"sb{run_id}-")]
    found += [f"iptables {r}" for r in sh("iptables", "-w", "10", "-S").splitlines() if f"sb{run_id}-br" in r]
    found += [f"cgroup {c}" for c in cgroup_left(f"swarmbed-{run_id}-*")]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmdline:
            found.append(f"process {proc.name}: {cmdline[:80]}")
    found += [
        f"mount {line.split()[4]}"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(root) in line
    ]
    if root.exists():
        found.append(f"directory {root}")
    return found


def test_a_killed_run_leaves_nothing_once_the_next_run_starts(bed_prerequisites):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    run = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        ready, _, _ = select.select([run.stdout], [], [], 300)
        assert ready, "the doomed run did not start its bed within 300s"
        run_id, root = run.stdout.readline().decode().split()
    finally:
        os.kill(run.pid, signal.SIGKILL)  # no cleanup of its own runs
        run.wait(timeout=30)
    root = Path(root)
    left = leftovers(run_id, root)
    assert any(item.startswith("netns") for item in left) and any(item.startswith("process") for item in left), left

    reap_stale_beds(root.parent)  # what the next run's Bed.start() does first
    assert leftovers(run_id, root) == []
