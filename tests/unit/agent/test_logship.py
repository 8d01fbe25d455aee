"""logs-ship: the journal and the verbs' lines reach CloudWatch Logs at least once, in
batches CloudWatch takes, and a failed morning's lines leave before its machine does."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import tempfile
from pathlib import Path

import pytest
from node_fakes import FAKE_TOOL, write_env
from swarm_agent import cli, logship, paths, run

GROUP = "/swarm/swarm/dev"
ENDPOINT = "http://10.200.255.254:4566"
NODE = "swarm-dev-manager-0"
T0 = 1_700_000_000_000  # ms


def entry(n: int, message: str | None = "hello", ms: int = T0, **fields: str) -> str:
    """One line of `journalctl -o json`."""
    found = {"__CURSOR": f"s=1;i={n}", "__REALTIME_TIMESTAMP": str((ms + n) * 1000), **fields}
    if message is not None:
        found["MESSAGE"] = message
    return json.dumps(found) + "\n"


@pytest.fixture
def shipper(fakes, monkeypatch):
    """A node shipping to GROUP through the bed's endpoint; a fake journalctl; each batch's
    file as the aws call read it (the agent removes it afterwards)."""
    shutil.copy(FAKE_TOOL, fakes.bin / "journalctl")
    (fakes.bin / "journalctl").chmod(0o755)
    write_env(SWARM_LOG_GROUP=GROUP, SWARM_LOGS_ENDPOINT=ENDPOINT)
    fakes.sent = []
    real = run.call

    def spy(program, *args, **kwargs):
        for arg in args:
            if arg.startswith("file://"):
                path = arg[len("file://") :]
                mode = oct(os.stat(path).st_mode & 0o777)
                fakes.sent.append({"stream": args[args.index("--log-stream-name") + 1], "mode": mode,
                                   "events": json.loads(Path(path).read_text()), "env": kwargs.get("env")})  # fmt: skip
        return real(program, *args, **kwargs)

    monkeypatch.setattr(run, "call", spy)
    return fakes


def journal(fakes, *lines: str) -> None:
    fakes.on("journalctl", "-o", "json", stdout="".join(lines))


def accepting(fakes) -> None:
    """CloudWatch takes every batch (after the rules a test set first)."""
    fakes.on("aws", "logs", "put-log-events", stdout='{"nextSequenceToken": "1"}')


def puts(fakes) -> list[list[str]]:
    return [a for a in fakes.argvs("aws") if a[:2] == ["logs", "put-log-events"]]


def state() -> dict:
    return json.loads(Path(paths.LOGS_STATE).read_text())


def test_the_journal_and_the_verbs_lines_go_to_their_streams(shipper, capsys):
    journal(
        shipper,
        entry(0, "Started containerd", SYSLOG_IDENTIFIER="containerd", _PID="812"),
        entry(1, "bootstrap: restoring backups/x", SYSLOG_IDENTIFIER="swarm-node", _PID="900", SWARM_VERB="bootstrap"),
        entry(2, "user-data: done", _SYSTEMD_UNIT="cloud-final.service"),
        entry(3, None, SYSLOG_IDENTIFIER="audit"),  # no message: nothing to send, but past it
    )
    accepting(shipper)
    assert cli.main(["logs-ship"]) == 0
    assert [s["stream"] for s in shipper.sent] == [f"{NODE}/journal", f"{NODE}/agent/bootstrap"]
    assert shipper.sent[0]["events"] == [
        {"timestamp": T0, "message": "containerd[812]: Started containerd"},
        {"timestamp": T0 + 2, "message": "cloud-final.service: user-data: done"},
    ]
    assert shipper.sent[1]["events"] == [{"timestamp": T0 + 1, "message": "bootstrap: restoring backups/x"}]
    assert {s["mode"] for s in shipper.sent} == {"0o600"}
    assert puts(shipper)[0] == [
        "logs", "put-log-events", "--log-group-name", GROUP, "--log-stream-name", f"{NODE}/journal",
        "--log-events", puts(shipper)[0][7], "--region", "eu-west-1", "--endpoint-url", ENDPOINT, "--output", "json",
    ]  # fmt: skip
    # From this boot's first entry; the cursor saved is the last one read.
    assert shipper.argvs("journalctl")[0][-1] == "-b"
    assert state()["cursor"] == "s=1;i=3" and state()["group"] == GROUP
    assert sorted(state()["streams"]) == [f"{NODE}/agent/bootstrap", f"{NODE}/journal"]
    out = capsys.readouterr().out
    assert out == f"logs-ship: 3 lines to {GROUP} ({NODE}/agent/bootstrap 1, {NODE}/journal 2)\n"
    assert list(Path(paths.WORK_DIR).iterdir()) == []  # the batches' files are gone


def test_the_next_run_goes_on_after_the_saved_cursor(shipper):
    journal(shipper, entry(0), entry(1))
    accepting(shipper)
    assert cli.main(["logs-ship"]) == 0
    assert cli.main(["logs-ship"]) == 0
    assert shipper.argvs("journalctl")[1][-2:] == ["--after-cursor", "s=1;i=1"]


def test_a_failed_batch_keeps_the_cursor_before_its_first_line_and_says_what_aws_said(shipper, capsys):
    """The journal's batch was taken, the verb's was not: the next run starts at the verb's line."""
    journal(shipper, entry(0), entry(1, "x", SWARM_VERB="backup"), entry(2))
    denied = "An error occurred (AccessDeniedException) when calling the PutLogEvents operation: no\n"
    shipper.on("aws", "logs", "put-log-events", "--log-group-name", GROUP, "--log-stream-name", f"{NODE}/agent/backup",
               rc=254, stderr=denied)  # fmt: skip
    shipper.on("aws", "logs", "put-log-events")
    assert cli.main(["logs-ship"]) == 1
    err = capsys.readouterr().err
    assert f"put-log-events to log group {GROUP} (stream {NODE}/agent/backup) at {ENDPOINT} failed" in err
    assert "AccessDeniedException" in err and "logs:PutLogEvents" in err
    assert state()["cursor"] == "s=1;i=0"
    # Nothing taken at all: no cursor, the next run reads this boot again.
    os.remove(paths.LOGS_STATE)
    shipper.rules[:] = [r for r in shipper.rules if r["tool"] != "aws"]
    shipper.on("aws", "logs", "put-log-events", rc=254, stderr=denied)
    shipper._save()
    assert cli.main(["logs-ship"]) == 1
    assert not os.path.exists(paths.LOGS_STATE)


