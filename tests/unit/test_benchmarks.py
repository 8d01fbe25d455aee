"""The benchmark scripts keep working (their figures are in the README, never asserted here)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

from harness import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import cpu
import delayline
import formation
from testbed.engine import Result


def test_evaluation_runs_and_reports_each_size(tmp_path):
    out = tmp_path / "evaluation.json"
    script = str(ROOT / "benchmarks/evaluation.py")
    argv = [sys.executable, script, "--workers", "1", "3", "--runs", "1", "--json", str(out)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())
    assert [r["workers"] for r in rows] == [1, 3]
    assert all(r["seconds"] > 0 and r["peak_rss_mib"] > 50 for r in rows)
    assert "marginal_ms" in rows[1]


def test_formation_window_is_from_every_host_ready_to_reconcile():
    result = Result(seconds=20.0)
    result.timings = {
        "swarm-x-nodes-manager-0": (0.0, 2.0),
        "swarm-x-nodes-worker-0": (0.1, 3.0),  # the last machine ready
        "swarm-x-swarm-ready-swarm-x-worker-0": (3.0, 3.5),
        "swarm-x-swarm-bootstrap": (2.5, 4.0),
        "swarm-x-swarm-reconcile": (6.0, 7.5),
    }
    result.began = 100.0
    sampler = cpu.CpuSampler()
    # Samples every 0.5 s from 102.0: the window is 103.0-107.5, in which the machine ran
    # 1.5 cores and this process 0.1 of one (in clock ticks).
    tick = cpu.TICK
    sampler.samples = [(102.0 + i / 2, int(i * tick * 0.75), int(i * tick * 0.05)) for i in range(14)]
    assert formation.window(result, sampler) == {
        "up_seconds": 20.0,
        "hosts_ready_at": 3.0,
        "formation_seconds": 4.5,
        "bootstrap_seconds": 1.5,
        "machine_cores": 1.5,
        "engine_cores": 0.1,
    }


def test_the_cpu_sampler_sees_this_process_work():
    """The sampler against a known load: this process spinning for 0.6 s is most of a core."""
    with cpu.CpuSampler(interval=0.05) as sampler:
        start = time.monotonic()
        while time.monotonic() - start < 0.6:
            sum(range(1000))
        end = time.monotonic()
    seen = sampler.window(start, end)
    assert 0.3 <= seen["engine_cores"] <= 1.2, seen  # a busy CI machine may take some of it
    assert seen["machine_cores"] >= seen["engine_cores"] - 0.2, seen


def test_delayline_holds_what_the_far_side_sends():
    """What the target sends arrives `delay` later; what the caller sends is not held."""

    async def scenario() -> float:
        async def echo(reader, writer):
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            listen_port = probe.getsockname()[1]
        relay = asyncio.create_task(delayline.main(f"127.0.0.1:{listen_port}", f"127.0.0.1:{target_port}", 0.3))
        for _ in range(50):  # bounded: the relay listens within a moment
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", listen_port)
                break
            except OSError:
                await asyncio.sleep(0.02)
        started = time.monotonic()
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
        elapsed = time.monotonic() - started
        writer.close()
        relay.cancel()
        target.close()
        return elapsed

    # In a thread of its own: asyncio.run() clears the thread's event loop when it ends,
    # and the Pulumi SDK in the other tests of this process expects the main thread's.
    results: list[float] = []
    worker = threading.Thread(target=lambda: results.append(asyncio.run(scenario())))
    worker.start()
    worker.join(30)
    [elapsed] = results
    # The connection's own wait (0.3 s) plus the answer's (0.3 s); a loaded machine adds.
    assert 0.55 <= elapsed < 3.0, elapsed
