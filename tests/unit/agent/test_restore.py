"""restore.py: choosing, fetching and verifying a backup, and starting manager 0 from it.

Every refusal must leave the swarm's state as it was and start nothing; the private
temporary directory (the swarm's keys) must be gone afterwards, whatever happened."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from node_fakes import write_env
from swarm_agent import dockerd, env, keytool, paths, restore
from swarm_agent.run import AgentError

KEY = "backups/20240102T030405Z.tar.gz"
NAME = KEY[len("backups/") :]
SIGNING = bytes.fromhex("5a" * 32)
UNLOCK = keytool.format_unlock_key(bytes(range(32)))
SEALED_PEM = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
PLAIN_PEM = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
INIT = ["swarm", "init", "--force-new-cluster", "--advertise-addr", "10.42.0.10", "--listen-addr", "10.42.0.10:2377"]


def tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def backup(sealed: bool = False) -> bytes:
    node_key = SEALED_PEM if sealed else PLAIN_PEM
    return tarball({"swarm/raft/wal-v3-encrypted/0.wal": "raft", "swarm/certificates/swarm-node.key": node_key})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def meta(key: str, digest: str, engine="26.1.5", addr="10.42.0.10", unlock=None, signing=SIGNING, fields=True) -> str:
    """A .meta as the night writes it; fields=False: as an agent before the fields were signed."""
    values = {"engine": engine, "addr": addr, "node": "swarm-dev-manager-0", "created": "2024-01-02T03:04:05Z"}
    values["signature"] = keytool.sign(key, digest, signing)
    if unlock:
        values["unlock"] = keytool.wrap_unlock(key, unlock, signing)
    if fields:
        canonical = "".join(f"{k}={values[k]}\n" for k in sorted(values) if k != "signature")
        values["fields"] = hmac.new(signing, f"meta {key} {digest}\n{canonical}".encode(), hashlib.sha256).hexdigest()
    return "".join(f"{k}={v}\n" for k, v in values.items())


def staged(**overrides) -> Path:
    """A staged local copy of one backup (as stage-restore leaves it); overrides: data,
    sha256, meta, latest (bytes or text; None: that file is absent)."""
    data = overrides.get("data", backup())
    digest = sha(data) if data is not None else "0" * 64
    files = {
        NAME: data,
        f"{NAME}.sha256": f"{digest}  {NAME}\n",
        f"{NAME}.meta": meta(KEY, digest),
        "latest": f"{KEY} {digest}\n",
    }
    for name, field in ((f"{NAME}.sha256", "sha256"), (f"{NAME}.meta", "meta"), ("latest", "latest")):
        if field in overrides:
            files[name] = overrides[field]
    directory = Path(paths.RESTORE_DIR) / "swarm/dev/backups"
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if content is not None:
            (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return directory


def first(fakes, tool: str, *args: str, **answer) -> None:
    """A rule that answers before those already there."""
    fakes.on(tool, *args, **answer)
    fakes.rules.insert(0, fakes.rules.pop())
    fakes._save()


@pytest.fixture
def node(fakes):
    """Manager 0 with target local, an old swarm state, its signing key, a docker that answers."""
    write_env(SWARM_BACKUP_TARGET="local")
    Path(paths.SIGNING_KEY).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.SIGNING_KEY).write_text(SIGNING.hex() + "\n")
    Path(paths.SWARM_DIR, "raft").mkdir(parents=True)
    Path(paths.SWARM_DIR, "old-state").write_text("yesterday")
    fakes.docker_up()
    fakes.swarm(state="active", manager=True)
    fakes.on("docker", "swarm", "init")
    return fakes


def inits(fakes) -> list[list[str]]:
    return [argv for argv in fakes.argvs("docker") if argv[:2] == ["swarm", "init"]]


def leftovers() -> list[str]:
    return [n for n in os.listdir(paths.WORK_DIR) if n.startswith("swarm-restore.")]


def untouched() -> bool:
    return Path(paths.SWARM_DIR, "old-state").read_text() == "yesterday"


# -- a restore -------------------------------------------------------------------------
def test_the_latest_local_backup_replaces_the_old_state(node):
    staged()
    Path(paths.SWARM_DIR + ".bak-20230101T000000Z").mkdir()
    outcome = restore.restore_or_init(env.load(), "latest")
    assert outcome == ("restored", f"bootstrap: restored from {KEY}", KEY)
    assert Path(paths.SWARM_DIR, "raft/wal-v3-encrypted/0.wal").read_text() == "raft"
    assert not Path(paths.SWARM_DIR, "old-state").exists()
    moved = [p for p in Path(paths.SWARM_DIR).parent.iterdir() if p.name.startswith("swarm.bak-")]
    assert len(moved) == 1 and (moved[0] / "old-state").read_text() == "yesterday"
    assert inits(node) == [INIT]
    assert not os.path.exists(paths.RESTORE_DIR)  # the staged copy has done its job
    assert leftovers() == []


def test_a_pinned_backup_is_restored_without_consulting_latest(node):
    staged(latest="not a pointer")
    outcome = restore.restore_or_init(env.load(), "/" + KEY)
    assert outcome[2] == KEY
    assert inits(node) == [INIT]


def test_an_s3_restore_records_backups_restored(node, monkeypatch):
    write_env()
    source = staged()
    monkeypatch.setattr(restore, "fetch_backup", lambda n, key, work: _copy_all(source, work))
    node.on("aws", "--region", "eu-west-1", "s3", "cp", "-", "s3://state-bucket/swarm/dev/backups/restored")
    outcome = restore.restore_or_init(env.load(), KEY)
    assert outcome[0] == "restored"
    put = [c for c in node.calls("aws") if "s3://state-bucket/swarm/dev/backups/restored" in c["args"]]
    assert len(put) == 1 and put[0]["stdin"] == KEY + "\n"
    assert leftovers() == []


def test_a_failed_record_of_backups_restored_is_only_a_note(node, monkeypatch, capsys):
    write_env()
    source = staged()
    monkeypatch.setattr(restore, "fetch_backup", lambda n, key, work: _copy_all(source, work))
    node.on("aws", "--region", "eu-west-1", "s3", "cp", "-", rc=1, stderr="AccessDenied\n")
    assert restore.restore_or_init(env.load(), KEY)[0] == "restored"
    assert f"could not record s3://state-bucket/swarm/dev/backups/restored; pruning may not spare {KEY}" in (
        capsys.readouterr().err
    )


def _copy_all(source: Path, work: str) -> None:
    for item in source.iterdir():
        shutil.copy(item, work)


def test_a_failed_init_restarts_dockerd_and_tries_once_more(node, capsys):
    staged()
    Path(paths.SYSTEMD_RUN).mkdir(parents=True)
    first(
        node, "docker", "swarm", "init", rc=1, times=1, stderr="Error response from daemon: context deadline exceeded\n"
    )
    node.on("systemctl", "show", stdout="loaded\n")
    node.on("systemctl", "is-active", rc=3)
    node.on("systemctl")
    assert restore.restore_or_init(env.load(), "latest")[0] == "restored"
    assert inits(node) == [INIT, INIT]
    actions = [argv[0] for argv in node.argvs("systemctl") if argv[0] in ("stop", "start")]
    assert actions == ["stop", "start"]
    assert "init from the restored state failed (Error response from daemon: context deadline exceeded" in (
        capsys.readouterr().err
    )


def test_a_dockerd_that_will_not_stop_fails_the_restore_but_is_started_again(node, monkeypatch):
    staged()
    Path(paths.SYSTEMD_RUN).mkdir(parents=True)
    first(node, "docker", "swarm", "init", rc=1, stderr="Error response from daemon: no\n")
    node.on("systemctl", "show", stdout="loaded\n")
    node.on("systemctl", "is-active")  # still active
    node.on("systemctl")
    monkeypatch.setattr(dockerd, "is_down", lambda: False)  # forever (and no 120 polls of the fakes)
    with pytest.raises(AgentError, match="dockerd did not stop within 60s"):
        restore.restore_or_init(env.load(), "latest")
    assert "start" in [argv[0] for argv in node.argvs("systemctl")]
    assert inits(node) == [INIT]
    assert leftovers() == []


def test_a_swarm_that_does_not_come_up_fails_at_its_bound(node):
    staged()
    first(node, "docker", "info", "--format", "{{json .Swarm}}", stdout='{"LocalNodeState": "pending"}\n')
    with pytest.raises(AgentError, match="swarm did not become active on this manager within 120s"):
        restore.restore_or_init(env.load(), "latest")
    assert 120 <= node.clock.slept <= 122


# -- choosing ----------------------------------------------------------------------------
LIST_VERSIONS = ("aws", "--region", "eu-west-1", "s3api", "list-object-versions")
# What S3 answers a GetObject of a missing key when the caller's ListBucket is conditioned
# on a prefix (the nodes' role): 403, not 404.
FORBIDDEN = "fatal error: An error occurred (403) when calling the HeadObject operation: Forbidden\n"


def versions(fakes, current=(), deleted=(), earlier=()) -> None:
    """list-object-versions of backups/ as the aws CLI prints it (--output json): `current`
    keys exist, `deleted` ones have a delete marker on top, `earlier` only noncurrent versions."""
    answer = {"Versions": [], "DeleteMarkers": []}
    for n, key in enumerate(current):
        answer["Versions"].append({"Key": f"swarm/dev/{key}", "VersionId": f"c{n}", "IsLatest": True,
                                   "LastModified": "2024-01-02T03:04:05.000Z"})  # fmt: skip
    for n, key in enumerate((*deleted, *earlier)):
        answer["Versions"].append({"Key": f"swarm/dev/{key}", "VersionId": f"v{n}", "IsLatest": False,
                                   "LastModified": "2024-01-02T03:04:05.000Z"})  # fmt: skip
    for n, key in enumerate(deleted):
        answer["DeleteMarkers"].append({"Key": f"swarm/dev/{key}", "VersionId": f"d{n}", "IsLatest": True,
                                        "LastModified": "2024-01-03T00:00:00.000Z"})  # fmt: skip
    fakes.on(*LIST_VERSIONS, stdout=json.dumps(answer) if current or deleted or earlier else "")


def test_no_latest_and_no_backups_starts_a_new_swarm(fakes):
    fakes.docker_up()
    versions(fakes)
    fakes.on("aws", "--region", "eu-west-1", "s3", "cp", rc=1, stderr=FORBIDDEN)  # never asked
    fakes.on("docker", "swarm", "init")
    assert restore.restore_or_init(env.load(), "latest") == ("initialised", "bootstrap: initialised a new swarm", None)
    assert inits(fakes) == [INIT[:2] + INIT[3:]]
    assert leftovers() == []
    # "missing" came from the listing (one aws call), never from a GetObject that fails:
    # on real S3 that one answers 403 to the nodes' role, and the first morning would stop.
    assert [c["args"][2:4] for c in fakes.calls("aws")] == [["s3api", "list-object-versions"]]


def test_backups_without_latest_refuse_a_new_swarm(fakes):
    versions(fakes, current=["backups/20240101T000000Z.tar.gz", "backups/20240102T000000Z.tar.gz"])
    with pytest.raises(AgentError) as raised:
        restore.restore_or_init(env.load(), "latest")
    assert str(raised.value).startswith(
        "bootstrap: refusing to start a new swarm: s3://state-bucket/swarm/dev/backups/ holds 2 backup(s) "
        "but no backups/latest."
    )
    # No signing key on this node: no backup can be named as one to restore.
    assert "No other backup in s3://state-bucket/swarm/dev/backups/ carries a signature that checks" in str(
        raised.value
    )
    assert inits(fakes) == [] and leftovers() == []


@pytest.mark.parametrize("how", ["deleted", "earlier"])
def test_an_emptied_store_refuses_a_new_swarm_and_says_how_to_bring_a_backup_back(fakes, how):
    """`aws s3 rm --recursive` on the prefix leaves delete markers and noncurrent versions in
    the versioned bucket: nothing current, but the backups were made (issue 19, item 3)."""
    gone = ["backups/20240101T000000Z.tar.gz", "backups/20240102T000000Z.tar.gz", "backups/latest"]
    versions(fakes, **{how: gone})
    with pytest.raises(AgentError) as raised:
        restore.restore_or_init(env.load(), "latest")
    message = str(raised.value)
    assert message.startswith(
        "bootstrap: refusing to start a new swarm: nothing is current under s3://state-bucket/swarm/dev/backups/, "
        "but the bucket keeps earlier versions of 2 backup(s) (the newest: backups/20240102T000000Z.tar.gz)"
    )
    assert "aws s3api copy-object --bucket state-bucket" in message and "swarm:restoreFrom none" in message
    assert inits(fakes) == [] and leftovers() == []


def test_a_store_that_cannot_be_read_is_not_taken_for_an_empty_one(fakes):
    fakes.on(*LIST_VERSIONS, rc=254, stderr="Unable to locate credentials\n")
    with pytest.raises(AgentError, match="Unable to locate credentials"):
        restore.restore_or_init(env.load(), "latest")
    assert inits(fakes) == []


def test_a_latest_that_the_listing_shows_but_that_cannot_be_read_stops_the_morning(fakes):
    versions(fakes, current=["backups/latest", KEY])
    fakes.on("aws", "--region", "eu-west-1", "s3", "cp", rc=1, stderr=FORBIDDEN)
    with pytest.raises(AgentError, match=r"cannot read s3://state-bucket/swarm/dev/backups/latest: .*403"):
        restore.restore_or_init(env.load(), "latest")
    assert inits(fakes) == []


def test_the_latest_pointer_from_s3_gives_key_and_sha(fakes, tmp_path):
    versions(fakes, current=["backups/latest", KEY])
    fakes.on("aws", "--region", "eu-west-1", "s3", "cp", "s3://state-bucket/swarm/dev/backups/latest",
             writes=[(5, f"{KEY} abc123\n".encode())])  # fmt: skip
    assert restore.choose_backup(env.load(), "latest", str(tmp_path)) == (KEY, "abc123", False)


@pytest.mark.parametrize("pointer", ["", "garbage\n", f"{KEY}\n", "backups/x.tgz abc\n"])
def test_a_latest_that_is_not_key_and_sha_is_refused(node, pointer):
    staged(latest=pointer)
    with pytest.raises(AgentError, match=r"backups/latest is not '<key> <sha256>'; fix it or use --restore none"):
        restore.restore_or_init(env.load(), "latest")
    assert untouched() and inits(node) == []


@pytest.mark.parametrize("wanted", ["backups/../etc/x.tar.gz", "20240102T030405Z.tar.gz", "backups/a b.tar.gz"])
def test_a_pinned_name_must_be_a_backup_key(node, wanted):
    message = re.escape(f"--restore wants latest, none or backups/<name>.tar.gz, got '{wanted}'")
    with pytest.raises(AgentError, match=message):
        restore.restore_or_init(env.load(), wanted)


def test_none_starts_a_new_swarm_without_reading_the_store(node):
    staged()
    assert restore.restore_or_init(env.load(), "none")[0] == "initialised"
    assert node.calls("aws") == [] and os.path.exists(paths.RESTORE_DIR)


# -- verifying ---------------------------------------------------------------------------
def _other() -> bytes:
    return tarball({"swarm/raft/x": "other", "swarm/certificates/y": "other"})


REFUSALS = {
    "missing": ({"data": None, "sha256": None, "meta": None}, "does not exist; list them with 'ls <swarm:backupDir"),
    "no sha256 object": ({"sha256": None}, f"{NAME}.sha256 is missing or empty"),
    "empty sha256 object": ({"sha256": ""}, f"{NAME}.sha256 is missing or empty"),
    "sha256 object differs": ({"sha256": f"{'0' * 64}  {NAME}\n"}, f"does not match /.*{NAME}.sha256 \\(0000"),
    "latest differs": ({"latest": f"{KEY} {'1' * 64}\n"}, "does not match /.*backups/latest \\(1111"),
    "hollow": ("hollow", r"it is without swarm/raft/ or swarm/certificates/ \(a hollow backup\)"),
    "not swarm alone": ("etc", "it is not a tar.gz of swarm/ alone"),
    "not a tar.gz": ("text", "it is not a tar.gz"),
    "no meta": ({"meta": None}, "it has no .meta, so no signature: it was not written by this stack's managers"),
    "forged": ("forged", "its signature does not match: it was not written by this stack's managers"),
    "other address": ("addr", "it was taken on a manager at 10.42.0.99, this one is at 10.42.0.10"),
    "newer engine": ("engine", "it was taken with Docker 27.0.1, this node runs Docker 26.1.5, an older engine"),
}


def _spoiled(how) -> dict:
    if isinstance(how, dict):
        return how
    data = {
        "hollow": tarball({"swarm/raft/x": "raft only"}),
        "etc": tarball({"swarm/raft/x": "r", "swarm/certificates/y": "c", "etc/passwd": "root"}),
        "text": b"not a tarball",
    }.get(how, backup())
    fields = {
        "forged": {"signing": bytes(32)},
        "addr": {"addr": "10.42.0.99"},
        "engine": {"engine": "27.0.1"},
    }.get(how, {})
    return {"data": data, "meta": meta(KEY, sha(data), **fields)}


@pytest.mark.parametrize("how", REFUSALS, ids=list(REFUSALS))
def test_a_bad_backup_is_refused_and_nothing_is_touched(node, how):
    spoil, message = REFUSALS[how]
    staged(**_spoiled(spoil))
    with pytest.raises(AgentError, match=message) as raised:
        restore.restore_or_init(env.load(), "latest")
    assert str(raised.value).startswith("bootstrap: ")
    if how != "missing":
        assert "The object was left untouched." in str(raised.value)
    assert untouched() and inits(node) == [] and leftovers() == []
    assert os.path.exists(paths.RESTORE_DIR)


def test_a_missing_signing_key_refuses_the_restore(node, capsys):
    staged()
    os.remove(paths.SIGNING_KEY)
    with pytest.raises(AgentError, match="its signature does not match"):
        restore.restore_or_init(env.load(), "latest")
    assert f"the backup signing key is missing ({paths.SIGNING_KEY})" in capsys.readouterr().err
    assert untouched() and inits(node) == []


def test_an_empty_signing_key_is_a_missing_one(node):
    data = backup()
    empty_key_signature = hmac.new(b"", f"{KEY} {sha(data)}".encode(), hashlib.sha256).hexdigest()
    staged(data=data, meta=f"engine=26.1.5\naddr=10.42.0.10\nsignature={empty_key_signature}\n")
    Path(paths.SIGNING_KEY).write_text("\n")
    with pytest.raises(AgentError, match="its signature does not match"):
        restore.restore_or_init(env.load(), "latest")


def test_a_field_changed_under_a_valid_name_signature_is_refused(node):
    """The name-and-sha256 signature alone would let a bucket writer change the address,
    engine or sealed key beside it: the fields' own signature must match (issue 19, item 2)."""
    data = backup()
    good = meta(KEY, sha(data), engine="26.1.5")
    altered = good.replace("engine=26.1.5", "engine=20.10.24")  # its `signature=` still checks
    staged(data=data, meta=altered)
    with pytest.raises(AgentError, match="its signature does not match"):
        restore.restore_or_init(env.load(), "latest")
    assert untouched() and inits(node) == []


