"""backup: dockerd stopped around the tar and started again whatever fails; nothing is
uploaded unsigned or unchecked; backups/latest moves only after the upload reads back
whole; pruning is best effort; --stdout sends the tar.gz alone."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import json
import os
import shutil
import types
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from node_fakes import FAKE_TOOL, make_tar, write_env
from swarm_agent import backup, cli, contract, dockerd, keys, keytool, paths, store, tarballs
from swarm_agent.run import AgentError

SIGNING = "ab" * 32
KEK = bytes(range(32))
UNLOCK = keytool.format_unlock_key(KEK)
NAME = "20261201T030000Z.tar.gz"
KEY = f"backups/{NAME}"
BASE = "s3://state-bucket/swarm/dev/"
URL = BASE + KEY
AWS = ("--region", "eu-west-1")


def swarm_tar(node_key: bytes = b"-----BEGIN PRIVATE KEY-----\n", raft: bool = True) -> bytes:
    """A tar.gz of swarm/ as `tar -C /var/lib/docker -czf X swarm` writes it."""
    files = {"swarm/certificates/swarm-node.key": node_key, "swarm/state.json": b"[]"}
    if raft:
        files["swarm/raft/wal-v3-encrypted/0000.wal"] = b"raft"
    return make_tar(files)


def sealed_node_key() -> bytes:
    """A node key encrypted as an autolocked swarmkit keeps it (PKCS#8, the unlock key's KEK)."""
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(KEK)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Bed:
    """Manager 0 under systemd with a signing key, a fixed clock and a known work dir."""

    def __init__(self, fakes, monkeypatch):
        self.fakes = fakes
        self.work = os.path.join(paths.WORK_DIR, "swarm-backup.test")
        self.uploaded: dict[str, bytes] = {}
        Path(paths.SIGNING_KEY).write_text(SIGNING + "\n")
        Path(paths.SYSTEMD_RUN).mkdir(parents=True)
        now = datetime.datetime(2026, 12, 1, 3, 0, 0, tzinfo=datetime.timezone.utc)  # noqa: UP017
        monkeypatch.setattr(backup, "_utc", lambda: now)
        monkeypatch.setattr(backup, "tempfile", types.SimpleNamespace(mkdtemp=self._mkdtemp))
        real_put = store.put_file

        def put_file(env, path, key):
            self.uploaded[key] = Path(path).read_bytes()
            return real_put(env, path, key)

        monkeypatch.setattr(store, "put_file", put_file)
        self.unlocks: list[dict] = []
        monkeypatch.setattr(dockerd, "api_post", lambda path, body, timeout: self.unlocks.append(body) or (200, ""))

    def _mkdtemp(self, dir, prefix):
        assert (dir, prefix) == (paths.WORK_DIR, "swarm-backup.")
        os.mkdir(self.work, 0o700)
        return self.work

    def fake_tar(self, data: bytes) -> None:
        """tar writes `data` as the tarball (argv: -C DIR -czf FILE swarm)."""
        shutil.copy(FAKE_TOOL, self.fakes.bin / "tar")
        (self.fakes.bin / "tar").chmod(0o755)
        self.fakes.on("tar", writes=[(3, data)])

    def ready(self, read_back: bytes = b"", listing: str = "") -> None:
        """The defaults, after any test's own (more specific) rules."""
        fakes = self.fakes
        fakes.on("systemctl", "show", "-P", "LoadState", stdout="loaded\n")
        fakes.on("systemctl", "is-active", rc=3)
        fakes.on("systemctl")
        fakes.docker_up()
        fakes.swarm()
        fakes.on("docker", "node", "ls", "-q", stdout="node0\n")
        status = {"Leader": True, "Reachability": "reachable", "Addr": "10.42.0.10:2377"}
        fakes.on("docker", "node", "inspect", "self", stdout=json.dumps(status) + "\n")
        fakes.on("aws", *AWS, "s3", "cp", URL, writes=[(5, read_back)])
        fakes.on("aws", *AWS, "s3", "cp", BASE + "backups/restored", rc=1, stderr="An error occurred (404)\n")
        fakes.on("aws", *AWS, "s3api", "list-objects-v2", stdout=listing or f"swarm/dev/{KEY}\n")
        fakes.on("aws")

    def systemctl(self, action: str) -> list[list[str]]:
        return [a for a in self.fakes.argvs("systemctl") if a[0] == action]

    def aws_targets(self) -> list[str]:
        """Each aws call's S3 object (s3 cp: the destination; s3 rm: the object)."""
        return [a[a.index("cp") + 2] if "cp" in a else a[-2] for a in self.fakes.argvs("aws")]


@pytest.fixture
def bed(fakes, monkeypatch) -> Bed:
    return Bed(fakes, monkeypatch)


def run_backup(*keep: str, to_stdout: bool = False) -> None:
    backup.backup(argparse.Namespace(stdout=to_stdout, keep=list(keep)))


def test_a_backup_is_signed_uploaded_in_order_and_only_then_pointed_to(bed, fakes, capsys):
    tar = swarm_tar()
    bed.fake_tar(tar)
    bed.ready(read_back=tar)
    run_backup()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"backup: wrote {KEY} sha256 {sha(tar)}"
    record = contract.read("swarm-backup", out[1])
    signature = keytool.sign(KEY, sha(tar), bytes.fromhex(SIGNING))
    # Every other field signed too (what a restore reads from the .meta), computed here by hand.
    signed_text = f"meta {KEY} {sha(tar)}\naddr=10.42.0.10\ncreated=2026-12-01T03:00:00Z\nengine=26.1.5\n"
    signed_text += "node=swarm-dev-manager-0\n"
    fields = hmac.new(bytes.fromhex(SIGNING), signed_text.encode(), hashlib.sha256).hexdigest()
    assert record == {
        "kind": "swarm-backup",
        "key": KEY,
        "sha256": sha(tar),
        "meta": {"engine": "26.1.5", "addr": "10.42.0.10", "node": "swarm-dev-manager-0",
                 "created": "2026-12-01T03:00:00Z", "signature": signature, "fields": fields},
    }  # fmt: skip
    # The publish order: tarball, .sha256, .meta, the read back, and latest last.
    check = bed.work + "/check.tar.gz"
    assert bed.aws_targets()[:5] == [URL, URL + ".sha256", URL + ".meta", check, BASE + "backups/latest"]
    stdins = [c["stdin"] for c in fakes.calls("aws")]
    assert stdins[1] == f"{sha(tar)}  {NAME}\n" and stdins[4] == f"{KEY} {sha(tar)}\n"
    assert bed.uploaded[KEY] == tar
    assert bed.uploaded[KEY + ".meta"].decode() == (
        f"engine=26.1.5\naddr=10.42.0.10\nnode=swarm-dev-manager-0\ncreated=2026-12-01T03:00:00Z\nsignature={signature}\n"
        f"fields={fields}\n"
    )
    assert not os.path.exists(bed.work)


def test_dockerd_is_stopped_for_the_tar_alone_and_started_before_the_upload(bed, fakes):
    tar = swarm_tar()
    bed.fake_tar(tar)
    bed.ready(read_back=tar)
    run_backup()
    calls = [(c["tool"], c["args"]) for c in fakes.calls()]
    stop = calls.index(("systemctl", ["stop", "docker.socket", "docker.service"]))
    tar_call = next(i for i, (tool, _) in enumerate(calls) if tool == "tar")
    start = calls.index(("systemctl", ["start", "docker.socket", "docker.service"]))
    latest = next(i for i, (tool, args) in enumerate(calls) if tool == "aws" and BASE + "backups/latest" in args)
    assert stop < tar_call < start < latest
    assert calls[tar_call][1] == ["-C", str(Path(paths.SWARM_DIR).parent), "-czf", f"{bed.work}/{NAME}", "swarm"]
    assert len(bed.systemctl("start")) == 1


def test_a_missing_signing_key_fails_before_docker_stops_and_uploads_nothing(bed, fakes, capsys):
    os.remove(paths.SIGNING_KEY)
    bed.ready()
    assert cli.main(["backup"]) == 1
    missing = f"swarm-node: the backup signing key is missing ({paths.SIGNING_KEY}): run 'pulumi up'"
    assert missing in capsys.readouterr().err
    assert fakes.argvs("aws") == []
    assert bed.systemctl("stop") == []


def test_a_signature_keytool_cannot_make_uploads_nothing_and_restarts_docker(bed, fakes, monkeypatch):
    def broken(*args):
        raise keytool.KeytoolError("no HMAC today")

    monkeypatch.setattr(keytool, "sign", broken)
    bed.fake_tar(swarm_tar())
    bed.ready()
    with pytest.raises(AgentError, match=f"backup: cannot sign {KEY} .no HMAC today.; nothing was uploaded"):
        run_backup()
    assert fakes.argvs("aws") == []
    assert bed.systemctl("start")  # dockerd runs again
    assert not os.path.exists(bed.work)


def test_a_meta_upload_that_fails_half_way_leaves_latest_untouched(bed, fakes):
    tar = swarm_tar()
    bed.fake_tar(tar)
    fakes.on("aws", *AWS, "s3", "cp", f"{bed.work}/{NAME}.meta", rc=1, stderr="upload failed: connection reset\n")
    bed.ready(read_back=tar)
    with pytest.raises(AgentError) as raised:
        run_backup()
    assert f"backup: uploading {URL} failed" in str(raised.value)
    assert "connection reset" in str(raised.value) and "the latest pointer was not moved" in str(raised.value)
    assert bed.aws_targets() == [URL, URL + ".sha256", URL + ".meta"]
    assert bed.systemctl("start")
    assert not os.path.exists(bed.work)


def test_a_read_back_that_differs_leaves_latest_untouched(bed, fakes):
    tar = swarm_tar()
    bed.fake_tar(tar)
    bed.ready(read_back=b"truncated")
    with pytest.raises(AgentError, match=f"read back with sha256 {sha(b'truncated')}, not {sha(tar)}; the latest"):
        run_backup()
    assert BASE + "backups/latest" not in bed.aws_targets()


def test_a_docker_that_will_not_stop_fails_with_nothing_tarred_or_uploaded(bed, fakes):
    bed.fake_tar(swarm_tar())
    fakes.on("systemctl", "stop", rc=1, stderr="Job for docker.service canceled.\n")
    bed.ready()
    with pytest.raises(AgentError, match=r"systemctl stop docker\.socket docker\.service: exited 1: Job for docker"):
        run_backup()
    assert fakes.argvs("tar") == [] and fakes.argvs("aws") == []
    assert bed.systemctl("start")  # started again, as bash's EXIT trap did


def test_a_dockerd_that_outlives_its_units_fails_the_backup_within_60s(bed, fakes, monkeypatch):
    (Path(paths.PROC) / "4242").mkdir()
    (Path(paths.PROC) / "4242" / "comm").write_text("dockerd\n")
    monkeypatch.setattr(dockerd, "active_units", lambda: [])
    bed.fake_tar(swarm_tar())
    bed.ready()
    with pytest.raises(AgentError, match=r"dockerd did not stop within 60s \(still there: a dockerd process\)"):
        run_backup()
    assert 60 <= fakes.clock.slept <= 62
    assert fakes.argvs("tar") == [] and fakes.argvs("aws") == []


def test_a_hollow_tar_is_not_uploaded(bed, fakes):
    bed.fake_tar(swarm_tar(raft=False))
    bed.ready()
    with pytest.raises(AgentError, match=r"is without swarm/raft/ or swarm/certificates/ \(a hollow backup\); nothing"):
        run_backup()
    assert fakes.argvs("aws") == []
    assert bed.systemctl("start")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (("docker", "info", "--format", "{{json .Swarm}}"), "not an active swarm manager, so there is nothing safe"),
        (("docker", "node", "ls", "-q"), "this manager sees no leader"),
        (("docker", "node", "inspect", "self"), "see this manager as 'unreachable', not reachable"),
    ],
)
def test_a_manager_without_todays_state_is_not_backed_up(bed, fakes, rule, message):
    if rule[1] == "info":
        fakes.swarm(state="active", manager=False)
    elif rule[1] == "node" and rule[2] == "ls":
        fakes.on(*rule, rc=1, stderr="Error: rpc error: code = Unknown desc = The swarm does not have a leader.\n")
    else:
        fakes.on(*rule, stdout='{"Reachability":"unreachable"}\n')
    bed.ready()
    with pytest.raises(AgentError, match=message):
        run_backup()
    assert bed.systemctl("stop") == [] and fakes.argvs("aws") == []


