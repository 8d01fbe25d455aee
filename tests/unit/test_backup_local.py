"""scripts/swarm_backup_local.py: backups kept on the machine running Pulumi.

A stand-in `ssh` on PATH plays manager 0: for `backup --stdout` it prints a tarball and
the swarm-backup line swarm-node prints (contract.py); for `stage-restore` it keeps what it was sent. The
real round trip (a swarm backed up, left, and restored) is the bed's scenario.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from harness import PRIVATE_KEY, ROOT
from swarm_agent.bootstrap import STAGED_RE

HELPER = ROOT / "scripts" / "swarm_backup_local.py"
PREFIX = "swarm/dev/"
FAKE_SSH = r"""#!/usr/bin/env python3
import json, os, stat, sys
argv = sys.argv[1:]
key = argv[argv.index("-i") + 1]
record = {"argv": argv, "key_mode": oct(stat.S_IMODE(os.stat(key).st_mode)), "key": open(key).read()}
known = [a.split("=", 1)[1] for a in argv if a.startswith("UserKnownHostsFile=")]
record["known_hosts"] = open(known[0]).read() if known and known[0] != "/dev/null" else None
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\n")
if argv[-2:] == ["backup", "--stdout"]:
    data = open(os.environ["FAKE_TARBALL"], "rb").read()
    sys.stdout.buffer.write(data)
    sys.stderr.write("backup: stopping docker\n")
    report = {"kind": "swarm-backup", "key": "backups/" + os.environ["FAKE_NAME"], "sha256": os.environ["FAKE_SHA"],
              "meta": {"engine": "26.1.5", "addr": "10.42.0.10", "signature": "ab" * 32}}
    sys.stderr.write(json.dumps(report) + "\n")
elif argv[-1] == "stage-restore":
    open(os.environ["FAKE_STAGE"], "wb").write(sys.stdin.buffer.read())
    print("stage-restore: staged")
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    tarball = tmp_path / "backup.tar.gz"
    tarball.write_bytes(os.urandom(4096))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SWARM_SSH_PRIVATE_KEY": PRIVATE_KEY,
        "FAKE_LOG": str(tmp_path / "ssh.log"),
        "FAKE_TARBALL": str(tarball),
        "FAKE_SHA": hashlib.sha256(tarball.read_bytes()).hexdigest(),
        "FAKE_NAME": "20261122T190000Z.tar.gz",
        "FAKE_STAGE": str(tmp_path / "staged.tar"),
    }
    return env, tmp_path / "backups"


def helper(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HELPER), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def fetch(env: dict, directory: Path, keep: int = 14) -> subprocess.CompletedProcess:
    return helper(env, "fetch", "--dir", str(directory), "--prefix", PREFIX, "--host", "10.0.0.10",
                  "--user", "pi", "--port", "2222", "--keep", str(keep))  # fmt: skip