def test_a_field_added_twice_under_a_valid_fields_signature_is_refused(node):
    """A second `engine=` line is read by the restore but not covered by `fields=`."""
    data = backup()
    staged(data=data, meta=meta(KEY, sha(data), engine="27.0.1") + "engine=20.10.24\n")
    with pytest.raises(AgentError, match="its signature does not match"):
        restore.restore_or_init(env.load(), "latest")
    assert untouched() and inits(node) == []


def test_a_backup_from_before_fields_were_signed_still_restores_with_a_note(node, capsys):
    data = backup()
    staged(data=data, meta=meta(KEY, sha(data), fields=False))
    assert restore.restore_or_init(env.load(), "latest")[0] == "restored"
    assert "written before .meta fields were signed: its address and engine are unsigned" in capsys.readouterr().err


NEWER = "backups/20240103T030405Z.tar.gz"


def add_backup(directory: Path, key: str, signing=SIGNING) -> None:
    """Another backup beside the staged one, with its .sha256 and a .meta signed with `signing`."""
    data, name = backup(), key[len("backups/") :]
    (directory / name).write_bytes(data)
    (directory / f"{name}.sha256").write_text(f"{sha(data)}  {name}\n")
    (directory / f"{name}.meta").write_text(meta(key, sha(data), signing=signing))


