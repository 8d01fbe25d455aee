"""Program evaluation: `__main__.py` under plain Pulumi mocks, 3 managers + N workers.

Each size runs in its own Python process (so peak memory is that size's alone), with
`pulumi.runtime.set_mocks` and the unit suite's `SwarmMocks` (AWS-like ids and addresses,
the tokens line); nothing is recorded, not even by the mock monitor (see
`forgetful_monitor_class`). Reported: wall time of the program run (import
and interpreter start excluded), peak RSS of the process, and the cost per worker, both
as an average (wall / workers) and as the marginal cost between consecutive sizes.

    venv/bin/python benchmarks/evaluation.py              # 10, 100, 300 workers, 3 runs each
    venv/bin/python benchmarks/evaluation.py --workers 10 1000 --runs 1
    venv/bin/python benchmarks/evaluation.py --profile 300   # cProfile, top 25 by own time
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "unit")]


def forgetful_monitor_class():
    """The SDK's MockMonitor keeps every resource's state (its inputs as the provider echoes
    them: 85 KB of agent bundle per node) for `get` lookups this program never makes. In a
    real `up` that state is the engine's, in another process; here it was the program's
    peak memory. This monitor answers the same and keeps nothing."""
    from pulumi.runtime.mocks import MockMonitor

    class ForgetfulMonitor(MockMonitor):
        def RegisterResource(self, request):
            response = super().RegisterResource(request)
            self.resources.pop(response.urn, None)
            return response

    return ForgetfulMonitor


def one_run(workers: int, profile: bool = False) -> dict:
    """In this process: run the program once and measure it."""
    import resource

    import pulumi
    from harness import BASE_CONFIG, MAIN, SwarmMocks
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await
    from testbed.sdk import fresh_stack

    ForgetfulMonitor = forgetful_monitor_class()
    fresh_stack()
    mocks = SwarmMocks()
    monitor = ForgetfulMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="swarm", stack="bench", preview=False, monitor=monitor)
    config = {**BASE_CONFIG, "swarm:managerCount": "3", "swarm:workerCount": str(workers)}
    pulumi.runtime.set_all_config(config, [])

    import runpy

    def program():
        runpy.run_path(str(MAIN), run_name="__main__")

    started = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    _sync_await(run_pulumi_func(program))
    seconds = time.perf_counter() - started
    if profile:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"workers": workers, "seconds": seconds, "peak_rss_mib": peak_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--runs", type=int, default=3, help="runs per size (the median is reported)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", type=int, metavar="WORKERS", help="profile one run of this size")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(one_run(args.child)))
        return
    if args.profile is not None:
        print(json.dumps(one_run(args.profile, profile=True)))
        return

    rows = []
    for workers in args.workers:
        samples = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(workers)],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            ).stdout
            samples.append(json.loads(out.strip().splitlines()[-1]))
        rows.append(
            {
                "workers": workers,
                "seconds": statistics.median(s["seconds"] for s in samples),
                "peak_rss_mib": max(s["peak_rss_mib"] for s in samples),
                "samples": [round(s["seconds"], 3) for s in samples],
            }
        )

    print(f"{'3 managers +':>14} {'wall (median)':>14} {'peak RSS':>10} {'per worker':>11} {'marginal':>10}")
    previous = None
    for row in rows:
        row["per_worker_ms"] = 1000 * row["seconds"] / row["workers"]
        marginal = ""
        if previous is not None:
            row["marginal_ms"] = 1000 * (row["seconds"] - previous["seconds"]) / (row["workers"] - previous["workers"])
            marginal = f"{row['marginal_ms']:.1f} ms"
        print(
            f"{row['workers']:>6} workers {row['seconds']:>12.2f} s {row['peak_rss_mib']:>6.0f} MiB"
            f" {row['per_worker_ms']:>8.1f} ms {marginal:>10}"
        )
        previous = row
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
