"""Formation and next-morning restore on the test bed: the program's way against one at a time.

For each size (3 managers + 2, 6 and 12 workers by default), in one run of one bed:

1. *parallel*: `up` of the real program with the bed's engine executing independent
   resources at once (as the Pulumi engine does): a fresh morning.
2. *restore*: `destroy` (the backup hook runs), then `up` again: the next morning, which
   downloads, verifies and restores the backup onto manager 0 (`force-new-cluster`),
   then joins and reconciles.
3. *one at a time*: a fresh morning of the same size with the engine executing one
   resource at a time: the same scripts, run node after node, as the seeds' manual
   procedure did.

Formation is measured from the moment every host is ready (the engine counts an instance
as created once its user-data has finished, as a booted machine) to the end of
`reconcile` (every node Ready), from the engine's own timings: the `ready` checks,
bootstrap, tokens, joins and reconcile. The mirror comes after it. Whole `up` times are
reported too, and how busy the machine's cores and the engine's own process were in the
window (benchmarks/cpu.py): with every bed host on the same cores, the program's formation
cannot be shorter than its CPU work divided by the cores, whatever it runs at once.

    sudo venv/bin/python benchmarks/formation.py                  # 2, 6, 12 workers
    sudo venv/bin/python benchmarks/formation.py --workers 2 --json out.json
    sudo venv/bin/python benchmarks/formation.py --workers 12 --timeline   # where the fresh formation goes

Needs root and the packages `.ci/run` installs (it says what is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from cpu import CpuSampler  # noqa: E402
from testbed.addresses import RAISED_QUOTA  # noqa: E402
from testbed.bed import Bed, missing_prerequisites  # noqa: E402
from testbed.engine import Engine, Result  # noqa: E402

CORES = os.cpu_count() or 1


def window(result: Result, cpu: CpuSampler) -> dict:
    """Formation window and the hosts' readiness, from the engine's per-resource timings;
    how busy the machine and the engine were in it."""
    timings = result.timings

    def one(suffix: str) -> tuple[float, float]:
        [span] = [span for name, span in timings.items() if name.endswith(suffix)]
        return span

    hosts_ready = max(
        end for name, (_, end) in timings.items() if "-nodes-manager-" in name or "-nodes-worker-" in name
    )
    bootstrap_start, bootstrap_end = one("-swarm-bootstrap")
    _, reconcile_end = one("-swarm-reconcile")
    return {
        "up_seconds": round(result.seconds, 1),
        "hosts_ready_at": round(hosts_ready, 1),
        "formation_seconds": round(reconcile_end - hosts_ready, 1),
        "bootstrap_seconds": round(bootstrap_end - bootstrap_start, 1),
        **cpu.window(result.began + hosts_ready, result.began + reconcile_end),
    }


def print_timeline(result: Result, workers: int, zero: float) -> None:
    """The formation's commands, in the order they ended, against `zero`, the moment every
    host was ready: what the chain is made of."""
    steps = sorted(
        (end, start, name) for name, (start, end) in result.timings.items() if "-swarm-" in name and end > zero - 30
    )
    print(f"3 + {workers}: formation steps, seconds after every host was ready (start -> end, took)")
    for end, start, name in steps:
        print(f"  {start - zero:7.1f} -> {end - zero:6.1f}  {end - start:5.1f}  {name.split('-swarm-', 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 6, 12])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--timeline", action="store_true", help="print the fresh formation's steps (start, end)")
    args = parser.parse_args()
    problems = missing_prerequisites()
    if problems:
        sys.exit("formation benchmark: the bed cannot start here:\n  " + "\n  ".join(problems))

    logs = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
    rows = []
    started = time.monotonic()
    with Bed(address_quota=RAISED_QUOTA) as bed, CpuSampler() as cpu:
        for workers in args.workers:
            config = bed.program_config(3, workers)
            parallel = Engine(bed, config, stack=f"par{workers}", log_dir=logs, wait_for_boot=True)
            fresh_result = parallel.up()
            fresh = window(fresh_result, cpu)
            if args.timeline:
                print_timeline(fresh_result, workers, fresh["hosts_ready_at"])
            parallel.destroy()
            restore_result = parallel.up()
            assert restore_result.outputs["bootstrapResult"].startswith("bootstrap: restored from"), restore_result
            restore = window(restore_result, cpu)
            parallel.destroy()
            serial = Engine(bed, config, stack=f"seq{workers}", log_dir=logs, parallelism=1, wait_for_boot=True)
            one_at_a_time = window(serial.up(), cpu)
            serial.destroy()
            row = {
                "managers": 3,
                "workers": workers,
                "parallel": fresh,
                "restore": restore,
                "one_at_a_time": one_at_a_time,
                "formation_ratio": round(fresh["formation_seconds"] / one_at_a_time["formation_seconds"], 2),
                # The program's formation cannot be shorter than its CPU work spread over
                # every core: the lowest ratio this machine allows, whatever the order.
                "cpu_floor_ratio": round(
                    fresh["formation_seconds"] * fresh["machine_cores"] / CORES / one_at_a_time["formation_seconds"], 2
                ),
                "restore_ratio": round(restore["formation_seconds"] / fresh["formation_seconds"], 2),
                "restore_up_ratio": round(restore["up_seconds"] / fresh["up_seconds"], 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\nmachine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}")
    print(f"bed run: {time.monotonic() - started:.0f} s; engine logs in {logs}\n")
    print(
        "| 3 managers + | formation, program | formation, one at a time | ratio "
        "| restore formation | restore / fresh | `up`: fresh / restore / one at a time "
        "| busy cores in formation, machine / engine: program, one at a time | CPU floor of the ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p, s, x = r["parallel"], r["one_at_a_time"], r["restore"]
        print(
            f"| {r['workers']} workers | {p['formation_seconds']} s | {s['formation_seconds']} s | "
            f"{r['formation_ratio']} | {x['formation_seconds']} s | {r['restore_ratio']} | "
            f"{p['up_seconds']} / {x['up_seconds']} / {s['up_seconds']} s | "
            f"{p['machine_cores']} / {p['engine_cores']}, {s['machine_cores']} / {s['engine_cores']} | "
            f"{r['cpu_floor_ratio']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