def test_a_latest_moved_back_to_an_older_signed_backup_is_refused(node):
    """A bucket writer points latest (or copies an old version of it back) at an older
    signed backup: the morning would restore an older swarm (issue 19, item 2)."""
    add_backup(staged(), NEWER)  # latest still points to KEY, the older one
    with pytest.raises(AgentError) as raised:
        restore.restore_or_init(env.load(), "latest")
    message = str(raised.value)
    assert f"a newer backup signed by this stack's managers exists, {NEWER}" in message
    assert f"swarm:restoreFrom {NEWER}" in message and f"swarm:restoreFrom {KEY}" in message
    assert untouched() and inits(node) == []


def test_a_newer_backup_without_a_good_signature_does_not_stop_the_morning(node, capsys):
    add_backup(staged(), NEWER, signing=bytes(32))  # planted: signed with another key
    assert restore.restore_or_init(env.load(), "latest")[2] == KEY
    assert f"1 backup(s) newer than {KEY} carry no signature that checks; ignored" in capsys.readouterr().err


def test_newer_backups_deleted_from_the_bucket_stop_the_morning(fakes, tmp_path):
    versions(fakes, current=["backups/latest", KEY], deleted=[NEWER])
    fakes.on("aws", "--region", "eu-west-1", "s3", "cp", "s3://state-bucket/swarm/dev/backups/latest",
             writes=[(5, f"{KEY} abc123\n".encode())])  # fmt: skip
    with pytest.raises(AgentError, match=f"newer backups were deleted from the bucket \\({NEWER}\\)"):
        restore.choose_backup(env.load(), "latest", str(tmp_path))