def test_an_autolocked_backup_carries_its_sealed_key_and_dockerd_is_unlocked(bed, fakes, capsys):
    tar = swarm_tar(node_key=sealed_node_key())
    bed.fake_tar(tar)
    fakes.swarm(autolock=True, times=3)  # the preflight, the snapshot interval and the unlock key
    fakes.swarm(state="locked", autolock=True, times=1)  # dockerd back after the tar
    fakes.on("docker", "swarm", "unlock-key", "-q", stdout=UNLOCK + "\n")
    bed.ready(read_back=tar)
    run_backup()
    captured = capsys.readouterr()
    meta = contract.read("swarm-backup", captured.out)["meta"]
    assert keys.unseal_unlock_key(KEY, meta["unlock"], bytes.fromhex(SIGNING)) == UNLOCK
    assert f"\nunlock={meta['unlock']}\nfields=" in bed.uploaded[KEY + ".meta"].decode()
    assert bed.unlocks == [{"UnlockKey": UNLOCK}]
    assert "backup: unlocked manager 0 again (autolock)" in captured.err
    assert all(UNLOCK not in " ".join(c["args"]) for c in fakes.calls())


def test_an_unlock_key_that_does_not_open_the_tar_uploads_nothing(bed, fakes):
    bed.fake_tar(swarm_tar(node_key=sealed_node_key()))
    fakes.swarm(autolock=True)
    fakes.on("docker", "swarm", "unlock-key", "-q", stdout=keytool.format_unlock_key(bytes(32)) + "\n")
    bed.ready()
    with pytest.raises(AgentError, match="current unlock key does not open manager 0's node key"):
        run_backup()
    assert fakes.argvs("aws") == []
    assert bed.systemctl("start")


