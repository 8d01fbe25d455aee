"""The node scripts as files: shellcheck-clean, and the parts that need no node behave."""

from __future__ import annotations

import subprocess

import pytest
from harness import require_tool

from components.payload import NODE_SCRIPTS, STACK_FILES

SWARM_NODE = NODE_SCRIPTS / "swarm-node"
SHELL_FILES = sorted(p for p in NODE_SCRIPTS.iterdir() if p.is_file() and p.read_text().startswith("#!"))


def test_the_node_scripts_exist():
    names = {p.name for p in NODE_SCRIPTS.iterdir()}
    assert {
        "user-data.sh",
        "swarm-node",
        "swarm-aliases.sh",
        "swarm-image-cleanup.service",
        "swarm-image-cleanup.timer",
    } <= names
    assert {"mirror.yml", "mirror-config.yml"} <= {p.name for p in STACK_FILES.iterdir()}


@pytest.mark.parametrize("path", SHELL_FILES, ids=[p.name for p in SHELL_FILES])
def test_shellcheck_clean(path):
    shellcheck = require_tool("shellcheck")
    result = subprocess.run([shellcheck, "-x", "-s", "bash", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_scripts_are_strict():
    for path in (NODE_SCRIPTS / "user-data.sh", SWARM_NODE):
        assert "set -euo pipefail" in path.read_text(), path.name


def swarm_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SWARM_NODE), *args], capture_output=True, text=True, check=False, timeout=30)


def test_help_lists_every_verb():
    result = swarm_node("help")
    assert result.returncode == 0
    for verb in ("wait-ready", "bootstrap", "tokens", "join", "reconcile", "backup", "mirror-deploy", "cleanup-images"):
        assert verb in result.stdout + result.stderr


def test_unknown_verb_is_a_usage_error():
    result = swarm_node("frobnicate")
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_image_cleanup_spares_kept_images_and_runs_on_machines_that_live_only_a_day():
    text = SWARM_NODE.read_text()
    assert "label!=swarm.keep" in text
    # The bed proves it fires (tests/e2e/test_daily_cycle.py); here, that its schedule
    # counts from boot: a midnight timer never fires on nodes that live 06:00 to 19:00.
    lines = (NODE_SCRIPTS / "swarm-image-cleanup.timer").read_text().splitlines()
    settings = {line.split("=")[0] for line in lines if "=" in line and not line.startswith("#")}
    assert {"OnBootSec", "OnUnitActiveSec"} <= settings and "OnCalendar" not in settings