def test_a_named_backup_is_restored_even_with_newer_ones_about(node):
    add_backup(staged(), NEWER)
    assert restore.restore_or_init(env.load(), KEY)[2] == KEY


def test_naming_an_unsigned_backup_does_not_restore_it(node):
    """Pinning is not trusting: a planted backup named in swarm:restoreFrom is refused too,
    and the advice names a backup whose signature checks (issue 19, item 1)."""
    directory = staged()  # KEY, signed
    planted = "backups/20991231T000000Z.tar.gz"
    data = backup()
    (directory / planted[len("backups/") :]).write_bytes(data)
    (directory / f"{planted[len('backups/') :]}.sha256").write_text(f"{sha(data)}  x\n")
    with pytest.raises(AgentError) as raised:
        restore.restore_or_init(env.load(), planted)
    message = str(raised.value)
    assert "it has no .meta, so no signature" in message and "swarm:restoreUnsigned true" in message
    assert f"The newest backup whose signature checks: {KEY} (pulumi config set swarm:restoreFrom {KEY}" in message
    assert untouched() and inits(node) == []


def test_an_unsigned_backup_restores_only_when_named_with_restore_unsigned(node, capsys):
    staged(meta=None)
    assert restore.restore_or_init(env.load(), KEY, allow_unsigned=True)[0] == "restored"
    assert f"{KEY} has no .meta; restoring it unsigned (swarm:restoreUnsigned)" in capsys.readouterr().err


