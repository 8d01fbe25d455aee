"""Who is busy while a benchmark runs: the machine's CPUs and this process (the bed's
engine, its SSH sessions and the program run in it), sampled from /proc.

A formation that keeps every core busy cannot be made shorter by running more at once,
only by doing less; one that keeps this process at one core is held by the bed's engine
(Python's GIL), not by the nodes.
"""

from __future__ import annotations

import bisect
import os
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> int:
    """Jiffies the machine's CPUs have spent on anything but idle and iowait."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _own() -> int:
    """Jiffies this process (every thread) has run, user and system."""
    with open("/proc/self/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuSampler:
    """Samples every `interval` seconds in a thread, until stopped; `window` integrates."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), _machine_busy(), _own()))
            self._stop.wait(self.interval)

    def window(self, start: float, end: float) -> dict:
        """Average busy cores, of the machine and of this process, between two monotonic
        moments (the nearest samples inside them)."""
        stamps = [s[0] for s in self.samples]
        first = min(bisect.bisect_left(stamps, start), len(stamps) - 1)
        last = max(bisect.bisect_right(stamps, end) - 1, first)
        (t0, busy0, own0), (t1, busy1, own1) = self.samples[first], self.samples[last]
        span = t1 - t0
        if span <= 0:
            return {"machine_cores": None, "engine_cores": None}
        return {
            "machine_cores": round((busy1 - busy0) / TICK / span, 2),
            "engine_cores": round((own1 - own0) / TICK / span, 2),
        }
