"""Pulumi SDK plumbing shared by the unit harness and the bed's engine, which both run a
program in-process under mocks, many times in one interpreter."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.settings import SETTINGS, get_root_resource, set_root_resource
from pulumi.runtime.sync_await import _sync_await

SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key


def unwrap(value: Any) -> tuple[Any, bool]:
    """(plain value, whether any part of it was marked secret)."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return unwrap(value.get("value"))[0], True
        items = {k: unwrap(v) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(s for _, s in items.values())
    if isinstance(value, list):
        items = [unwrap(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def fresh_stack() -> None:
    """Forget the previous run's root stack, so `set_mocks` makes a new one for this run's exports."""
    set_root_resource(None)


def stack_exports() -> tuple[dict[str, Any], set[str]]:
    """What the program passed to `pulumi.export`, resolved, and which of it is secret."""
    values: dict[str, Any] = {}
    secret: set[str] = set()
    for key, value in get_root_resource().outputs.items():
        output = pulumi.Output.from_input(value)
        values[key] = _sync_await(output.future())
        if _sync_await(output.is_secret()):
            secret.add(key)
    return values, secret


def drop_pending_outputs() -> None:
    """After a failed run: the SDK keeps its pending outputs in a global set, and the next
    run would await them and raise this run's error again."""
    leftovers = list(SETTINGS.outputs)
    SETTINGS.outputs.clear()
    for task in leftovers:
        task.cancel()


@contextmanager
def one_run_per_process():
    """What the program may assume of its process, put back after each run: `__main__.py`
    makes full garbage collections rare, which suits the one run per process of Pulumi's
    language host; here runs follow one another, and each leaves its event loop (an epoll
    descriptor and a socket pair) and executor in cycles only a full collection frees, so
    a session of runs ran out of descriptors (select() refuses those above 1023)."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.collect()