def test_restore_unsigned_never_applies_to_what_latest_points_to(node):
    staged(meta=None)
    with pytest.raises(AgentError, match=r"it has no \.meta, so no signature"):
        restore.restore_or_init(env.load(), "latest", allow_unsigned=True)
    assert untouched() and inits(node) == []


def test_without_latest_the_advice_names_the_newest_signed_backup_not_the_newest(node):
    directory = staged(latest=None)  # KEY, signed
    planted = "20991231T000000Z.tar.gz"  # newer, with a matching .sha256, unsigned
    data = backup()
    (directory / planted).write_bytes(data)
    (directory / f"{planted}.sha256").write_text(f"{sha(data)}  {planted}\n")
    (directory / f"{planted}.meta").write_text(meta(f"backups/{planted}", sha(data), signing=bytes(32)))
    with pytest.raises(AgentError) as raised:
        restore.restore_or_init(env.load(), "latest")
    message = str(raised.value)
    assert "holds 2 backup(s) but no backups/latest" in message
    assert f"signature checks: {KEY} (pulumi config set swarm:restoreFrom {KEY}" in message
    assert planted not in message


@pytest.mark.parametrize("engine", ["26.1.5", "26.1.4", "24.0.7", "26.1.5-1~ubuntu", "26.1.5+dfsg1", "unknown", ""])
def test_an_engine_as_old_or_unknown_is_accepted(node, engine):
    data = backup()
    staged(data=data, meta=meta(KEY, sha(data), engine=engine, addr=""))
    assert restore.restore_or_init(env.load(), "latest")[0] == "restored"


