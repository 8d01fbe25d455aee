"""swarmcli.backups (`scripts/swarm backups`) and the daily cycle's verbs (`scripts/swarm
night` and `morning`, with a stand-in Pulumi CLI) against an in-process S3 (moto), in the
layout `swarm-node backup` writes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import tempfile
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from swarmcli import backups, main

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
    """The morning goes on for a first morning (3), and stops when backups exist but
    `latest` does not (1): bootstrap would refuse, and a new swarm must not replace them."""
    assert backups.main(["verify", "--bucket", BUCKET, "--prefix", PREFIX]) == 3
    put_backup(s3, "20261120T230000Z", b"monday", latest=False)
    put_backup(s3, "20261121T230000Z", b"tuesday", latest=False)
    capsys.readouterr()
    assert backups.main(["verify", "--bucket", BUCKET, "--prefix", PREFIX]) == 1
    err = capsys.readouterr().err
    assert "holds backups (the newest: backups/20261121T230000Z.tar.gz) but no latest" in err
    assert "pulumi config set swarm:restoreFrom backups/20261121T230000Z.tar.gz" in err


def test_list_and_verify_as_json(s3, capsys):
    older = put_backup(s3, "20261120T230000Z", b"monday")
    key = put_backup(s3, "20261121T230000Z", b"tuesday")
    where = ["--bucket", BUCKET, "--prefix", PREFIX, "--json"]
    assert main.main(["backups", "list", *where]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["bucket"] == BUCKET and listed["prefix"] == PREFIX
    assert [(b["key"], b["latest"], b["size"]) for b in listed["backups"]] == [(key, True, 7), (older, False, 6)]
    assert listed["backups"][0]["lastModified"].endswith("Z")
    assert main.main(["backups", "verify", *where]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "bucket": BUCKET, "prefix": PREFIX, "key": key, "sha256": hashlib.sha256(b"tuesday").hexdigest(), "ok": True
    }  # fmt: skip
    assert main.main(["backups", "verify", older, *where]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == older


def stand_in_pulumi(tmp_path: Path, monkeypatch, restore_from: str | None = None, exits: dict | None = None) -> Path:
    """A `pulumi` on PATH that records what it is asked (and the SSH_AUTH_SOCK it got),
    holds the stack's state (its bucket), has swarm:restoreFrom unset or `restore_from`, and
    exits as `exits` says for `up` and `destroy` (0 otherwise)."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    state = {"deployment": {"resources": [{"type": backups.BUCKET_TYPE, "outputs": {"bucket": BUCKET}}]}}
    (tmp_path / "export.json").write_text(json.dumps(state))
    calls, exits = tmp_path / "calls", {"up": 0, "destroy": 0, **(exits or {})}
    config = f"echo {restore_from}" if restore_from else "exit 1"
    values = {"swarm:restoreFrom": {"value": restore_from}} if restore_from else {}
    (tmp_path / "config.json").write_text(json.dumps(values))
    (tmp_path / "bin" / "pulumi").write_text(
        f'#!/bin/sh\necho "pulumi $* SSH_AUTH_SOCK=${{SSH_AUTH_SOCK-unset}}" >>{calls}\n'
        f'case "$1 $2" in\n  "config get") {config} ;;\n  "config --json") cat {tmp_path}/config.json ;;\n'
        f'  "stack export") cat {tmp_path}/export.json ;;\n'
        f'  "stack output") echo ssh://ec2-user@198.51.100.10 ;;\n  up*) exit {exits["up"]} ;;\n'
        f"  destroy*) exit {exits['destroy']} ;;\nesac\n"
    )
    (tmp_path / "bin" / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return calls


def asked(calls: Path) -> list[str]:
    return [line.rsplit(" SSH_AUTH_SOCK=", 1)[0] for line in calls.read_text().splitlines()]


@pytest.mark.parametrize(("bucket_holds", "goes_up"), [("a good backup", True), ("nothing", True), ("rot", False)])
def test_the_morning_stops_on_a_failed_verify_and_goes_on_for_a_first_morning(
    s3, tmp_path, monkeypatch, capsys, bucket_holds, goes_up
):
    """`scripts/swarm morning` with a stand-in Pulumi CLI: the backup it will restore is
    verified first (the bucket read from the stack's state), and nothing is started unless
    it verifies or nothing was backed up yet."""
    if bucket_holds != "nothing":
        key = put_backup(s3, "20261121T230000Z", b"tuesday")
        if bucket_holds == "rot":
            s3.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=b"bit rot")
    calls = stand_in_pulumi(tmp_path, monkeypatch)
    code = main.main(["morning", "--stack", "dev"])
    out, err = capsys.readouterr()
    done = asked(calls)
    assert "pulumi config --json --stack dev --non-interactive" in done  # swarm:restoreFrom, and what is kept
    assert "pulumi stack export --stack dev --non-interactive" in done  # verify found the bucket there
    assert ("pulumi up --yes --skip-preview --stack dev --non-interactive" in done) == goes_up
    assert (code == 0) == goes_up, err
    if goes_up:
        assert out.strip() == "ssh://ec2-user@198.51.100.10"
        assert ("nothing backed up yet: a new swarm starts" in err) == (bucket_holds == "nothing")
    else:
        assert code == 1 and "did not verify" in err and "nothing was started" in err
        assert "scripts/swarm backups list --stack dev" in err
        assert not [line for line in done if line.split()[1] in ("up", "destroy")]  # ran nothing
        assert "stack output" not in " ".join(done)


