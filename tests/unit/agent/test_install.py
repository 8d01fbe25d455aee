"""The agent's installer on a node: a digest-checked release, switched to atomically, with
every other release and an older agent's files removed (paths under a temporary root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from node_fakes import Fakes
from swarm_agent import install

AGENT = Path(__file__).resolve().parents[3] / "agent"


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A node's /usr/local/lib/swarm and link targets under tmp_path; no systemd, a cron dir."""
    base = tmp_path / "usr/local/lib/swarm"
    base.mkdir(parents=True)
    monkeypatch.setattr(install, "BASE", str(base))
    links = {str(tmp_path / where.lstrip("/")): rel for where, rel in install.LINKS.items()}
    monkeypatch.setattr(install, "LINKS", links)
    monkeypatch.setattr(install, "SYSTEMD_RUN", str(tmp_path / "run/systemd/system"))
    (tmp_path / "etc/cron.daily").mkdir(parents=True)
    monkeypatch.setattr(install, "CRON_JOB", str(tmp_path / "etc/cron.daily/swarm-image-cleanup"))
    (tmp_path / "etc/cron.d").mkdir(parents=True)
    monkeypatch.setattr(install, "CRON_REFRESH", str(tmp_path / "etc/cron.d/swarm-registry-auth"))
    monkeypatch.setattr(install.os, "chown", lambda *args: None)  # the tests need not be root
    return base


def unpacked(tmp_path: Path, name: str = "incoming") -> Path:
    """agent/ as root unpacks it on the node, beside the releases."""
    target = tmp_path / "usr/local/lib/swarm/incoming" / name
    shutil.copytree(AGENT, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def test_a_release_is_installed_switched_to_and_linked(node, tmp_path):
    digest = install.tree_digest(str(AGENT))
    report = install.install(str(unpacked(tmp_path)), digest)
    current = node / "current"
    assert os.readlink(current) == f"releases/{digest[:16]}"
    assert install.tree_digest(str(current)) == digest
    assert os.path.realpath(tmp_path / "usr/local/sbin/swarm-node") == str(
        node / "releases" / digest[:16] / "swarm-node"
    )
    assert (tmp_path / "etc/cron.daily/swarm-image-cleanup").read_text().endswith("swarm-node cleanup-images\n")
    # Without systemd the registry refresh still runs every 4 hours, as root.
    refresh = (tmp_path / "etc/cron.d/swarm-registry-auth").read_text()
    assert refresh == "17 */4 * * * root /usr/local/sbin/swarm-node registry-auth\n"
    assert f"{digest[:16]} is current (was none)" in report


def test_an_agent_that_arrived_altered_changes_nothing(node, tmp_path):
    digest = install.tree_digest(str(AGENT))
    install.install(str(unpacked(tmp_path, "first")), digest)
    altered = unpacked(tmp_path, "second")
    (altered / "swarm_agent" / "ready.py").write_text("raise SystemExit('not the agent')\n")
    with pytest.raises(SystemExit, match="nothing was changed"):
        install.install(str(altered), digest)
    assert os.readlink(node / "current") == f"releases/{digest[:16]}"
    assert install.tree_digest(str(node / "current")) == digest


def test_the_bash_agents_files_and_other_releases_are_removed(node, tmp_path):
    for name in ("swarm-node", "swarm-aliases.sh", "swarm-image-cleanup.timer"):  # the bash agent's layout
        (node / name).write_text("old\n")
    (node / "releases" / "0123456789abcdef").mkdir(parents=True)
    digest = install.tree_digest(str(AGENT))
    report = install.install(str(unpacked(tmp_path)), digest)
    assert sorted(os.listdir(node)) == ["current", "incoming", "releases"]
    assert os.listdir(node / "releases") == [digest[:16]]
    assert "releases/0123456789abcdef" in report and "swarm-node" in report


def test_installing_the_same_release_again_keeps_it(node, tmp_path):
    digest = install.tree_digest(str(AGENT))
    install.install(str(unpacked(tmp_path, "first")), digest)
    again = unpacked(tmp_path, "second")
    assert f"{digest[:16]} is current (was {digest[:16]})" in install.install(str(again), digest)
    assert not again.exists()  # the unpacked copy is dropped, the release kept


def test_the_digest_covers_names_modes_and_contents(tmp_path):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "x.py").write_text("x = 1\n")
    first = install.tree_digest(str(tree))
    (tree / "a" / "x.py").chmod(0o755)
    assert install.tree_digest(str(tree)) != first
    (tree / "a" / "x.py").chmod(0o644)
    assert install.tree_digest(str(tree)) == first
    (tree / "a" / "x.py").rename(tree / "a" / "y.py")
    assert install.tree_digest(str(tree)) != first


@pytest.fixture
def systemd_node(node, tmp_path, monkeypatch):
    """The node of `node`, with systemd running and a fake systemctl that answers everything."""
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    monkeypatch.setattr(install, "UNIT_DIR", str(tmp_path / "etc/systemd/system"))
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "tools").mkdir()
    fakes = Fakes(tmp_path / "tools")
    fakes.on("systemctl")
    monkeypatch.setenv("PATH", f"{fakes.bin}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(fakes.dir))
    return fakes


def test_the_timers_cost_one_reload_when_their_units_change_and_none_after(systemd_node, tmp_path):
    digest = install.tree_digest(str(AGENT))
    report = install.install(str(unpacked(tmp_path, "first")), digest)
    timers = ["swarm-image-cleanup.timer", "swarm-registry-auth.timer", "swarm-logs.timer", "swarm-health.timer"]
    enable = ["enable", "--no-reload", "--now", *timers]
    assert systemd_node.argvs("systemctl") == [["daemon-reload"], enable]
    written = ", ".join(install.UNITS)  # services first, then their timers
    assert f"cleanup timers ({written} written)" in report
    for unit in install.UNITS:
        assert (tmp_path / "etc/systemd/system" / unit).read_bytes() == (AGENT / "units" / unit).read_bytes()
    # The same units again (a reinstall at a key switch): no reload, the timer kept enabled.
    install.install(str(unpacked(tmp_path, "second")), digest)
    assert systemd_node.argvs("systemctl") == [["daemon-reload"], enable, enable]


def test_a_failing_systemctl_fails_the_install(systemd_node, tmp_path):
    systemd_node.rules.clear()
    systemd_node.on("systemctl", "daemon-reload", rc=1, stderr="Failed to reload daemon\n")
    with pytest.raises(subprocess.CalledProcessError):
        install.install(str(unpacked(tmp_path)), install.tree_digest(str(AGENT)))
