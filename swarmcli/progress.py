"""What a long verb (night, morning, roll, drill) is doing: a line per step on stderr with
the seconds since the verb started, so a terminal, a CI log and `--json | jq` (stdout
stays the result) all show where the time goes and where it stopped. The steps are kept
for the verb's JSON summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, verb: str, quiet: bool = False, stream: TextIO | None = None, clock=time.monotonic):
        """`quiet`: no lines, the steps still recorded (a library caller's default);
        `stream` None: whatever sys.stderr is when a line is written."""
        self.verb, self.quiet, self.stream, self.clock = verb, quiet, stream, clock
        self.started = clock()
        self.steps: list[dict] = []

    def elapsed(self) -> float:
        return round(self.clock() - self.started, 1)

    def note(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.elapsed():7.1f}s] {self.verb}: {message}", file=self.stream or sys.stderr, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """One step: announced, then done or failed with its own duration; a failure propagates."""
        began = self.clock()
        self.note(f"{name} ...")
        try:
            yield
        except BaseException:
            seconds = round(self.clock() - began, 1)
            self.steps.append({"step": name, "seconds": seconds, "ok": False})
            self.note(f"{name}: failed after {seconds:g} s")
            raise
        seconds = round(self.clock() - began, 1)
        self.steps.append({"step": name, "seconds": seconds, "ok": True})
        self.note(f"{name}: done in {seconds:g} s")