def test_the_morning_verifies_a_pinned_backup_and_skips_it_for_none(s3, tmp_path, monkeypatch, capsys):
    older = put_backup(s3, "20261120T230000Z", b"monday")
    put_backup(s3, "20261121T230000Z", b"tuesday")
    (tmp_path / "pinned").mkdir()
    stand_in_pulumi(tmp_path / "pinned", monkeypatch, restore_from=older)
    assert main.main(["morning", "dev", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["restoreFrom"] == older and summary["backup"] == older and summary["restore"] == "verified"
    assert summary["sha256"] == hashlib.sha256(b"monday").hexdigest()
    (tmp_path / "none").mkdir()
    calls = stand_in_pulumi(tmp_path / "none", monkeypatch, restore_from="none")
    assert main.main(["morning", "dev", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["restore"] == "none" and summary["backup"] is None
    # The state is read once, for what outlives the night; with none there is no backup to verify.
    assert asked(calls).count("pulumi stack export --stack dev --non-interactive") == 1


def test_the_morning_s_json_summary_says_what_it_restored_and_each_step(s3, tmp_path, monkeypatch, capsys):
    key = put_backup(s3, "20261121T230000Z", b"tuesday")
    stand_in_pulumi(tmp_path, monkeypatch)
    assert main.main(["morning", "--stack", "dev", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # stdout is only the summary; the progress is on stderr
    assert {k: summary[k] for k in ("verb", "stack", "ok", "restoreFrom", "restore", "backup", "dockerHost")} == {
        "verb": "morning", "stack": "dev", "ok": True, "restoreFrom": "latest", "restore": "verified",
        "backup": key, "dockerHost": "ssh://ec2-user@198.51.100.10",
    }  # fmt: skip
    assert [s["step"].split(" (")[0] for s in summary["steps"]] == [
        "checking the Pulumi CLI and the SSH agent", "checking that the config drops nothing kept through the night",
        "verifying the backup to restore", "pulumi up", "reading dockerHost",
    ]  # fmt: skip
    assert all(s["ok"] and isinstance(s["seconds"], float) for s in summary["steps"])
    assert "s] morning: pulumi up (fresh machines, the restore, the joins, reconcile): done in" in err


def test_a_failed_up_says_so_in_the_summary(s3, tmp_path, monkeypatch, capsys):
    put_backup(s3, "20261121T230000Z", b"tuesday")
    stand_in_pulumi(tmp_path, monkeypatch, exits={"up": 255})
    assert main.main(["morning", "--stack", "dev", "--json"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert not summary["ok"] and "pulumi up --yes --skip-preview --stack dev failed (exit 255)" in summary["error"]
    assert summary["steps"][-1] == {**summary["steps"][-1], "ok": False} and summary["restore"] == "verified"
    assert "failed (exit 255)" in err


def test_the_night_tears_down_then_lists_the_backups(s3, tmp_path, monkeypatch, capsys):
    put_backup(s3, "20261120T230000Z", b"monday")
    key = put_backup(s3, "20261121T230000Z", b"tuesday")
    calls = stand_in_pulumi(tmp_path, monkeypatch)
    assert main.main(["night", "--stack", "dev"]) == 0
    out, _ = capsys.readouterr()
    assert asked(calls)[-2:] == [
        "pulumi destroy --exclude-protected --yes --stack dev --non-interactive",
        "pulumi stack export --stack dev --non-interactive",
    ]
    assert out.splitlines()[0] == "teardown of dev done; the backups:"
    assert out.splitlines()[1].startswith(f"* {key}")
    assert main.main(["night", "dev", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {k: summary[k] for k in ("verb", "stack", "ok", "destroyed", "latest", "backupCount")} == {
        "verb": "night", "stack": "dev", "ok": True, "destroyed": True, "latest": key, "backupCount": 2,
    }  # fmt: skip
    assert summary["latestIsTonights"] is True  # (moto's clock is ours)
    assert set(summary["backups"][0]) == {"key", "size", "lastModified", "latest"}


def test_a_failed_teardown_stops_before_the_listing(s3, tmp_path, monkeypatch, capsys):
    calls = stand_in_pulumi(tmp_path, monkeypatch, exits={"destroy": 1})
    assert main.main(["night", "--stack", "dev", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert not summary["ok"] and "destroyed" not in summary and "pulumi destroy" in summary["error"]
    assert "pulumi stack export --stack dev --non-interactive" not in asked(calls)


def test_the_cycle_refuses_to_start_without_the_pulumi_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    for verb in ("night", "morning"):
        assert main.main([verb, "--stack", "dev"]) == 1
        assert "the Pulumi CLI is not on PATH: see https://www.pulumi.com/docs/install/" in capsys.readouterr().err


@pytest.mark.parametrize("agent", ["gone", "stale", "live"])
def test_a_dead_ssh_agent_socket_is_cleared_for_pulumi_and_a_live_one_kept(s3, tmp_path, monkeypatch, capsys, agent):
    """pulumi-command dials SSH_AUTH_SOCK first and fails every remote command when it is
    stale: the cycle's pulumi calls get none then; a live agent stays."""
    calls = stand_in_pulumi(tmp_path, monkeypatch)
    short = Path(tempfile.mkdtemp(prefix="agent", dir="/tmp"))  # a socket's path is at most 107 bytes
    path = str(short / "agent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if agent != "gone":
            listener.bind(path)
            listener.listen(1)
        if agent == "stale":
            listener.close()  # the file stays, nothing listens: an agent that died
        monkeypatch.setenv("SSH_AUTH_SOCK", path)
        for verb in ("night", "morning"):
            main.main([verb, "--stack", "dev"])
        err = capsys.readouterr().err
    finally:
        listener.close()
        for leftover in short.iterdir():
            leftover.unlink()
        short.rmdir()
    seen = {line.rsplit(" SSH_AUTH_SOCK=", 1)[1] for line in calls.read_text().splitlines()}
    assert seen == ({path} if agent == "live" else {"unset"})
    assert ("cleared for pulumi" in err) == (agent != "live")
    assert os.environ["SSH_AUTH_SOCK"] == path  # this process's own environment is left alone


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
        "== tasks", '{"Name":"web.1","CurrentState":"Rejected 1 second ago","Error":"No such image: nginx"}',
        "== container events",
    ])  # fmt: skip
    sections = backups.parse_drill_output(text)
    assert sections["engine"] == ["26.1.5"] and sections["configs"] == []
    assert sections["services"][0]["Name"] == "web" and sections["secrets"] == [{"Name": "db-password"}]
    assert sections["tasks"][0]["Error"] == "No such image: nginx" and sections["container events"] == []
    backups.refuse_started_tasks(sections)  # a task refused before its container: the seal held


CREATED = {"Type": "container", "Action": "create", "Actor": {"Attributes": {"name": "web.1.abc", "image": "nginx"}}}


def test_a_drill_whose_engine_logged_a_container_fails_and_says_what_ran(s3, monkeypatch):
    """The drill's promise is read from the engine's event log: one container created there
    (a task of the restored swarm, with its secrets) fails the drill, however it ended."""
    put_signed(s3, "20261121T230000Z", b"tuesday")

    class Machine:
        name = "a machine"

        def __init__(self, events: list[dict]):
            self.events = events

        def run(self, bundle: bytes) -> str:
            lines = ["== engine", '"26.1.5"', "== services", "== container events"]
            return "\n".join(lines + [json.dumps(e) for e in self.events])

    assert backups.run_drill(s3, BUCKET, PREFIX, None, SIGNING_KEY, Machine([])).sections["container events"] == []
    with pytest.raises(backups.BackupError, match=r"logged 1 container event\(s\) \(create web.1.abc\): a task"):
        backups.run_drill(s3, BUCKET, PREFIX, None, SIGNING_KEY, Machine([CREATED]))
    # An output without the log cannot show the promise kept.
    with pytest.raises(backups.BackupError, match="no container events section"):
        backups.refuse_started_tasks({"services": []})


def test_a_drill_over_ssh_sends_the_bundle_on_stdin_and_nothing_secret_in_argv(s3, tmp_path, monkeypatch):
    put_signed(s3, "20261121T230000Z", b"tuesday", unlock=UNLOCK)
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "ssh"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >{tmp_path}/argv\ncat >{tmp_path}/stdin\n'
        'printf \'== engine\\n"26.1.5"\\n== secrets\\n{"Name":"s"}\\n== container events\\n\'\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    target = backups.SshTarget("ssh://admin@drill.example:2222", identity="/keys/id")
    report = backups.run_drill(s3, BUCKET, PREFIX, None, SIGNING_KEY, target)
    assert report.engine_here == "26.1.5" and report.sections["secrets"] == [{"Name": "s"}]
    argv = (tmp_path / "argv").read_text()
    assert "-p\n2222\n" in argv and "-i\n/keys/id\n" in argv and "admin@drill.example" in argv
    assert UNLOCK not in argv and "sudo bash -c" in argv
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