def test_a_missing_stream_is_made_and_the_batch_sent_again(shipper):
    journal(shipper, entry(0))
    missing = "An error occurred (ResourceNotFoundException) when calling the PutLogEvents operation: stream\n"
    shipper.on("aws", "logs", "put-log-events", rc=254, stderr=missing, times=1)
    shipper.on("aws", "logs", "put-log-events")
    exists = "An error occurred (ResourceAlreadyExistsException) when calling the CreateLogStream operation\n"
    shipper.on("aws", "logs", "create-log-stream", rc=254, stderr=exists)  # another node's run made it: fine
    assert cli.main(["logs-ship"]) == 0
    calls = [a[:2] + a[5:6] for a in shipper.argvs("aws")]
    assert calls == [["logs", "put-log-events", f"{NODE}/journal"], ["logs", "create-log-stream", f"{NODE}/journal"],
                     ["logs", "put-log-events", f"{NODE}/journal"]]  # fmt: skip
    assert state()["streams"] == [f"{NODE}/journal"] and state()["cursor"] == "s=1;i=0"


def test_a_group_that_is_not_there_fails_on_the_stream_s_creation(shipper, capsys):
    journal(shipper, entry(0))
    missing = "An error occurred (ResourceNotFoundException) when calling the {} operation: group\n"
    shipper.on("aws", "logs", "put-log-events", rc=254, stderr=missing.format("PutLogEvents"))
    shipper.on("aws", "logs", "create-log-stream", rc=254, stderr=missing.format("CreateLogStream"))
    assert cli.main(["logs-ship"]) == 1
    assert f"create-log-stream to log group {GROUP}" in capsys.readouterr().err
    assert not os.path.exists(paths.LOGS_STATE)


