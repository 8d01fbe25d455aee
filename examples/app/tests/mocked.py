"""Run this app's `__main__.py` under Pulumi's mocks and record what the engine would see.

An app repo copies `examples/app` and runs these tests with nothing but its own
requirements (requirements-dev.txt), so this is the app's own small harness, on the
Pulumi SDK's public mocks: no module of the swarm repository is imported.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS, get_root_resource, set_root_resource
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await


def unwrap(value: Any) -> tuple[Any, bool]:
    """(plain value, whether any part of it was marked secret), from the wire format."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return unwrap(value.get("value"))[0], True
        items = {k: unwrap(v) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(s for _, s in items.values())
    if isinstance(value, list):
        items = [unwrap(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


@dataclass
class Registered:
    type: str
    name: str
    urn: str
    provider: str  # the provider reference (URN::id) the resource was registered with
    inputs: dict[str, Any]
    secret_inputs: set[str]


@dataclass
class Run:
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.recorded: list[Registered] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        raw = rpc.deserialize_properties(request.object)
        inputs, _ = unwrap(raw)
        secret_inputs = {k for k, v in raw.items() if unwrap(v)[1]}
        self.recorded.append(
            Registered(request.type, request.name, response.urn, request.provider, inputs, secret_inputs)
        )
        return response


def run_program(
    main: Path, config: dict[str, Any], secret_keys: tuple[str, ...], mocks: pulumi.runtime.Mocks, project: str
) -> Run:
    """Run `main` as stack `dev` of `project` with `config` (namespaced keys; a value that
    is not a string goes as JSON, as `pulumi config set --path` stores it; None: unset)."""
    monitor = RecordingMonitor(mocks)
    set_root_resource(None)  # this run's exports on a stack of its own
    pulumi.runtime.set_mocks(mocks, project=project, stack="dev", preview=False, monitor=monitor)
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items() if v is not None}
    pulumi.runtime.set_all_config(values, list(secret_keys))
    run = Run()

    def program():
        runpy.run_path(str(main), run_name="__main__")
        for key, value in get_root_resource().outputs.items():
            output = pulumi.Output.from_input(value)
            run.outputs[key] = _sync_await(output.future())
            if _sync_await(output.is_secret()):
                run.secret_outputs.add(key)

    try:
        _sync_await(run_pulumi_func(program))
    except Exception:
        # The SDK keeps a failed run's pending outputs; the next run would raise them again.
        leftovers = list(SETTINGS.outputs)
        SETTINGS.outputs.clear()
        for task in leftovers:
            task.cancel()
        raise
    run.resources = [r for r in monitor.recorded if r.type != "pulumi:pulumi:Stack"]
    return run
