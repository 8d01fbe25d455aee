"""Fixtures for the end-to-end scenarios: one bed per session, removed even on failure.

With CI set, a bed that cannot start fails the run; locally the scenarios skip and say
what is missing (they need root and the packages `.ci/run` installs).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from testbed.addresses import RAISED_QUOTA
from testbed.bed import Bed, BedError, missing_prerequisites
from testbed.engine import abort_all

WALL_TIMES: dict[str, float] = {}


def _unavailable(message: str):
    if os.environ.get("CI"):
        pytest.fail(f"the test bed cannot start and CI is set: {message}", pytrace=False)
    pytest.skip(f"test bed unavailable: {message}")


@pytest.fixture(scope="session")
def bed_prerequisites():
    """Root and the bed's packages are here (else: fail in CI, skip locally)."""
    problems = missing_prerequisites()
    if problems:
        _unavailable("; ".join(problems))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def bed(bed_prerequisites, log_dir):
    # A CI timeout sends SIGTERM: turn it into an interrupt, so the bed is still removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    instance = Bed(log_dir=log_dir, address_quota=RAISED_QUOTA)
    try:
        instance.start()
    except BedError as error:
        instance.close()
        _unavailable(str(error))
    try:
        yield instance
    finally:
        abort_all()  # an interrupted update's sessions end now, not at their timeout
        instance.close()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e-logs")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    started = time.monotonic()
    try:
        return (yield)
    finally:
        WALL_TIMES[item.nodeid] = time.monotonic() - started


def pytest_terminal_summary(terminalreporter):
    if WALL_TIMES:
        terminalreporter.section("end-to-end scenario wall times")
        for nodeid, seconds in WALL_TIMES.items():
            terminalreporter.write_line(f"{seconds:7.1f}s  {nodeid}")
