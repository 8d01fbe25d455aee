"""The files that go to the nodes: shellcheck-clean shell, the agent's entry point, the units."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest
from harness import require_tool
from swarm_agent import cli, tarballs

from components.payload import ROOT, STACK_FILES, USER_DATA_TEMPLATE

AGENT = ROOT / "agent"
SHELL_FILES = [USER_DATA_TEMPLATE, AGENT / "shell" / "swarm-aliases.sh", AGENT / "shell" / "swarm-node.bash-completion"]


def test_the_node_files_exist():
    assert (AGENT / "swarm-node").stat().st_mode & 0o111
    assert {"swarm-image-cleanup.service", "swarm-image-cleanup.timer"} <= {p.name for p in (AGENT / "units").iterdir()}
    assert {"mirror.yml", "mirror-config.yml"} <= {p.name for p in STACK_FILES.iterdir()}


@pytest.mark.parametrize("path", SHELL_FILES, ids=[p.name for p in SHELL_FILES])
def test_shellcheck_clean(path):
    shellcheck = require_tool("shellcheck")
    result = subprocess.run([shellcheck, "-x", "-s", "bash", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_user_data_is_strict():
    assert "set -euo pipefail" in USER_DATA_TEMPLATE.read_text()


def swarm_node(*args: str) -> subprocess.CompletedProcess:
    """The launcher as a node runs it (python3 from PATH, the package beside it)."""
    command = ["python3", str(AGENT / "swarm-node"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


def test_help_lists_every_verb():
    result = swarm_node("--help")
    assert result.returncode == 0
    for verb in ("wait-ready", "bootstrap", "tokens", "join", "reconcile", "backup", "mirror-deploy", "cleanup-images"):
        assert verb in result.stdout


def test_unknown_verb_is_a_usage_error():
    result = swarm_node("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_the_completion_offers_every_verb():
    text = (AGENT / "shell" / "swarm-node.bash-completion").read_text()
    verbs = set(cli.parser()._subparsers._group_actions[0].choices)
    offered = set(text.split('1:*) words="', 1)[1].split('"', 1)[0].split())
    assert verbs <= offered, verbs - offered


def test_image_cleanup_spares_kept_images_and_runs_on_machines_that_live_only_a_day():
    assert "label!=swarm.keep" in (AGENT / "swarm_agent" / "ready.py").read_text()
    # The bed proves it fires (tests/e2e/test_daily_cycle.py); here, that its schedule
    # counts from boot: a midnight timer never fires on nodes that live 06:00 to 19:00.
    lines = (AGENT / "units" / "swarm-image-cleanup.timer").read_text().splitlines()
    settings = {line.split("=")[0] for line in lines if "=" in line and not line.startswith("#")}
    assert {"OnBootSec", "OnUnitActiveSec"} <= settings and "OnCalendar" not in settings
    # It must never start a dockerd that a backup has stopped.
    unit = (AGENT / "units" / "swarm-image-cleanup.service").read_text().splitlines()
    assert not [line for line in unit if line.startswith(("Requires=", "BindsTo=", "Wants="))]


def make_tar(path, members: list[str], gz: bool = True) -> None:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name in members:
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    ("members", "gz", "problem"),
    [
        (["swarm/raft/wal-v3-encrypted/0.wal", "swarm/certificates/swarm-node.key"], True, ""),
        (["swarm/docker-state.json"], True, "without swarm/raft/ or swarm/certificates/ (a hollow backup)"),
        (["swarm/raft/snap-v3-encrypted/1.snap"], True, "without swarm/raft/ or swarm/certificates/ (a hollow backup)"),
        (["swarm/raft/x", "swarm/certificates/y", "etc/cron.d/evil"], True, "not a tar.gz of swarm/ alone"),
        (["swarm/raft/x", "swarm/certificates/y"], False, "not a tar.gz"),
    ],
    ids=["good", "hollow", "no-certificates", "stray-member", "not-gzip"],
)
def test_a_backup_tar_must_hold_the_raft_log_and_the_certificates_and_nothing_else(tmp_path, members, gz, problem):
    make_tar(tmp_path / "b.tar.gz", members, gz)
    assert tarballs.content_problem(str(tmp_path / "b.tar.gz")) == problem


@pytest.mark.parametrize(
    ("first_lines", "sealed"),
    [
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nkek-version: 0\n", True),  # Docker 20.10 and 26
        ("-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n", True),  # RFC 1423
        ("-----BEGIN PRIVATE KEY-----\nkek-version: 0\nraft-dek: EiA=\n", False),
    ],
)
def test_an_autolocked_node_key_is_told_from_an_open_one(tmp_path, first_lines, sealed):
    (tmp_path / "swarm" / "certificates").mkdir(parents=True)
    (tmp_path / "swarm" / "certificates" / "swarm-node.key").write_text(first_lines + "\nAAAA\n-----END-----\n")
    assert tarballs.node_key_sealed(str(tmp_path / "swarm")) is sealed


def install_bed_packages(tmp_path, installed: set[str], uid: int) -> tuple[subprocess.CompletedProcess, str]:
    """scripts/install-bed-packages with stand-ins for dpkg-query, apt-get and id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    stubs = {
        "dpkg-query": 'case " $INSTALLED " in *" ${@: -1} "*) echo \'install ok installed\';; *) exit 1;; esac',
        "apt-get": f'echo "apt-get $*" >>{calls}',
        "id": f"echo {uid}",
        "python3": "exit 0",  # a python3 that can make virtualenvs
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = ROOT / "scripts" / "install-bed-packages"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "INSTALLED": " ".join(sorted(installed))}
    result = subprocess.run(["bash", str(script), "--test"], capture_output=True, text=True, env=env, timeout=30)
    return result, calls.read_text() if calls.exists() else ""


BED_PACKAGES = {"systemd-container", "debootstrap", "docker.io", "openssh-client", "docker-registry",
                "busybox-static", "iproute2", "iptables", "shellcheck", "tmux", "chromium"}  # fmt: skip


def test_the_bed_packages_are_left_alone_when_all_are_there(tmp_path):
    result, calls = install_bed_packages(tmp_path, BED_PACKAGES, uid=1000)
    assert result.returncode == 0 and "all there" in result.stdout, result.stderr
    assert calls == ""  # not even apt-get update


def test_missing_bed_packages_are_named_and_need_root(tmp_path):
    result, calls = install_bed_packages(tmp_path, BED_PACKAGES - {"debootstrap", "shellcheck"}, uid=1000)
    assert result.returncode == 1 and calls == ""
    assert "missing debootstrap shellcheck; run as root: sudo" in result.stderr