def test_fetch_keeps_the_backup_its_checksum_and_the_latest_pointer(fake):
    env, directory = fake
    result = fetch(env, directory)
    assert result.returncode == 0, result.stderr
    store = directory / PREFIX / "backups"
    name, sha = env["FAKE_NAME"], env["FAKE_SHA"]
    assert (store / name).read_bytes() == Path(env["FAKE_TARBALL"]).read_bytes()
    assert (store / f"{name}.sha256").read_text() == f"{sha}  {name}\n"
    assert (store / "latest").read_text() == f"backups/{name} {sha}\n"
    # A backup holds the swarm's keys: owner-only, like the directory.
    assert stat.S_IMODE((store / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    [call] = [json.loads(line) for line in Path(env["FAKE_LOG"]).read_text().splitlines()]
    argv = call["argv"]
    assert argv[argv.index("-p") + 1] == "2222" and "pi@10.0.0.10" in argv
    assert argv[-4:] == ["sudo", "/usr/local/sbin/swarm-node", "backup", "--stdout"]
    # The key went through a 0600 file that is gone afterwards, never through argv.
    assert call["key_mode"] == "0o600" and call["key"].strip() == PRIVATE_KEY.strip()
    assert not any("PRIVATE KEY" in a for a in argv)
    assert not Path(argv[argv.index("-i") + 1]).exists()
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_a_backup_that_arrives_damaged_does_not_move_latest(fake):
    env, directory = fake
    assert fetch(env, directory).returncode == 0
    store = directory / PREFIX / "backups"
    before = (store / "latest").read_text()
    env = {**env, "FAKE_SHA": "0" * 64, "FAKE_NAME": "20261123T190000Z.tar.gz"}
    result = fetch(env, directory)
    assert result.returncode == 1
    assert "arrived with sha256" in result.stderr and "latest pointer was not moved" in result.stderr
    assert (store / "latest").read_text() == before
    assert not (store / "20261123T190000Z.tar.gz").exists()
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []


def test_a_failed_remote_backup_fails_the_teardown_with_its_error(fake):
    env, directory = fake
    result = fetch({**env, "FAKE_EXIT": "1"}, directory)
    assert result.returncode == 1 and "backup on 10.0.0.10 failed (exit 1)" in result.stderr
    assert not (directory / PREFIX / "backups" / "latest").exists()


def test_only_the_newest_backups_are_kept(fake):
    env, directory = fake
    for day in range(1, 5):
        assert fetch({**env, "FAKE_NAME": f"2026112{day}T190000Z.tar.gz"}, directory, keep=2).returncode == 0
    store = directory / PREFIX / "backups"
    assert sorted(p.name for p in store.iterdir()) == [
        "20261123T190000Z.tar.gz",
        "20261123T190000Z.tar.gz.meta",
        "20261123T190000Z.tar.gz.sha256",
        "20261124T190000Z.tar.gz",
        "20261124T190000Z.tar.gz.meta",
        "20261124T190000Z.tar.gz.sha256",
        "latest",
    ]


def staged(env: dict) -> dict[str, bytes]:
    with tarfile.open(env["FAKE_STAGE"]) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def push(env: dict, directory: Path, restore: str = "latest") -> subprocess.CompletedProcess:
    return helper(env, "push", "--dir", str(directory), "--prefix", PREFIX, "--host", "10.0.0.10",
                  "--user", "pi", "--restore", restore)  # fmt: skip


def test_push_sends_latest_and_the_backup_it_names(fake):
    env, directory = fake
    for day in (1, 2):
        assert fetch({**env, "FAKE_NAME": f"2026112{day}T190000Z.tar.gz"}, directory).returncode == 0
    result = push(env, directory)
    assert result.returncode == 0, result.stderr
    files = staged(env)
    assert sorted(files) == [
        "backups/20261122T190000Z.tar.gz",
        "backups/20261122T190000Z.tar.gz.meta",
        "backups/20261122T190000Z.tar.gz.sha256",
        "backups/latest",
    ]
    # The .meta as the node reported it, one field a line.
    meta = files["backups/20261122T190000Z.tar.gz.meta"].decode().splitlines()
    assert meta == ["engine=26.1.5", "addr=10.42.0.10", f"signature={'ab' * 32}"]
    assert files["backups/20261122T190000Z.tar.gz"] == Path(env["FAKE_TARBALL"]).read_bytes()
    # A pinned older backup (swarm:restoreFrom) is sent instead, without the pointer.
    assert push(env, directory, "backups/20261121T190000Z.tar.gz").returncode == 0
    pinned = "backups/20261121T190000Z.tar.gz"
    assert sorted(staged(env)) == [pinned, f"{pinned}.meta", f"{pinned}.sha256"]


def test_push_with_no_backup_yet_stages_nothing_so_a_new_swarm_starts(fake):
    env, directory = fake
    result = push(env, directory)
    assert result.returncode == 0 and "a new swarm starts" in result.stdout
    assert staged(env) == {}


def test_check_says_when_the_directory_cannot_be_written(fake, tmp_path):
    env, _ = fake
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = helper(env, "check", "--dir", str(blocker), "--prefix", PREFIX)
    assert result.returncode == 1 and "cannot write backups to" in result.stderr
    assert "swarm:backupDirectory" in result.stderr


def test_without_the_key_it_stops_and_names_the_setting(fake):
    env, directory = fake
    env = {k: v for k, v in env.items() if k != "SWARM_SSH_PRIVATE_KEY"}
    result = fetch(env, directory)
    assert result.returncode == 1 and "swarm:sshPrivateKey" in result.stderr


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKJjcqmW6tYyzQ3p8h0X8k4YyfXvQWm6gk8uA9lU1rZc"


def test_the_node_s_pinned_host_key_is_checked_and_nothing_else_is_accepted(fake):
    env, directory = fake
    result = helper(env, "fetch", "--dir", str(directory), "--prefix", PREFIX, "--host", "10.0.0.10",
                    "--port", "2222", "--user", "admin", "--host-key", HOST_KEY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [call] = [json.loads(line) for line in (Path(env["FAKE_LOG"])).read_text().splitlines()]
    argv = call["argv"]
    assert "StrictHostKeyChecking=yes" in argv and "StrictHostKeyChecking=no" not in argv
    assert "HostKeyAlgorithms=ssh-ed25519" in argv
    assert call["known_hosts"] == f"[10.0.0.10]:2222 {HOST_KEY}\n"


def test_stage_restore_accepts_what_push_sends():
    """The node's filter (swarm-node stage-restore) admits exactly the names push uses."""
    pushed = ("latest", "20261122T190000Z.tar.gz", "20261122T190000Z.tar.gz.sha256", "20261122T190000Z.tar.gz.meta")
    for name in pushed:
        assert STAGED_RE.match(f"backups/{name}"), name
    for name in ("../etc/passwd", "backups/../../x", "swarm/raft"):
        assert not STAGED_RE.match(name), name
