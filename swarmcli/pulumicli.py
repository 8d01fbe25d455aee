"""Every call the CLI makes to the Pulumi CLI: from the project directory (Pulumi.yaml),
`--stack` and `--non-interactive` always given, bounded in time, and without an SSH agent
socket that nothing answers. pulumi-command dials `SSH_AUTH_SOCK` before the key it is
given and fails every remote command when that agent is gone (a shell or tmux left from an
earlier login, a CI runner's stale variable): such a variable is dropped for pulumi, a live
agent is kept."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable

from swarmcli import ROOT
from swarmcli.errors import SwarmCliError

INSTALL = "https://www.pulumi.com/docs/install/"
QUICK = 120  # seconds: reading config, outputs or state
LONG = 3600  # seconds: an up, a destroy or a replacement (the nightly job allows 60 minutes)


def require() -> str:
    """The Pulumi CLI's path, or an error saying where to get it."""
    path = shutil.which("pulumi")
    if path is None:
        raise SwarmCliError(f"the Pulumi CLI is not on PATH: see {INSTALL}")
    return path


def dead_agent(path: str) -> str | None:
    """Why the socket at `path` cannot be an SSH agent; None when it answers, or when that
    cannot be told (then it is left alone: only a certainly dead agent is dropped)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such socket"
    except OSError:
        return None
    if not stat.S_ISSOCK(mode):
        return "not a socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return "nothing listens on it"
        except OSError:
            return None
    return None


def environment(note: Callable[[str], None] | None = None) -> dict[str, str]:
    """This process's environment for pulumi, less an SSH_AUTH_SOCK whose agent is gone."""
    env = dict(os.environ)
    agent = env.get("SSH_AUTH_SOCK")
    why = dead_agent(agent) if agent else None
    if why:
        del env["SSH_AUTH_SOCK"]
        if note:
            note(f"SSH_AUTH_SOCK={agent}: {why}; cleared for pulumi (pulumi-command would fail every remote command)")
    return env


def run(args: list[str], stack: str, timeout: int = QUICK, capture: bool = True) -> subprocess.CompletedProcess:
    """`pulumi ARGS --stack STACK --non-interactive`, raising on a failure or the bound.
    Uncaptured, its output goes to stderr: stdout is the verb's result (`--json`)."""
    command = [require(), *args, "--stack", stack, "--non-interactive"]
    shown = " ".join(["pulumi", *args, "--stack", stack])
    streams = {"capture_output": True} if capture else {"stdout": 2}
    try:
        done = subprocess.run(command, cwd=ROOT, env=environment(), text=True, timeout=timeout, check=False, **streams)
    except subprocess.TimeoutExpired as error:
        raise SwarmCliError(f"{shown} did not finish within {timeout} s") from error
    if done.returncode != 0:
        said = (done.stderr or "").strip()[-2000:] if capture else "its output is above"
        raise SwarmCliError(f"{shown} failed (exit {done.returncode}): {said}")
    return done