def test_stdout_mode_sends_the_tar_alone_and_reports_on_stderr(bed, fakes, capsysbinary, tmp_path):
    write_env(SWARM_BACKUP_TARGET="local")
    for name, data in {"raft/wal/0.wal": b"raft", "certificates/swarm-node.key": b"key"}.items():
        (Path(paths.SWARM_DIR) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(paths.SWARM_DIR) / name).write_bytes(data)
    bed.ready()  # the real tar
    run_backup(to_stdout=True)
    captured = capsysbinary.readouterr()
    received = tmp_path / "received.tar.gz"
    received.write_bytes(captured.out)
    assert tarballs.content_problem(str(received)) == ""
    err = captured.err.decode()
    record = contract.read("swarm-backup", err)
    assert record["key"] == KEY and record["sha256"] == sha(captured.out)
    assert record["meta"]["signature"] == keytool.sign(KEY, sha(captured.out), bytes.fromhex(SIGNING))
    assert record["meta"]["engine"] == "26.1.5" and record["meta"]["addr"] == "10.42.0.10"
    assert fakes.argvs("aws") == []
    assert not os.path.exists(bed.work)


def test_a_local_target_needs_stdout_and_the_keep_count_a_number(bed, fakes):
    write_env(SWARM_BACKUP_TARGET="local")
    with pytest.raises(AgentError, match="backups go to 'local', not S3; use 'backup --stdout > file'"):
        run_backup()
    write_env(SWARM_BACKUP_KEEP="two")
    with pytest.raises(AgentError, match="SWARM_BACKUP_KEEP must be a number"):
        run_backup()
    assert fakes.calls() == []


