"""What the verbs read of a stack: its outputs (`pulumi stack output --json --show-secrets`,
or a file holding that JSON: `--outputs`, which the sandbox and the tests use), its state
(`pulumi stack export`: what survives the teardown, the protected bucket and keys), one
config value and one output."""

from __future__ import annotations

import json
from pathlib import Path

from swarmcli import pulumicli
from swarmcli.errors import SwarmCliError


def load_outputs(stack: str, path: str | None) -> dict:
    if path:
        return json.loads(Path(path).read_text())
    try:
        pulumicli.require()
    except SwarmCliError as error:
        raise SwarmCliError(f"{error}; or pass --outputs FILE") from error
    done = pulumicli.run(["stack", "output", "--json", "--show-secrets"], stack)
    return json.loads(done.stdout)


def stack_resources(stack: str, show_secrets: bool = False) -> list[dict]:
    """The resources in a stack's state (`pulumi stack export`): what survives the teardown."""
    done = pulumicli.run(["stack", "export", *(["--show-secrets"] if show_secrets else [])], stack)
    return json.loads(done.stdout).get("deployment", {}).get("resources") or []


def config_values(stack: str) -> dict[str, str]:
    """The stack's config (`pulumi config --json`), secrets left out: key -> value."""
    done = pulumicli.run(["config", "--json"], stack)
    return {key: entry.get("value", "") for key, entry in json.loads(done.stdout or "{}").items()}


def output_value(stack: str, name: str) -> str:
    return pulumicli.run(["stack", "output", name], stack).stdout.strip()
