"""One lock per node for the verbs that stop dockerd or change the swarm.

A Pulumi run that is killed leaves its remote verb running (pulumi-command asks for no
PTY, so nothing hangs it up), and the next run's verbs would interleave with it: a
bootstrap restoring while last night's backup still has dockerd stopped, two retires
each counting the other's manager as reachable, the image cleanup starting dockerd
through its socket in the middle of a backup's copy. Each of those verbs takes this
lock first (cli.py says which, and how long each waits); the holder writes who it is
into the file, so a verb that gives up names what it waited for. The kernel drops a
flock when its process ends, however it ends: a killed holder never leaves it behind.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from swarm_agent import paths, run
from swarm_agent.run import AgentError


class Busy(AgentError):
    """The lock stayed with another verb for the whole wait."""


@contextmanager
def held(verb: str, wait: int) -> Iterator[None]:
    """paths.NODE_LOCK for the body; waits at most `wait` seconds (0: one try) for another holder."""
    fd = os.open(paths.NODE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = run.now() + wait
        while not _try(fd):
            if run.now() >= deadline:
                raise Busy(
                    f"{verb}: {holder(fd)} holds this node's lock ({paths.NODE_LOCK}) after {wait}s of waiting. "
                    "Let it finish, or if it hangs, end it by its pid on the node, then retry"
                )
            run.pause(1)
        os.ftruncate(fd, 0)
        since = time.strftime("%H:%M:%S", time.gmtime())  # UTC, as the record says, whatever the node's zone
        os.pwrite(fd, f"{verb} (pid {os.getpid()}, since {since} UTC)\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def holder(fd: int) -> str:
    """What the holder wrote about itself ('another verb' before it has written)."""
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return f"'swarm-node {text}'" if text else "another verb"


def exclusive(wait: int):
    """Decorate a verb `f(args)` to run under the node's lock, waiting at most `wait` s."""

    def wrap(verb_function):
        @functools.wraps(verb_function)
        def locked(args):
            with held(getattr(args, "verb", None) or verb_function.__name__.replace("_", "-"), wait):
                return verb_function(args)

        return locked

    return wrap