@pytest.mark.parametrize(
    ("a", "b", "after"),
    [
        ("27.0.1", "26.1.5", True),
        ("26.1.5", "27.0.1", False),
        ("26.1.10", "26.1.9", True),
        ("26.1.9", "26.1.10", False),
        ("26.1.5", "26.1.5", False),
        ("26.1", "26.1.0", False),
        ("26.10.0", "26.9.9", True),
        ("26.1.5", "unknown", False),  # sort -V: letters after digits
        ("26.1.5.1", "26.1.5", True),
        ("26.1.5", "", True),
        ("1.13.1~rc1", "1.13.1", False),  # ~ sorts first
    ],
)
def test_versions_compare_as_sort_v_does(a, b, after):
    assert restore.version_after(a, b) is after


def test_the_s3_fetch_is_one_recursive_copy_of_three_names(fakes, tmp_path):
    fakes.on("aws", "--region", "eu-west-1", "s3", "cp")
    restore.fetch_backup(env.load(), KEY, str(tmp_path))
    assert fakes.argvs("aws") == [
        ["--region", "eu-west-1", "s3", "cp", "s3://state-bucket/swarm/dev/backups/", f"{tmp_path}/", "--recursive",
         "--exclude", "*", "--include", NAME, "--include", f"{NAME}.sha256", "--include", f"{NAME}.meta",
         "--only-show-errors"],
    ]  # fmt: skip


