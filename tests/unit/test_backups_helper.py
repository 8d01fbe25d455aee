"""scripts/backups.py against an in-process S3 (moto), in the layout `swarm-node backup` writes."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile

import boto3
import pytest
from harness import ROOT
from moto import mock_aws

spec = importlib.util.spec_from_file_location("backups", ROOT / "scripts" / "backups.py")
backups = importlib.util.module_from_spec(spec)
sys.modules["backups"] = backups
spec.loader.exec_module(backups)

BUCKET, PREFIX = "swarm-dev-state", "swarm/dev/"


def put_backup(s3, name: str, data: bytes, latest: bool = True) -> str:
    key = f"backups/{name}.tar.gz"
    sha = hashlib.sha256(data).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=data)
    s3.put_object(Bucket=BUCKET, Key=PREFIX + key + ".sha256", Body=f"{sha}  {name}.tar.gz\n".encode())
    if latest:
        s3.put_object(Bucket=BUCKET, Key=PREFIX + "backups/latest", Body=f"{key} {sha}\n".encode())
    return key


@pytest.fixture
def s3(monkeypatch):
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
    ):
        monkeypatch.setenv(var, value)
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-1")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield client


def test_lists_newest_first_and_marks_latest(s3):
    put_backup(s3, "20261120T230000Z", b"monday")
    put_backup(s3, "20261121T230000Z", b"tuesday")
    listed = backups.list_backups(s3, BUCKET, PREFIX)
    assert [(b.key, b.latest) for b in listed] == [
        ("backups/20261121T230000Z.tar.gz", True),
        ("backups/20261120T230000Z.tar.gz", False),
    ]


def test_verifies_latest_and_an_older_one(s3):
    older = put_backup(s3, "20261120T230000Z", b"monday")
    put_backup(s3, "20261121T230000Z", b"tuesday")
    assert backups.verify(s3, BUCKET, PREFIX) == hashlib.sha256(b"tuesday").hexdigest()
    assert backups.verify(s3, BUCKET, PREFIX, older) == hashlib.sha256(b"monday").hexdigest()


def test_corrupted_backup_is_named(s3, capsys):
    key = put_backup(s3, "20261121T230000Z", b"tuesday")
    s3.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=b"bit rot")
    with pytest.raises(
        backups.BackupError, match=r"s3://swarm-dev-state/swarm/dev/backups/20261121T230000Z.tar.gz has sha256"
    ):
        backups.verify(s3, BUCKET, PREFIX)
    assert backups.main(["verify", "--bucket", BUCKET, "--prefix", PREFIX]) == 1
    assert "20261121T230000Z.tar.gz" in capsys.readouterr().err


def test_nothing_backed_up_yet(s3, capsys):
    with pytest.raises(backups.BackupError, match="nothing backed up yet"):
        backups.verify(s3, BUCKET, PREFIX)
    assert backups.main(["list", "--bucket", BUCKET, "--prefix", "swarm/dev"]) == 0
    assert "no backups under s3://swarm-dev-state/swarm/dev/backups/" in capsys.readouterr().out


def test_verify_exit_codes_tell_a_first_morning_from_a_missing_latest(s3, capsys):
    """morning-up goes on for a first morning (3), and stops when backups exist but
    `latest` does not (1): bootstrap would refuse, and a new swarm must not replace them."""
    assert backups.main(["verify", "--bucket", BUCKET, "--prefix", PREFIX]) == 3
    put_backup(s3, "20261120T230000Z", b"monday", latest=False)
    put_backup(s3, "20261121T230000Z", b"tuesday", latest=False)
    capsys.readouterr()
    assert backups.main(["verify", "--bucket", BUCKET, "--prefix", PREFIX]) == 1
    err = capsys.readouterr().err
    assert "holds backups (the newest: backups/20261121T230000Z.tar.gz) but no latest" in err
    assert "pulumi config set swarm:restoreFrom backups/20261121T230000Z.tar.gz" in err


@pytest.mark.parametrize(("verify_exit", "goes_up"), [(0, True), (3, True), (1, False)])
def test_morning_up_stops_on_a_failed_verify_and_goes_on_for_a_first_morning(tmp_path, verify_exit, goes_up):
    """scripts/morning-up with stand-ins for setup, the venv's python (backups.py verify
    answering `verify_exit`) and the Pulumi CLI, which records what it is asked."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    shutil.copy(ROOT / "scripts" / "morning-up", tmp_path / "scripts" / "morning-up")
    calls = tmp_path / "calls"
    stubs = {
        tmp_path / "scripts" / "setup": "exit 0",
        tmp_path / "venv" / "bin" / "python": f'echo "python $*" >>{calls}; exit {verify_exit}',
        tmp_path / "bin" / "pulumi": f'echo "pulumi $*" >>{calls}; [ "$1" = config ] && exit 1; exit 0',
    }
    for path, body in stubs.items():
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    run = subprocess.run(
        [str(tmp_path / "scripts" / "morning-up"), "dev"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"},
        timeout=60,
        check=False,
    )
    asked = calls.read_text()
    assert "python scripts/backups.py verify --stack dev" in asked
    assert ("pulumi up --stack dev" in asked) == goes_up
    assert (run.returncode == 0) == goes_up, run.stderr
    if not goes_up:
        assert "did not verify" in run.stderr and "nothing was started" in run.stderr


# --- the restore drill: what happens on this machine (the bed runs the rest) -------------

SIGNING_KEY = bytes.fromhex("ab" * 32)
UNLOCK = "SWMKEY-1-" + "Q" * 43


def put_signed(s3, name: str, data: bytes, unlock: str | None = None, key: bytes = SIGNING_KEY) -> str:
    backup = put_backup(s3, name, data)
    keytool = backups._keytool()
    sha = hashlib.sha256(data).hexdigest()
    meta = f"engine=26.1.5\naddr=10.42.0.10\nsignature={keytool.sign(backup, sha, key)}\n"
    if unlock:
        meta += f"unlock={keytool.wrap_unlock(backup, unlock, key)}\n"
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{backup}.meta", Body=meta.encode())
    return backup


def bundle_files(bundle: bytes) -> dict[str, tuple[bytes, int]]:
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        return {m.name: (tar.extractfile(m).read(), m.mode) for m in tar.getmembers()}


def test_a_drill_checks_the_signature_and_ships_only_what_the_restore_needs(s3):
    key = put_signed(s3, "20261121T230000Z", b"tuesday")
    bundle, report = backups.prepare_drill(s3, BUCKET, PREFIX, None, SIGNING_KEY)
    assert report.key == key and report.checks == ["sha256 matches", "signature ok"] and not report.autolocked
    files = bundle_files(bundle)
    assert set(files) == {"backup.tar.gz", "restore-drill.sh"}
    assert files["backup.tar.gz"] == (b"tuesday", 0o600)
    assert files["restore-drill.sh"][1] == 0o755


def test_a_drill_of_an_autolocked_backup_unseals_its_key_for_the_restore_only(s3):
    put_signed(s3, "20261121T230000Z", b"tuesday", unlock=UNLOCK)
    bundle, report = backups.prepare_drill(s3, BUCKET, PREFIX, None, SIGNING_KEY)
    assert report.autolocked and "unlock key unsealed" in report.checks
    files = bundle_files(bundle)
    assert files["unlock"] == (f"{UNLOCK}\n".encode(), 0o600)
    assert files["swarm-keytool"][0] == backups.KEYTOOL.read_bytes()
    assert UNLOCK not in str(report.as_json())
    with pytest.raises(backups.BackupError, match="autolocked: its unlock key is sealed"):
        backups.prepare_drill(s3, BUCKET, PREFIX, None, None)


def test_a_drill_refuses_a_forged_backup(s3):
    put_signed(s3, "20261121T230000Z", b"tuesday", key=bytes.fromhex("cd" * 32))
    with pytest.raises(backups.BackupError, match="does not match: the stack's managers did not write it"):
        backups.prepare_drill(s3, BUCKET, PREFIX, None, SIGNING_KEY)
    # Without the key the drill still runs, and says what it did not check.
    _, report = backups.prepare_drill(s3, BUCKET, PREFIX, None, None)
    assert report.checks[1].startswith("signature not checked")


def test_the_drill_report_reads_the_machine_s_sections():
    text = "\n".join([
        "== engine", '"26.1.5"',
        "== services", '{"Name":"web","Mode":"replicated","Replicas":"0/3","Image":"nginx"}',
        "== secrets", '{"Name":"db-password"}',
        "== configs",
        "== networks", '{"Name":"ingress","Driver":"overlay"}',
        "== nodes", '{"Hostname":"swarm-dev-manager-1","Status":"Down"}',
    ])  # fmt: skip
    sections = backups.parse_drill_output(text)
    assert sections["engine"] == ["26.1.5"] and sections["configs"] == []
    assert sections["services"][0]["Name"] == "web" and sections["secrets"] == [{"Name": "db-password"}]


def test_a_drill_over_ssh_sends_the_bundle_on_stdin_and_nothing_secret_in_argv(s3, tmp_path, monkeypatch):
    put_signed(s3, "20261121T230000Z", b"tuesday", unlock=UNLOCK)
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "ssh"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >{tmp_path}/argv\ncat >{tmp_path}/stdin\n'
        'printf \'== engine\\n"26.1.5"\\n== secrets\\n{"Name":"s"}\\n\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    target = backups.SshTarget("ssh://admin@drill.example:2222", identity="/keys/id", address="10.0.0.5")
    report = backups.run_drill(s3, BUCKET, PREFIX, None, SIGNING_KEY, target)
    assert report.engine_here == "26.1.5" and report.sections["secrets"] == [{"Name": "s"}]
    argv = (tmp_path / "argv").read_text()
    assert "-p\n2222\n" in argv and "-i\n/keys/id\n" in argv and "admin@drill.example" in argv
    assert UNLOCK not in argv and "sudo bash -c" in argv and "10.0.0.5" in argv
    assert bundle_files((tmp_path / "stdin").read_bytes())["unlock"][0] == f"{UNLOCK}\n".encode()
    with pytest.raises(backups.BackupError, match="--on wants bed or ssh://user@host"):
        backups.SshTarget("drill.example")


def test_the_signing_key_is_read_from_the_stack_and_not_the_host_key_seed(monkeypatch):
    exported = [
        {"type": "random:index/randomBytes:RandomBytes", "urn": "urn:...::swarm-dev-nodes-host-key-seed",
         "outputs": {"hex": "cd" * 32}},
        {"type": "random:index/randomBytes:RandomBytes", "urn": "urn:...::swarm-dev-swarm-backup-signing-key",
         "outputs": {"hex": "ab" * 32}},
    ]  # fmt: skip
    monkeypatch.setattr(backups, "stack_resources", lambda stack, show_secrets=False: exported)
    assert backups.signing_key_of_stack("dev") == SIGNING_KEY
    monkeypatch.setattr(backups, "stack_resources", lambda stack, show_secrets=False: exported[:1])
    with pytest.raises(backups.BackupError, match="no backup signing key"):
        backups.signing_key_of_stack("dev")
