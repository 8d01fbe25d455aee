"""What the bed's engine records: resource states, steps and results, as a backend would.

Values keep the SDK's secret markers (`raw_inputs`, `raw_outputs()`); a checkpoint
replaces every secret-marked value with a placeholder (`redact`), as Pulumi encrypts them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.output import Unknown
from pulumi.runtime import rpc

from testbed.sdk import SECRET_SIG, SIG_KEY, unwrap


class EngineError(RuntimeError):
    """What `pulumi up` or `pulumi destroy` would report as the failure."""


def plain(value: Any) -> Any:
    """The plain value, secret markers removed."""
    return unwrap(value)[0]


def is_secret(value: Any) -> bool:
    return unwrap(value)[1]


def comparable(value: Any) -> Any:
    """Plain values for diffing: assets and archives compare by what they point at."""
    value = plain(value)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, pulumi.asset.Asset | pulumi.asset.Archive):
        return (type(value).__name__, getattr(value, "path", None), getattr(value, "text", None))
    return value


def redact(value: Any) -> Any:
    """What a checkpoint holds: every secret-marked value replaced, as Pulumi encrypts them."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            digest = hashlib.sha256(json.dumps(plain(value), sort_keys=True, default=str).encode()).hexdigest()[:12]
            return {"secure": f"[encrypted {digest}]"}
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, Unknown):
        return "[unknown]"
    return value


def as_secret(value: Any) -> dict:
    return {SIG_KEY: SECRET_SIG, "value": value}


def to_wire(value: Any) -> Any:
    """Unknowns as the RPC layer spells them."""
    if isinstance(value, Unknown):
        return rpc.UNKNOWN
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    return value


@dataclass
class State:
    """One resource as the backend records it."""

    urn: str
    type: str
    name: str
    id: str
    raw_inputs: dict  # with secret markers
    outputs: dict  # plain
    secret_outputs: set[str]
    dependencies: list[str]
    parent: str
    protect: bool
    delete_before_replace: bool
    custom: bool = True
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    ignore_changes: list[str] = field(default_factory=list)
    host: str | None = None  # bed host key, for instances
    pending_replacement: bool = False  # deleted by a delete-before-replace, not yet created again
    retain_on_delete: bool = False  # a delete only forgets it: the provider is not called

    @property
    def inputs(self) -> dict:
        return plain(self.raw_inputs)

    def raw_outputs(self) -> dict:
        return {k: as_secret(v) if k in self.secret_outputs else v for k, v in self.outputs.items()}

    def depends_on(self) -> set[str]:
        return {*self.dependencies, *(u for urns in self.property_dependencies.values() for u in urns), self.parent}


@dataclass
class Step:
    op: str  # create | update | replace | delete | delete-replaced
    urn: str
    name: str
    start: float
    end: float


@dataclass
class Result:
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    changes: dict[str, str] = field(default_factory=dict)  # urn -> create|update|replace|same|delete
    seconds: float = 0.0
    began: float = 0.0  # time.monotonic() when the run began: the origin of `timings`
    # resource name -> (start, end) of its step, in seconds since the run began (benchmarks)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)
    preview: dict[str, str] = field(default_factory=dict)  # urn -> what the preview planned
    steps: list[Step] = field(default_factory=list)  # what ran, in order of completion

    def changed(self) -> dict[str, str]:
        return {urn: op for urn, op in self.changes.items() if op != "same"}

    def order(self, *ops: str) -> list[tuple[str, str]]:
        """(op, resource name) of the steps that ran, in order of completion."""
        return [(s.op, s.name) for s in self.steps if not ops or s.op in ops]


def scan_for(needles: list[str], paths: list[Path]) -> list[str]:
    """Where any of `needles` occurs in these files (names only, never the needle)."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace")
            for index, needle in enumerate(needles):
                if needle and needle in text:
                    found.append(f"{path.name} holds secret #{index}")
    return found


def files_under(*directories: Path) -> list[Path]:
    return [p for d in directories if d.exists() for p in d.rglob("*") if p.is_file()]
