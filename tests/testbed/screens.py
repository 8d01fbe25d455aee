"""What a person sees: a command's screen in a real terminal (tmux), and a page as headless
Chromium renders it. With CI set a missing tool fails the test; locally it skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where screenshots are kept for a person to look at (CI artifacts): SWARM_ARTIFACTS, if set.
ROOT_ARTIFACTS = Path(os.environ["SWARM_ARTIFACTS"]) if os.environ.get("SWARM_ARTIFACTS") else None
if ROOT_ARTIFACTS:
    ROOT_ARTIFACTS.mkdir(parents=True, exist_ok=True)


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{names[0]} is missing: scripts/install-bed-packages --test installs it"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def terminal_screen(command: str, until: str, workdir: Path, timeout: float = 180) -> str:
    """Run `command` in a 160x60 tmux terminal; return the screen once `until` shows."""
    tmux = _tool("tmux")
    session = f"swarm-test-{os.getpid()}"
    socket = ["-S", str(workdir / "tmux.sock")]  # a server of its own, ended below
    subprocess.run([tmux, *socket, "new-session", "-d", "-s", session, "-x", "160", "-y", "60",
                    f"{command}; echo '== exit' $?; sleep 600"], check=True, timeout=30)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = subprocess.run([tmux, *socket, "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True, timeout=30, check=True).stdout  # fmt: skip
            if until in screen or "== exit" in screen:
                time.sleep(1)  # the rest of the view, drawn right after
                return subprocess.run([tmux, *socket, "capture-pane", "-p", "-t", session], capture_output=True,
                                      text=True, timeout=30, check=True).stdout  # fmt: skip
            time.sleep(0.5)
        raise AssertionError(f"{until!r} did not show within {timeout}s; the screen:\n{screen}")
    finally:
        subprocess.run([tmux, *socket, "kill-server"], capture_output=True, timeout=30, check=False)


def screenshot(page: Path, workdir: Path) -> Path:
    """A PNG of `page` as headless Chromium renders it, beside the page."""
    chromium = _tool("chromium", "chromium-browser")
    shot = page.with_suffix(".png")
    profile = workdir / "chromium-profile"
    run = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--window-size=1300,1100", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    return shot
