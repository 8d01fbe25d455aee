"""Every call the CLI makes to the Pulumi CLI: from the project directory (Pulumi.yaml),
`--stack` and `--non-interactive` always given, bounded in time, and without an SSH agent
socket that nothing answers. pulumi-command dials `SSH_AUTH_SOCK` before the key it is
given and fails every remote command when that agent is gone (a shell or tmux left from an
earlier login, a CI runner's stale variable): such a variable is dropped for pulumi, a live
agent is kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
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


CANCEL_GRACE = 60  # seconds pulumi gets after SIGINT to record its state and stop


def run(args: list[str], stack: str, timeout: int = QUICK, capture: bool = True) -> subprocess.CompletedProcess:
    """`pulumi ARGS --stack STACK --non-interactive`, raising on a failure or the bound.
    Uncaptured, its output goes to stderr: stdout is the verb's result (`--json`)."""
    command = [require(), *args, "--stack", stack, "--non-interactive"]
    shown = " ".join(["pulumi", *args, "--stack", stack])
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} if capture else {"stdout": 2}
    process = subprocess.Popen(command, cwd=ROOT, env=environment(), text=True, **streams)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        hung = "" if args[:1] == ["stack"] else hung_hosts(stack)
        raise SwarmCliError(f"{shown} did not finish within {timeout} s{hung}") from None
    done = subprocess.CompletedProcess(command, process.returncode, out, err)
    if done.returncode != 0:
        said = (done.stderr or "").strip()[-2000:] if capture else "its output is above"
        raise SwarmCliError(f"{shown} failed (exit {done.returncode}): {said}")
    return done


def _stop(process: subprocess.Popen) -> None:
    """SIGINT (pulumi cancels and records what is in flight), then SIGKILL after a grace."""
    process.send_signal(signal.SIGINT)
    try:
        process.communicate(timeout=CANCEL_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def hung_hosts(stack: str) -> str:
    """Which operations were still running, and on which host: Pulumi records an operation
    in the state's pending_operations before it starts it. pulumi-command bounds only the
    TCP connect (perDialTimeout): a host that accepts the connection and never answers SSH,
    or a command that never ends, holds the run for ever."""
    try:
        done = run(["stack", "export", "--show-secrets"], stack)  # a `stack` call: no hung_hosts of its own
        pending = json.loads(done.stdout).get("deployment", {}).get("pending_operations") or []
    except (SwarmCliError, ValueError):
        return "; which hosts hung could not be read from the state"
    lines = []
    for operation in pending:
        resource = operation.get("resource") or {}
        connection = (resource.get("inputs") or {}).get("connection") or {}
        where = (
            f" on {connection['host']}:{connection.get('port', 22)}"
            if isinstance(connection, dict) and connection.get("host")
            else ""
        )
        lines.append(f"{operation.get('type', '?')} of {resource.get('urn', '?').rsplit('::', 1)[-1]}{where}")
    if not lines:
        return ""
    return (
        "; still running: "
        + "; ".join(lines)
        + (
            " (a host that accepts SSH's TCP connection and never answers holds pulumi-command for ever: "
            "see README, When something goes wrong; `pulumi cancel` if the stack stays locked)"
        )
    )