def test_without_a_log_group_nothing_is_shipped_or_said(shipper, capsys):
    write_env(SWARM_LOG_GROUP="")
    assert cli.main(["logs-ship"]) == 0
    assert shipper.calls() == [] and capsys.readouterr() == ("", "")


def test_from_its_timer_a_run_that_caught_up_says_nothing(shipper, capsys, monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "0123")
    journal(shipper, entry(0))
    accepting(shipper)
    assert cli.main(["logs-ship"]) == 0
    assert capsys.readouterr().out == "" and len(puts(shipper)) == 1


def test_a_cursor_the_journal_does_not_know_starts_this_boot_again(shipper, capsys):
    Path(paths.LOGS_STATE).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.LOGS_STATE).write_text(json.dumps({"group": GROUP, "cursor": "s=gone", "streams": []}))
    shipper.on("journalctl", "-o", "json", "--all", "--no-pager", "-q", f"--output-fields={logship.FIELDS}",
               "--after-cursor", rc=1, stderr="Failed to seek to cursor: Invalid argument\n")  # fmt: skip
    journal(shipper, entry(0))
    accepting(shipper)
    assert cli.main(["logs-ship"]) == 0
    assert [a[-1] for a in shipper.argvs("journalctl")] == ["s=gone", "-b"]
    assert "does not know the saved cursor" in capsys.readouterr().err
    assert state()["cursor"] == "s=1;i=0"


def test_a_journal_with_nothing_of_this_boot_is_nothing_to_ship(shipper, capsys):
    shipper.on(
        "journalctl", rc=1, stderr="Data from the specified boot (+0) is not available: No such boot ID in journal\n"
    )
    assert cli.main(["logs-ship"]) == 0
    assert capsys.readouterr().out == f"logs-ship: 0 lines to {GROUP} (nothing new)\n"


def test_a_read_stops_at_its_cap_and_a_run_reads_again_while_reads_come_back_full(shipper, monkeypatch):
    journal(shipper, *(entry(n) for n in range(5)))
    accepting(shipper)
    entries, full = logship.read_journal("", 3, 10)
    assert [e["__CURSOR"] for e in entries] == ["s=1;i=0", "s=1;i=1", "s=1;i=2"] and full
    entries, full = logship.read_journal("", 10, 10)
    assert len(entries) == 5 and not full
    monkeypatch.setattr(logship, "ENTRY_CAP", 2)
    assert cli.main(["logs-ship"]) == 0
    assert len(shipper.argvs("journalctl")) == 2 + logship.ROUNDS  # the fake answers the same 5 lines each time


# -- batches -----------------------------------------------------------------------------
def events(*stamps: int, size: int = 10) -> list[logship.Event]:
    return [logship.Event(i, stamp, "x" * size) for i, stamp in enumerate(stamps)]


def test_a_batch_holds_at_most_10000_events():
    found = list(logship.batches(events(*([T0] * 10_001))))
    assert [len(b) for b in found] == [10_000, 1]


def test_a_batch_holds_at_most_a_mebibyte_counting_26_bytes_an_event():
    size = 100 * 1024
    found = list(logship.batches(events(*([T0] * 25), size=size)))
    assert [len(b) for b in found] == [10, 10, 5]  # 11 * (102400 + 26) > 1048576
    assert all(sum(len(e.message) + 26 for e in b) <= 1_048_576 for b in found)
    # Exactly at the limit is still one batch.
    exact = 1_048_576 // 4 - 26
    assert [len(b) for b in logship.batches(events(*([T0] * 4), size=exact))] == [4]


def test_a_batch_spans_less_than_24_hours_and_is_in_time_order():
    day = 24 * 3600 * 1000
    found = list(logship.batches(events(T0 + day, T0, T0 + day - 1, T0 + 2 * day)))
    assert [[e.timestamp for e in b] for b in found] == [[T0, T0 + day - 1], [T0 + day], [T0 + 2 * day]]


