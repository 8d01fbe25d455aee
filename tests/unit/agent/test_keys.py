"""The backups' keys on a manager: the signing key's install and reading, the unlock key,
the unlock after a backup's restart, and the sealing of the unlock key."""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import pytest
from swarm_agent import cli, dockerd, keys, keytool, paths
from swarm_agent.run import AgentError

SIGNING = "ab" * 32
UNLOCK = keytool.format_unlock_key(bytes(range(32)))


def install(monkeypatch, stdin: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return cli.main(["install-backup-keys"])


def test_install_writes_the_first_line_root_only_and_ignores_the_keytool_line(fakes, monkeypatch, capsys):
    assert install(monkeypatch, SIGNING + "\nH4sIAAAAAAAAA-old-keytool\n") == 0
    assert Path(paths.SIGNING_KEY).read_text() == SIGNING + "\n"
    assert stat.S_IMODE(os.stat(paths.SIGNING_KEY).st_mode) == 0o600
    assert not os.path.exists(paths.SIGNING_KEY + ".new")
    assert capsys.readouterr().out == "install-backup-keys: installed\n"


def test_install_replaces_a_readable_key_and_a_stale_new_file(fakes, monkeypatch):
    Path(paths.SIGNING_KEY).write_text("cd" * 32 + "\n")
    os.chmod(paths.SIGNING_KEY, 0o644)
    Path(paths.SIGNING_KEY + ".new").write_text("junk")
    os.chmod(paths.SIGNING_KEY + ".new", 0o644)
    assert install(monkeypatch, SIGNING + "\n") == 0
    assert Path(paths.SIGNING_KEY).read_text() == SIGNING + "\n"
    assert stat.S_IMODE(os.stat(paths.SIGNING_KEY).st_mode) == 0o600


@pytest.mark.parametrize("first", ["", "ab" * 31, "AB" * 32, "ab" * 32 + " ", "xy" * 32])
def test_install_refuses_a_first_line_that_is_not_64_hex_and_writes_nothing(fakes, monkeypatch, capsys, first):
    assert install(monkeypatch, first + "\n" + SIGNING + "\n") == 1
    assert "install-backup-keys: stdin's first line is not a 64-digit hex key" in capsys.readouterr().err
    assert not os.path.exists(paths.SIGNING_KEY)


def test_the_signing_key_reads_as_bytes(fakes):
    Path(paths.SIGNING_KEY).write_text(SIGNING + "\n")
    assert keys.read_signing_key() == bytes.fromhex(SIGNING)


@pytest.mark.parametrize("content", [None, "", "not hex\n", "ab" * 16 + "\n"])
def test_a_missing_or_bad_signing_key_names_the_file_and_pulumi_up(fakes, content):
    if content is not None:
        Path(paths.SIGNING_KEY).write_text(content)
    with pytest.raises(AgentError) as raised:
        keys.read_signing_key()
    assert paths.SIGNING_KEY in str(raised.value) and "run 'pulumi up'" in str(raised.value)


def test_no_unlock_key_without_autolock(fakes):
    fakes.swarm(autolock=False)
    assert keys.read_unlock_key() == ""
    assert ["swarm", "unlock-key", "-q"] not in fakes.argvs("docker")


def test_the_unlock_key_is_read_from_docker_with_autolock(fakes):
    fakes.swarm(autolock=True)
    fakes.on("docker", "swarm", "unlock-key", "-q", stdout=UNLOCK + "\n")
    assert keys.read_unlock_key() == UNLOCK


def test_an_unlock_key_docker_did_not_print_is_refused(fakes):
    fakes.swarm(autolock=True)
    fakes.on("docker", "swarm", "unlock-key", "-q", stdout="Error: nothing here\n")
    with pytest.raises(AgentError, match="'docker swarm unlock-key -q' did not print an unlock key"):
        keys.read_unlock_key()


@pytest.fixture
def unlocks(monkeypatch):
    """dockerd.api_post, recorded; answers 200 unless told otherwise."""
    seen = {"calls": [], "status": 200}

    def post(path, body, timeout):
        seen["calls"].append((path, body, timeout))
        return seen["status"], ""

    monkeypatch.setattr(dockerd, "api_post", post)
    return seen


def test_a_locked_manager_is_unlocked_through_the_api(fakes, unlocks, capsys):
    fakes.swarm(state="locked", times=2)
    fakes.swarm(state="active")
    keys.unlock_after_restart(UNLOCK)
    assert unlocks["calls"] == [("/swarm/unlock", {"UnlockKey": UNLOCK}, 60)]
    assert "backup: unlocked manager 0 again (autolock)" in capsys.readouterr().err
    assert all(UNLOCK not in " ".join(argv) for argv in fakes.argvs("docker"))


def test_no_unlock_without_a_key_or_when_already_active(fakes, unlocks):
    keys.unlock_after_restart("")
    assert fakes.calls() == []
    fakes.swarm(state="active")
    keys.unlock_after_restart(UNLOCK)
    assert unlocks["calls"] == []


def test_a_failed_unlock_says_what_to_do(fakes, unlocks):
    fakes.swarm(state="locked")
    unlocks["status"] = 0
    with pytest.raises(AgentError, match=r"after the backup failed \(HTTP 000\); run 'docker swarm unlock' on it"):
        keys.unlock_after_restart(UNLOCK)


def test_a_swarm_neither_locked_nor_active_fails_after_60s(fakes, unlocks):
    fakes.swarm(state="pending")
    with pytest.raises(AgentError, match="the swarm is 'pending', neither locked nor active, 60s after docker started"):
        keys.unlock_after_restart(UNLOCK)
    assert 60 <= fakes.clock.slept <= 62
    assert unlocks["calls"] == []


def test_a_sealed_unlock_key_opens_only_with_its_name_and_key():
    sealed = keys.seal_unlock_key("backups/a.tar.gz", UNLOCK, bytes.fromhex(SIGNING))
    assert UNLOCK not in sealed
    assert keys.unseal_unlock_key("backups/a.tar.gz", sealed, bytes.fromhex(SIGNING)) == UNLOCK
    with pytest.raises(keytool.KeytoolError):
        keys.unseal_unlock_key("backups/b.tar.gz", sealed, bytes.fromhex(SIGNING))
    with pytest.raises(AgentError, match="signing key is empty"):
        keys.seal_unlock_key("backups/a.tar.gz", UNLOCK, b"")


def test_a_node_key_keytool_cannot_parse_is_a_keytool_error(tmp_path):
    (tmp_path / "certificates").mkdir()
    headers = "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,zz\n"  # an IV that is not hex
    (tmp_path / "certificates" / "swarm-node.key").write_text(
        f"-----BEGIN EC PRIVATE KEY-----\n{headers}\nAAAA\n-----END EC PRIVATE KEY-----\n"
    )
    with pytest.raises(keytool.KeytoolError, match="cannot be read"):
        keys.open_state(str(tmp_path), UNLOCK)
