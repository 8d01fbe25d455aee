"""logs-ship: the node's journal and the agent's own lines, to CloudWatch Logs.

EC2 nodes live from the morning to the night: what a failed morning's bootstrap said, or
last night's backup, is gone with the machine unless it left before. So every node ships
its systemd journal (every unit, dockerd, containerd, cloud-init's user-data output, the
swarm-* timers) to the stack's log group, SWARM_LOG_GROUP, every 5 minutes
(swarm-logs.timer), and cli.py ships once more right after the verbs a machine's end may
follow. dockerd sends the containers' logs itself (its awslogs driver, user-data).

Streams: `<node>/journal`, one event per entry as `<identifier>[<pid>]: <message>`, and
`<node>/agent/<verb>`, the lines a verb wrote on stderr: cli.py mirrors them into the
journal (`Mirror`) with SWARM_VERB set, which is how they are told apart here.

Delivery is at least once: the journal cursor of the last entry shipped is saved only once
CloudWatch took its batch, so a failed or killed run sends again from there, never skips.
One shipper at a time (a flock); every call bounded, and a whole run too.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from swarm_agent import env, nodefs, paths, run
from swarm_agent.run import AgentError

# CloudWatch Logs' limits for one PutLogEvents call (its API reference).
MAX_EVENTS = 10_000
MAX_BYTES = 1_048_576  # the messages' UTF-8 bytes plus EVENT_OVERHEAD each
EVENT_OVERHEAD = 26
MAX_SPAN_MS = 24 * 3600 * 1000  # first to last event of a batch
MAX_MESSAGE = 262_144 - EVENT_OVERHEAD  # one event, in bytes
TRUNCATED = " [truncated by swarm-node]"

ENTRY_CAP = 5000  # journal entries per read
ROUNDS = 4  # reads per run while each came back full: a chatty node catches up
CALL_TIMEOUT = 60  # s: one aws call, one journal read
RUN_BUDGET = 240  # s: a run of the verb; the timer fires every 5 minutes
FLUSH_BUDGET = 30  # s: the shipping after a verb, all in
FLUSH_LOCK_WAIT = 15  # s of it for a timer's run that holds the lock (it ships the same lines)
MIN_LEFT = 3  # s: less than this left of a budget starts no more calls
FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,_SYSTEMD_UNIT,_COMM,_PID,SWARM_VERB"
VERB_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
IDENTIFIER = "swarm-node"
INFO, ERR = 6, 3  # syslog priorities
JOURNAL_LINE_MAX = 48 * 1024  # a mirrored line, in bytes: one datagram carries it


# -- the verbs' lines into the journal ---------------------------------------------------
def datagram(fields: dict[str, str]) -> bytes:
    """journald's native protocol: `KEY=value\\n`, or for a value with a newline in it
    `KEY\\n`, its length as 64-bit little-endian, the value and `\\n`."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class Mirror:
    """sys.stderr for a verb (cli.py): each line goes where it always went, and to journald
    with SYSLOG_IDENTIFIER=swarm-node, SWARM_VERB and PRIORITY. Where stderr already is the
    journal (a timer's unit), the line goes to journald alone, or it would be there twice."""

    def __init__(self, stream, verb: str):
        self.stream, self.verb, self.pending = stream, verb, ""
        self.sock = _journal_socket()
        self.journal_only = self.sock is not None and _is_journal(stream)

    def write(self, text: str) -> int:
        if not self.journal_only:
            self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._journal(line, INFO)
        return len(text)

    def error(self, line: str) -> None:
        """The verb's failure, its last line: priority 3."""
        self.flush_pending()
        if not self.journal_only:
            self.stream.write(line + "\n")
            self.stream.flush()
        self._journal(line, ERR)

    def journal(self, text: str, priority: int = ERR) -> None:
        """To the journal only (a traceback that Python prints on stderr itself)."""
        if self.sock is not None:
            self.send(text, priority)

    def _journal(self, line: str, priority: int) -> None:
        if not self.send(line, priority) and self.journal_only:
            self.stream.write(line + "\n")  # journald did not take it: stderr still reaches the journal

    def send(self, message: str, priority: int) -> bool:
        if self.sock is None:
            return False
        message = message.encode("utf-8", "replace")[:JOURNAL_LINE_MAX].decode("utf-8", "ignore")
        fields = {"MESSAGE": message, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": IDENTIFIER}
        try:
            self.sock.sendto(datagram({**fields, "SWARM_VERB": self.verb}), paths.JOURNAL_SOCKET)
        except OSError:
            self.sock.close()  # a wedged journald costs one timeout, not one per line
            self.sock = None
            return False
        return True

    def flush_pending(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self._journal(line, INFO)

    def flush(self) -> None:
        self.stream.flush()

    def close(self):
        """The stream it stood for, once the last partial line went to the journal too."""
        self.flush_pending()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        return self.stream

    def __getattr__(self, name: str):
        return getattr(self.stream, name)  # fileno, isatty, encoding...: the real stderr's


def _journal_socket() -> socket.socket | None:
    """A datagram socket for journald, None where there is none (no systemd; the unit tests)."""
    if not os.path.exists(paths.JOURNAL_SOCKET):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    return sock


def _is_journal(stream) -> bool:
    """systemd says in JOURNAL_STREAM (device:inode) when stderr is connected to the journal."""
    try:
        device, inode = (int(n) for n in os.environ.get("JOURNAL_STREAM", "").split(":"))
        found = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (found.st_dev, found.st_ino) == (device, inode)


# -- reading the journal -----------------------------------------------------------------
def read_journal(cursor: str, cap: int, timeout: float) -> tuple[list[dict], bool]:
    """Up to `cap` entries after `cursor` (without one: from this boot's first), oldest first,
    and whether more may wait. Before systemd 254 journalctl has no "the first N" (-n counts
    from the end), so its output is read line by line and the process stopped at the cap."""
    argv = [run.which("journalctl"), "-o", "json", "--all", "--no-pager", "-q", f"--output-fields={FIELDS}"]
    argv += ["--after-cursor", cursor] if cursor else ["-b"]
    expired = threading.Event()
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
            env=dict(os.environ, PATH=run.SEARCH_PATH),
        )  # fmt: skip
        watchdog = threading.Timer(timeout, lambda: (expired.set(), proc.kill()))
        watchdog.start()
        entries, full = [], False
        try:
            for line in proc.stdout:
                entry = _entry(line)
                if entry is not None:
                    entries.append(entry)
                if len(entries) >= cap:
                    full = True
                    break
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()  # at the cap: the rest waits for the next read
            proc.stdout.close()
            proc.wait(10)
        errors.seek(0)
        said = errors.read().decode(errors="replace")
    if expired.is_set() and not entries:
        raise AgentError(f"journalctl gave no entry within {timeout:g}s")
    if not (full or expired.is_set()) and proc.returncode != 0:
        raise run.CallFailed("journalctl", argv[1:], proc.returncode, said)
    return entries, full or expired.is_set()


def _entry(line: bytes) -> dict | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or "__CURSOR" not in entry or "__REALTIME_TIMESTAMP" not in entry:
        return None
    return entry


# -- entries to events, events to batches ------------------------------------------------
class Event(NamedTuple):
    index: int  # the entry's place in its read: which cursor is safe once it is shipped
    timestamp: int  # ms since the epoch
    message: str


def _text(value: object) -> str:
    """A journal field as JSON gives it: text, bytes as a list of numbers (not UTF-8), or a
    list of values (a field set more than once: the first)."""
    if isinstance(value, list):
        if value and all(isinstance(n, int) for n in value):
            return bytes(value).decode("utf-8", "replace")
        return _text(value[0]) if value else ""
    if value is None:
        return ""
    # A lone surrogate (JSON allows \\ud800) has no UTF-8: CloudWatch would refuse the batch.
    return str(value).encode("utf-8", "replace").decode("utf-8")


def clip(message: str) -> str:
    data = message.encode("utf-8")
    if len(data) <= MAX_MESSAGE:
        return message
    return data[: MAX_MESSAGE - len(TRUNCATED)].decode("utf-8", "ignore") + TRUNCATED


def event_of(entry: dict, index: int, node_name: str) -> tuple[str, Event] | None:
    """(stream, event) of one journal entry; None for an entry with no message."""
    if "MESSAGE" not in entry:
        return None
    message, verb = _text(entry["MESSAGE"]), _text(entry.get("SWARM_VERB"))
    if VERB_RE.match(verb):
        stream = f"{node_name}/agent/{verb}"
    else:
        stream = f"{node_name}/journal"
        who = next((_text(entry.get(k)) for k in ("SYSLOG_IDENTIFIER", "_SYSTEMD_UNIT", "_COMM") if entry.get(k)), "")
        pid = _text(entry.get("_PID"))
        message = f"{who or 'journal'}{f'[{pid}]' if pid else ''}: {message}"
    if not message:
        return None  # CloudWatch takes no empty event
    return stream, Event(index, int(_text(entry["__REALTIME_TIMESTAMP"])) // 1000, clip(message))


def batches(events: list[Event]) -> Iterator[list[Event]]:
    """The events in time order, cut where one PutLogEvents call must end: 10,000 events,
    1 MiB with 26 bytes each on top, 24 hours from the first to the last."""
    batch: list[Event] = []
    size = 0
    for event in sorted(events, key=lambda e: e.timestamp):
        cost = len(event.message.encode("utf-8")) + EVENT_OVERHEAD
        if batch and (
            len(batch) >= MAX_EVENTS or size + cost > MAX_BYTES or event.timestamp - batch[0].timestamp >= MAX_SPAN_MS
        ):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += cost
    if batch:
        yield batch


# -- CloudWatch Logs ---------------------------------------------------------------------
def _logs(node: env.NodeEnv, timeout: float, *args: str) -> run.Result:
    where = ["--region", node.region] if node.region else []
    if node.logs_endpoint:
        where += ["--endpoint-url", node.logs_endpoint]
    return run.call(
        "aws", "logs", *args, *where, "--output", "json",
        timeout=timeout, env=node.logs_aws_env(), check=False,
    )  # fmt: skip


def _failed(node: env.NodeEnv, what: str, stream: str, result: run.Result) -> AgentError:
    lines = (result.stderr or result.stdout or "no message").strip().splitlines() or ["no message"]
    where = node.logs_endpoint or f"CloudWatch Logs in {node.region or 'the default region'}"
    return AgentError(
        f"logs-ship: {what} to log group {node.log_group} (stream {stream}) at {where} failed: {lines[-1][:400]}. "
        "The node needs logs:PutLogEvents and logs:CreateLogStream on that group (README: Logs and alarms)"
    )


def put(node: env.NodeEnv, stream: str, batch: list[Event], work: str, timeout: float) -> None:
    """One batch into its stream; the stream is made when CloudWatch has none by that name."""
    document = os.path.join(work, "events.json")
    fd = os.open(document, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump([{"timestamp": e.timestamp, "message": e.message} for e in batch], handle)
    args = ("put-log-events", "--log-group-name", node.log_group, "--log-stream-name", stream)
    result = _logs(node, timeout, *args, "--log-events", f"file://{document}")
    if result.returncode != 0 and "ResourceNotFoundException" in result.stderr:
        made = _logs(
            node, timeout, "create-log-stream", "--log-group-name", node.log_group, "--log-stream-name", stream
        )
        if made.returncode != 0 and "ResourceAlreadyExistsException" not in made.stderr:
            raise _failed(node, "create-log-stream", stream, made)
        result = _logs(node, timeout, *args, "--log-events", f"file://{document}")
    if result.returncode != 0:
        raise _failed(node, "put-log-events", stream, result)
    _say_rejected(stream, result.stdout)


def _say_rejected(stream: str, answer: str) -> None:
    """CloudWatch takes a batch but drops events older than 14 days (or than the group's
    retention) or 2 hours ahead: said, not retried (they would be dropped again)."""
    try:
        rejected = (json.loads(answer or "{}") or {}).get("rejectedLogEventsInfo")
    except ValueError:
        return
    if rejected:
        run.note(f"logs-ship: CloudWatch dropped events of {stream} as too old or too new: {json.dumps(rejected)}")


# -- what was shipped --------------------------------------------------------------------
def load_state(group: str) -> dict:
    """{"group", "cursor", "streams"}: the cursor of the last entry CloudWatch took, and the
    streams known to exist in the group (a new group: the same cursor, no streams known)."""
    try:
        with open(paths.LOGS_STATE) as handle:
            state = json.load(handle)
        cursor, streams = str(state["cursor"]), set(state["streams"]) if state["group"] == group else set()
    except (OSError, ValueError, KeyError, TypeError):
        cursor, streams = "", set()
    return {"group": group, "cursor": cursor, "streams": streams}


def save_state(state: dict) -> None:
    text = json.dumps({**state, "streams": sorted(state["streams"])}, indent=1) + "\n"
    nodefs.replace(paths.LOGS_STATE, text, 0o600)


@contextmanager
def one_shipper(wait: float) -> Iterator[None]:
    """paths.LOGS_LOCK for the body, waiting at most `wait` seconds for another shipper."""
    fd = os.open(paths.LOGS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = run.now() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if run.now() >= deadline:
                    raise AgentError(
                        f"logs-ship: another shipper held {paths.LOGS_LOCK} for {wait:g}s; it ships the same lines"
                    ) from None
                run.pause(0.5)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- shipping ----------------------------------------------------------------------------
def ship(node: env.NodeEnv, deadline: float) -> tuple[Counter, bool]:
    """Ship what the journal has after the saved cursor, read by read, until it is all
    shipped or `deadline` (run.now()) comes: (events per stream, whether more waits)."""
    state = load_state(node.log_group)
    shipped: Counter = Counter()
    more = False
    work = tempfile.mkdtemp(dir=paths.WORK_DIR, prefix="swarm-logs.")
    try:
        for _ in range(ROUNDS):
            if _left(deadline) < MIN_LEFT:
                return shipped, True
            entries, more = _read(state["cursor"], min(CALL_TIMEOUT, _left(deadline)))
            if not entries:
                return shipped, False
            if not send_entries(node, entries, state, work, deadline, shipped):
                return shipped, True
            if not more:
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return shipped, more


def _left(deadline: float) -> float:
    return deadline - run.now()


def _read(cursor: str, timeout: float) -> tuple[list[dict], bool]:
    try:
        return read_journal(cursor, ENTRY_CAP, timeout)
    except run.CallFailed as error:
        if not cursor and "no such boot" in error.stderr.lower():
            return [], False  # a journal with nothing of this boot yet (journalctl -b fails then)
        if not cursor or "cursor" not in error.stderr.lower():
            raise
    # The journal does not know the saved cursor (a journal rotated away, a file damaged):
    # from this boot's start again, some lines twice rather than none.
    run.note("logs-ship: the journal does not know the saved cursor; shipping from this boot's first entry")
    return read_journal("", ENTRY_CAP, timeout)


def send_entries(node: env.NodeEnv, entries: list[dict], state: dict, work: str, deadline: float, shipped) -> bool:
    """Send one read's entries, batch by batch; after each batch CloudWatch took, save the
    cursor of the last entry before the first one not yet taken. False when time ran out;
    a failure raises, with what was taken before it saved."""
    streams: dict[str, list[Event]] = {}
    for index, entry in enumerate(entries):
        found = event_of(entry, index, node.node_name or os.uname().nodename)
        if found:
            streams.setdefault(found[0], []).append(found[1])
    waiting = sorted(e.index for events in streams.values() for e in events)
    taken: set[int] = set()
    for stream, events in streams.items():
        for batch in batches(events):
            if _left(deadline) < MIN_LEFT:
                return False
            put(node, stream, batch, work, min(CALL_TIMEOUT, _left(deadline)))
            taken.update(e.index for e in batch)
            state["streams"].add(stream)
            shipped[stream] += len(batch)
            waiting = [i for i in waiting if i not in taken]
            last = waiting[0] - 1 if waiting else len(entries) - 1
            if last >= 0:
                state["cursor"] = str(entries[last]["__CURSOR"])
            save_state(state)
    if not streams:  # a read of entries without messages: past them all the same
        state["cursor"] = str(entries[-1]["__CURSOR"])
        save_state(state)
    return True


def logs_ship(args) -> None:
    """The verb (swarm-logs.timer, or by hand): silent when the stack ships no logs."""
    node = env.load_any()
    if not node.log_group:
        return
    with one_shipper(getattr(args, "wait", 60)):
        shipped, more = ship(node, run.now() + RUN_BUDGET)
    if os.environ.get("INVOCATION_ID") and not more:
        return  # the timer's every 5 minutes: its lines would be most of what it ships
    counts = ", ".join(f"{stream} {count}" for stream, count in sorted(shipped.items())) or "nothing new"
    tail = "; more waits, the next run goes on" if more else ""
    print(f"logs-ship: {sum(shipped.values())} lines to {node.log_group} ({counts}){tail}")


def flush(verb: str) -> None:
    """After a verb a machine's end may follow (cli.py): its lines go now, within
    FLUSH_BUDGET. Never fails the verb and never writes on stdout: a note at most."""
    try:
        node = env.load_any()
    except AgentError:
        return  # the verb has said the file is missing
    if not node.log_group:
        return
    deadline = run.now() + FLUSH_BUDGET
    try:
        # journald takes datagrams asynchronously; --sync returns once the verb's last
        # lines (its error line) are in the journal's files, where journalctl reads.
        run.call("journalctl", "--sync", timeout=5, check=False)
        with one_shipper(min(FLUSH_LOCK_WAIT, max(0.0, _left(deadline) - MIN_LEFT))):
            ship(node, deadline)
    except Exception as error:  # anything at all: the verb's outcome and exit code stand
        run.note(f"swarm-node: {verb}'s lines are not in {node.log_group} yet ({error}); the logs timer sends them")
