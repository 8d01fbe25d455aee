"""What the program reads from the agent's verbs: one JSON line each, defined here once.

The Pulumi program (components/swarm.py) imports this module to read the lines, and the
agent prints them with it, so the two sides cannot drift apart; unit tests check both.
Each line is a JSON object with a "kind"; a reader takes the last line of that kind on
stdout (a verb may print notes before it) and refuses anything else, without echoing
the text (probe and tokens carry secrets).

  swarm-probe      a manager's answer to a manager 0 that bootstraps
  swarm-tokens     the join tokens and, with autolock, the unlock key
  swarm-bootstrap  what bootstrap did; `result` is the stack output bootstrapResult
  swarm-backup     the backup a night wrote (or, with --stdout, sent)
"""

from __future__ import annotations

import json
import re

TOKEN_RE = re.compile(r"^SWMTKN-[A-Za-z0-9-]+$")
UNLOCK_RE = re.compile(r"^SWMKEY-1-[A-Za-z0-9+/]+$")
SWARM_STATES = ("inactive", "pending", "active", "error", "locked", "down")
BOOTSTRAP_ACTIONS = ("already-active", "joined", "restored", "initialised")

# kind -> {field: (type, required)}
FIELDS = {
    "swarm-probe": {
        "addr": (str, True),
        "state": (str, True),
        "manager": (bool, True),
        "quorum": (bool, True),
        "token": (str, False),
        # Only with state "down" (dockerd does not answer): whether the node's disk holds
        # a swarm's Raft state, which a restore or an init beside it would fork.
        "raft_on_disk": (bool, False),
    },
    "swarm-tokens": {"worker": (str, True), "manager": (str, True), "unlock": (str, False)},
    "swarm-bootstrap": {"action": (str, True), "result": (str, True), "restored_from": (str, False)},
    "swarm-backup": {"key": (str, True), "sha256": (str, True), "meta": (dict, True)},
}


class ContractError(ValueError):
    """A line that is not what the contract says (the message never quotes it)."""


def line(kind: str, **fields) -> str:
    """The JSON line a verb prints; checked here so a verb cannot print a bad one."""
    record = {"kind": kind, **{k: v for k, v in fields.items() if v is not None}}
    check(record)
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def check(record: dict) -> dict:
    kind = record.get("kind")
    fields = FIELDS.get(kind)  # type: ignore[arg-type]
    if fields is None:
        raise ContractError(f"unknown kind {kind!r}")
    for name, (type_, required) in fields.items():
        if name not in record:
            if required:
                raise ContractError(f"{kind}: field {name!r} is missing")
            continue
        if not isinstance(record[name], type_):
            raise ContractError(f"{kind}: field {name!r} is not a {type_.__name__}")
    extra = set(record) - set(fields) - {"kind"}
    if extra:
        raise ContractError(f"{kind}: unknown fields {sorted(extra)}")
    _check_values(kind, record)
    return record


def _check_values(kind: str, record: dict) -> None:
    if kind == "swarm-probe":
        if record["state"] not in SWARM_STATES:
            raise ContractError("swarm-probe: state is not a swarm state")
        if "token" in record and not TOKEN_RE.match(record["token"]):
            raise ContractError("swarm-probe: token is not a join token")
    elif kind == "swarm-tokens":
        if not (TOKEN_RE.match(record["worker"]) and TOKEN_RE.match(record["manager"])):
            raise ContractError("swarm-tokens: worker or manager is not a join token")
        if record.get("unlock") and not UNLOCK_RE.match(record["unlock"]):
            raise ContractError("swarm-tokens: unlock is not an unlock key")
    elif kind == "swarm-bootstrap" and record["action"] not in BOOTSTRAP_ACTIONS:
        raise ContractError("swarm-bootstrap: action is not one of " + ", ".join(BOOTSTRAP_ACTIONS))


def read(kind: str, stdout: str | None) -> dict:
    """The last `kind` line of a verb's stdout, checked; ContractError if there is none."""
    for text in reversed((stdout or "").splitlines()):
        text = text.strip()
        if not text.startswith("{"):
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("kind") == kind:
            return check(record)
    raise ContractError(f"no {kind} line on stdout")


def read_all(kind: str, stdout: str | None) -> list:
    """Every `kind` line (bootstrap's stdin: one probe per other manager)."""
    records = []
    for text in (stdout or "").splitlines():
        text = text.strip()
        if text.startswith("{"):
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("kind") == kind:
                records.append(check(record))
    return records