def test_pruning_spares_the_newest_latest_pinned_and_restored_and_goes_on_after_a_failure(bed, fakes, capsys):
    write_env(SWARM_BACKUP_KEEP="2")
    tar = swarm_tar()
    bed.fake_tar(tar)
    newest_first = [KEY, *(f"backups/202611{day}T030000Z.tar.gz" for day in (30, 29, 28, 27, 26))]
    pinned, restored, stuck, gone = newest_first[2:]  # the newest two (KEY, 1130) are kept without a word
    fakes.on("aws", *AWS, "s3", "cp", BASE + "backups/restored", writes=[(5, (restored + "\n").encode())])
    fakes.on("aws", *AWS, "s3", "rm", BASE + stuck, rc=1, stderr="AccessDenied\n")
    fakes.on("aws", *AWS, "s3", "rm", BASE + gone + ".sha256", rc=1, stderr="throttled\n")
    bed.ready(read_back=tar, listing="\t".join("swarm/dev/" + k for k in newest_first) + "\n")
    run_backup(pinned)
    err = capsys.readouterr().err
    assert f"backup: kept {pinned} (latest, pinned or last restored)" in err
    assert f"backup: kept {restored} (latest, pinned or last restored)" in err
    assert f"backup: could not prune {stuck}; the next backup tries again" in err
    assert f"backup: pruned {gone}" in err
    removed = [a[-2] for a in fakes.argvs("aws") if a[2:4] == ["s3", "rm"]]
    assert removed == [BASE + stuck, BASE + gone, BASE + gone + ".sha256", BASE + gone + ".meta"]