def test_a_message_longer_than_an_event_may_be_is_cut_without_splitting_a_character():
    long = "é" * 200_000  # 400,000 bytes
    cut = logship.clip(long)
    assert cut.endswith(logship.TRUNCATED)
    assert len(cut.encode()) <= 262_144 - 26 and len(cut.encode()) >= 262_144 - 26 - 1
    assert logship.clip("short") == "short"
    stream, event = logship.event_of(json.loads(entry(0, long, SWARM_VERB="backup")), 0, NODE)
    assert stream == f"{NODE}/agent/backup" and event.message == cut


def test_journal_fields_as_bytes_or_repeated_become_text():
    raw = json.loads(entry(0, None, SYSLOG_IDENTIFIER="kernel"))
    raw["MESSAGE"] = list(b"caf\xc3\xa9 \xff")
    raw["_PID"] = ["1", "2"]
    assert logship.event_of(raw, 0, NODE)[1].message == "kernel[1]: café \ufffd"
    odd = json.loads(entry(0, "x", SWARM_VERB="../etc"))  # not a verb's name: the journal's stream
    assert logship.event_of(odd, 0, NODE)[0] == f"{NODE}/journal"


# -- the verbs' lines into the journal, and shipped as the verb ends --------------------
def failing_bootstrap(fakes) -> None:
    """A morning that fails at once: the swarm on manager 0 is locked."""
    fakes.docker_up()
    fakes.swarm(state="locked")


@pytest.fixture
def journald(monkeypatch):
    """A datagram socket where journald's would be (a short path: AF_UNIX allows 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="jd.")
    path = os.path.join(directory, "socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.setblocking(False)
    monkeypatch.setattr(paths, "JOURNAL_SOCKET", path)

    def received() -> list[bytes]:
        found = []
        while True:
            try:
                found.append(server.recv(1 << 20))
            except BlockingIOError:
                return found

    yield received
    server.close()
    shutil.rmtree(directory)


def fields(data: bytes) -> dict[str, str]:
    """journald's reading of a native datagram."""
    found, rest = {}, data
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            found[key.decode()], rest = value.decode(), after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            found[line.decode()], rest = after[8 : 8 + size].decode(), after[8 + size + 1 :]
    return found


