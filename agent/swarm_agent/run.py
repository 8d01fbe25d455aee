"""Every program the agent calls (docker, aws, systemctl, tar), bounded and checked.

A verb never talks to another program except through `call` (or the `docker`, `aws` and
`systemctl` shorthands): each call has a time limit, and a call that fails or runs out
of time raises `CallFailed`, so nothing a verb depends on can fail silently (the bash
agent's `printf '%s' "$(false)"` published unsigned backups). The limits are here and
nowhere else. Nothing secret ever goes into an argv: secrets travel on `input`, and a
failure's message names the program and its first arguments, never its input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

# Seconds. SWARM_*_TIMEOUT shorten them in tests; sudo's env_reset keeps a caller's out.
DOCKER_TIMEOUT = int(os.environ.get("SWARM_DOCKER_TIMEOUT", "120"))  # one docker CLI call
DOCKER_LONG_TIMEOUT = 600  # docker stack deploy, docker image prune
AWS_TIMEOUT = int(os.environ.get("SWARM_AWS_TIMEOUT", "900"))  # one aws call (an upload is the longest)
SYSTEMCTL_TIMEOUT = 120  # a stop of dockerd waits for its containers
TOOL_TIMEOUT = 300  # tar and the like, on the node's own disk

# sudo's secure_path may lack the sbin dirs where docker, dockerd and service live.
SEARCH_PATH = ":".join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
)


TIMED_OUT = 124  # the returncode of a call with check=False that did not answer in time


class AgentError(Exception):
    """A verb's failure: its message is the line on-call reads, and says what to do."""


class CallFailed(AgentError):
    def __init__(self, program: str, args: Sequence[str], returncode: int, stderr: str):
        self.program, self.args, self.returncode, self.stderr = program, list(args), returncode, stderr
        shown = " ".join([program, *list(args)[:3]])
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        what = "timed out" if returncode == -1 else f"exited {returncode}"
        super().__init__(f"{shown}: {what}: {detail[:400]}")


class Result(NamedTuple):
    stdout: str
    stderr: str
    returncode: int


def which(program: str) -> str:
    found = shutil.which(program, path=SEARCH_PATH)
    if found is None:
        raise AgentError(f"{program} is not installed on this node (looked in {SEARCH_PATH})")
    return found


def call(
    program: str,
    *args: str,
    timeout: float = TOOL_TIMEOUT,
    input: str | None = None,
    check: bool = True,
    env: dict | None = None,
    binary_input: bytes | None = None,
    stdout_file: str | None = None,
) -> Result:
    """Run `program args...` with a time limit; raise CallFailed unless it exits 0 (check)."""
    argv = [which(program), *args]
    full_env = dict(os.environ, PATH=SEARCH_PATH, **(env or {}))
    data = binary_input if binary_input is not None else (input.encode() if input is not None else None)
    out = open(stdout_file, "wb") if stdout_file else subprocess.PIPE
    try:
        proc = subprocess.run(
            argv,
            input=data,
            stdin=subprocess.DEVNULL if data is None else None,
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=timeout,
            env=full_env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        if check:
            raise CallFailed(program, args, -1, f"no answer within {timeout:g}s") from None
        # Asked for the outcome, not for success: no answer in time is one (a wedged
        # dockerd reads as "down", as coreutils' timeout says 124).
        return Result("", f"no answer within {timeout:g}s", TIMED_OUT)
    finally:
        if stdout_file:
            out.close()
    stdout = "" if stdout_file else proc.stdout.decode(errors="replace")
    result = Result(stdout, proc.stderr.decode(errors="replace"), proc.returncode)
    if check and proc.returncode != 0:
        raise CallFailed(program, args, proc.returncode, result.stderr or result.stdout)
    return result


def docker(*args: str, timeout: float = DOCKER_TIMEOUT, **kwargs) -> Result:
    return call("docker", *args, timeout=timeout, **kwargs)


def systemctl(*args: str, check: bool = True) -> Result:
    return call("systemctl", *args, timeout=SYSTEMCTL_TIMEOUT, check=check)


def now() -> float:
    """The agent's clock (monotonic seconds). Verbs use `run.now()` and `run.pause()`, never
    the time module, so the unit tests can run every bounded wait on a fake clock."""
    return time.monotonic()


def pause(seconds: float) -> None:
    time.sleep(seconds)


def wait_until(
    ready: Callable[[], object], timeout: float, failure: Callable[[], str], interval: float = 1.0
) -> object:
    """Poll `ready` until it returns something true, for at most `timeout` seconds; then
    raise AgentError with the message `failure()` builds (it may look at the state)."""
    deadline = now() + timeout
    while True:
        value = ready()
        if value:
            return value
        if now() >= deadline:
            raise AgentError(failure())
        pause(interval)


def note(message: str) -> None:
    """A line for the operator, on stderr (stdout is what the program reads)."""
    print(message, file=sys.stderr, flush=True)