def test_an_s3_fetch_that_fails_says_which_object(fakes):
    fakes.on("aws", "--region", "eu-west-1", "s3", "cp", rc=1, stderr="Could not connect to the endpoint URL\n")
    with pytest.raises(AgentError, match=f"^cannot read s3://state-bucket/swarm/dev/{KEY}: "):
        restore.restore_or_init(env.load(), KEY)
    assert leftovers() == []


# -- autolocked backups ------------------------------------------------------------------
@pytest.fixture
def opened(monkeypatch):
    calls = []

    def unlock_state(state_dir, unlock_key):
        calls.append((state_dir, unlock_key))
        return "unlocked"

    monkeypatch.setattr(keytool, "unlock_state", unlock_state)
    return calls


def test_an_autolocked_backup_is_opened_and_locked_again(node, opened):
    data = backup(sealed=True)
    staged(data=data, meta=meta(KEY, sha(data), unlock=UNLOCK))
    assert restore.restore_or_init(env.load(), "latest")[0] == "restored"
    assert opened == [(paths.SWARM_DIR, UNLOCK)]
    assert inits(node) == [[*INIT[:3], "--autolock", *INIT[3:]]]


def test_an_autolocked_backup_without_its_unlock_key_is_refused(node, opened):
    data = backup(sealed=True)
    staged(data=data, meta=meta(KEY, sha(data)))
    with pytest.raises(AgentError, match=r"is autolocked and its \.meta has no unlock key"):
        restore.restore_or_init(env.load(), "latest")
    assert opened == [] and inits(node) == []


def test_an_unlock_key_sealed_with_another_key_does_not_open_it(node, opened, capsys):
    data = backup(sealed=True)
    text = meta(KEY, sha(data), fields=False) + f"unlock={keytool.wrap_unlock(KEY, UNLOCK, bytes(32))}\n"
    staged(data=data, meta=text)
    with pytest.raises(AgentError, match=r"the unlock key beside .* does not open it; nothing was started from it"):
        restore.restore_or_init(env.load(), "latest")
    assert "does not verify with this stack's signing key" in capsys.readouterr().err
    assert opened == [] and inits(node) == [] and leftovers() == []