def test_a_listing_that_fails_only_stops_the_pruning(bed, fakes, capsys):
    tar = swarm_tar()
    bed.fake_tar(tar)
    fakes.on("aws", *AWS, "s3api", "list-objects-v2", rc=255, stderr="Could not connect\n")
    bed.ready(read_back=tar)
    run_backup()
    captured = capsys.readouterr()
    assert "backup: pruning stopped early; the next backup tries again" in captured.err
    assert contract.read("swarm-backup", captured.out)["key"] == KEY
    assert BASE + "backups/latest" in bed.aws_targets()


@pytest.mark.parametrize("marked", [True, False])
def test_a_lone_manager_s_handover_backs_up_by_day_and_adds_nothing_at_night(bed, fakes, monkeypatch, capsys, marked):
    from swarm_agent import nodes

    monkeypatch.setattr(nodes, "teardown_marked", lambda: marked)
    tar = swarm_tar()
    bed.fake_tar(tar)
    bed.ready(read_back=tar)
    backup.backup(argparse.Namespace(stdout=False, keep=[], handover=True))
    out = capsys.readouterr().out
    if marked:  # the night: the teardown's backup came first
        assert out == "backup: the teardown's own backup is taken; nothing to hand over\n"
        assert bed.systemctl("stop") == [] and bed.aws_targets() == []
    else:  # a replacement by day: the successor restores this
        assert out.startswith(f"backup: wrote {KEY} sha256 {sha(tar)}")
        assert BASE + "backups/latest" in bed.aws_targets()  # latest moved to it


def test_the_morning_s_store_check_fails_loudly_where_tonight_s_backup_would(fakes, capsys):
    """A bucket with a customer-managed KMS key the role may not use: the registry's cache
    writes fail without a word and the backup at 19:00 fails. Tell it in the morning (item 8)."""
    denied = "upload failed: An error occurred (AccessDenied) when calling the PutObject operation: KMS key access\n"
    fakes.on("aws", *AWS, "s3", "cp", "-", rc=1, stderr=denied)
    assert cli.main(["store-check"]) == 1
    error = capsys.readouterr().err
    assert f"store-check: this manager cannot write, read and delete {BASE}.swarm-store-check" in error
    assert "kms:GenerateDataKey and kms:Decrypt" in error and "AccessDenied" in error


def test_the_store_check_writes_reads_back_and_deletes(fakes, monkeypatch, capsys):
    monkeypatch.setattr(store.os, "urandom", lambda n: b"\x01" * n)
    token = ("01" * 16 + "\n").encode()
    fakes.on("aws", *AWS, "s3", "cp", "-")
    fakes.on("aws", *AWS, "s3", "cp", BASE + ".swarm-store-check", writes=[(5, token)])
    fakes.on("aws", *AWS, "s3", "rm", BASE + ".swarm-store-check")
    assert cli.main(["store-check"]) == 0
    assert "written, read back and cleaned" in capsys.readouterr().out
    assert [a[len(AWS) : len(AWS) + 2] for a in fakes.argvs("aws")] == [["s3", "cp"], ["s3", "cp"], ["s3", "rm"]]


def test_a_lone_manager_whose_morning_failed_hands_over_and_retires_nothing_and_lets_the_teardown_go(fakes, capsys):
    """Its bootstrap refused the backup: dockerd runs in no swarm. The handover (a delete
    hook) must not fail the destroy that follows, and it backs nothing up."""
    fakes.docker_up()
    fakes.swarm(state="inactive")
    assert cli.main(["backup", "--handover"]) == 0
    assert cli.main(["retire", "--name", "swarm-dev-worker-0", "--addr", "10.42.0.100"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "backup: this node is in no swarm (its morning failed before the swarm formed); nothing to hand over",
        "retire: this manager is in no swarm (its morning failed before the swarm formed); nothing to do for "
        "swarm-dev-worker-0",
    ]
    assert captured.err == ""
    assert [a for a in fakes.argvs("aws") if "s3" in a] == []
    # The night's own backup still refuses, with the way out it always gave.
    assert cli.main(["backup"]) == 1
    assert "not an active swarm manager" in capsys.readouterr().err