def test_the_native_datagram_format():
    data = logship.datagram({"MESSAGE": "one\ntwo", "PRIORITY": "3"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 7) + b"one\ntwo\nPRIORITY=3\n"
    assert fields(data) == {"MESSAGE": "one\ntwo", "PRIORITY": "3"}


def test_a_verb_s_stderr_lines_reach_journald_marked_and_its_stdout_does_not(fakes, journald, capsys, monkeypatch):
    monkeypatch.setattr(logship, "flush", lambda verb: None)
    failing_bootstrap(fakes)
    assert cli.main(["bootstrap", "--restore", "none"]) == 1
    said = capsys.readouterr()
    sent = [fields(d) for d in journald()]
    assert sent and all(f["SYSLOG_IDENTIFIER"] == "swarm-node" and f["SWARM_VERB"] == "bootstrap" for f in sent)
    # The verb's lines between its start and its end, which go to the journal alone.
    start, *lines, end = sent
    assert start["MESSAGE"] == "bootstrap: started" and start["PRIORITY"] == "6"
    assert re.fullmatch(r"bootstrap: failed in \d+\.\d s", end["MESSAGE"]) and end["PRIORITY"] == "3"
    assert lines[-1]["PRIORITY"] == "3" and lines[-1]["MESSAGE"] == said.err.splitlines()[-1]
    assert lines[-1]["MESSAGE"].startswith("swarm-node: bootstrap: the swarm on this node is locked")
    assert [f["MESSAGE"] for f in lines] == said.err.splitlines() and said.out == ""


def test_a_note_is_priority_6_and_a_partial_line_waits_for_its_end(journald):
    out = tempfile.TemporaryFile("w+")
    mirror = logship.Mirror(out, "backup")
    mirror.write("backup: pruned ")
    assert journald() == []
    mirror.write("backups/a.tar.gz\nbackup: kept")
    assert mirror.close() is out
    sent = [fields(d) for d in journald()]
    assert [(f["MESSAGE"], f["PRIORITY"]) for f in sent] == [("backup: pruned backups/a.tar.gz", "6"),
                                                            ("backup: kept", "6")]  # fmt: skip
    out.seek(0)
    assert out.read() == "backup: pruned backups/a.tar.gz\nbackup: kept"


def test_where_stderr_is_the_journal_a_line_goes_there_once(journald, monkeypatch):
    out = tempfile.TemporaryFile("w+")
    stat = os.fstat(out.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    mirror = logship.Mirror(out, "logs-ship")
    mirror.write("logs-ship: a line\n")
    mirror.close()
    assert [fields(d)["MESSAGE"] for d in journald()] == ["logs-ship: a line"]
    out.seek(0)
    assert out.read() == ""


def test_without_journald_a_verb_writes_as_it_always_did(fakes, capsys):
    assert not os.path.exists(paths.JOURNAL_SOCKET)
    failing_bootstrap(fakes)
    assert cli.main(["bootstrap", "--restore", "none"]) == 1
    assert capsys.readouterr().err.startswith("swarm-node: bootstrap: the swarm on this node is locked")


def test_a_failed_bootstrap_s_lines_are_shipped_as_it_ends_and_its_outcome_stands(shipper, capsys):
    failing_bootstrap(shipper)
    journal(
        shipper,
        entry(0, "swarm-node: bootstrap: the swarm on this node is locked", SWARM_VERB="bootstrap", PRIORITY="3"),
    )
    shipper.on("aws", "logs", "put-log-events")
    assert cli.main(["bootstrap", "--restore", "none"]) == 1
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith("swarm-node: bootstrap: the swarm on this node is locked")
    assert ["--sync"] in shipper.argvs("journalctl")  # the error line is in the journal's files first
    assert [s["stream"] for s in shipper.sent] == [f"{NODE}/agent/bootstrap"]
    assert state()["cursor"] == "s=1;i=0"


def test_a_failed_shipping_after_a_verb_is_a_note_and_changes_nothing(shipper, capsys):
    failing_bootstrap(shipper)
    journal(shipper, entry(0, "x", SWARM_VERB="bootstrap"))
    shipper.on("aws", "logs", "put-log-events", rc=255, stderr="Could not connect to the endpoint URL\n")
    assert cli.main(["bootstrap", "--restore", "none"]) == 1
    said = capsys.readouterr()
    assert said.out == ""
    error, note = said.err.splitlines()[-2:]
    assert error.startswith("swarm-node: bootstrap: the swarm on this node is locked")
    assert note.startswith(f"swarm-node: bootstrap's lines are not in {GROUP} yet (")
    assert "Could not connect to the endpoint URL" in note and note.endswith("the logs timer sends them")


def test_the_shipping_after_a_verb_is_bounded(shipper, capsys, monkeypatch):
    """Another shipper holds the lock: the verb waits at most FLUSH_LOCK_WAIT for it."""
    import fcntl

    failing_bootstrap(shipper)
    with open(paths.LOGS_LOCK, "w") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        before = shipper.clock.slept
        assert cli.main(["bootstrap", "--restore", "none"]) == 1
    waited = shipper.clock.slept - before
    assert logship.FLUSH_LOCK_WAIT <= waited <= logship.FLUSH_LOCK_WAIT + 1
    assert "another shipper held" in capsys.readouterr().err and puts(shipper) == []


def test_a_verb_not_followed_by_a_machine_s_end_ships_nothing(shipper):
    journal(shipper, entry(0))
    failing_bootstrap(shipper)
    assert cli.main(["tokens"]) == 1
    assert shipper.calls("journalctl") == [] and puts(shipper) == []
