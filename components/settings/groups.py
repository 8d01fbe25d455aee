"""Worker groups (`swarm:workerGroups`): Auto Scaling groups of workers that join by themselves.

Each entry is one group: a name (its nodes' `swarm.group` label, so a stack pins a
service to a group by name), the instance types it may launch (several give spot more
pools to draw from), its size (min, desired, max), how much of it is on-demand (a base,
then a percentage of the rest; the remainder is spot) and extra node labels. The pinned
workers of `swarm:workerCount` keep working beside the groups.

`swarm:ssmEndpoint` and `swarm:autoscalingEndpoint` point the nodes at stand-ins of
those APIs (the test bed's); empty means AWS's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from components.settings.base import NAMESPACE, Reader, fix
from components.settings.ec2 import architecture_of_instance_type

GROUP_KEYS = ("name", "instanceTypes", "min", "desired", "max", "onDemandBase", "onDemandPercent", "labels")
# The ASG is `<cluster>-<name>`, a node's hostname `<name>-<instance id>` (19 characters):
# both stay well inside AWS's and DNS's limits.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}[a-z0-9]$|^[a-z]$")
_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# Node labels the user may add; `swarm.*` is the program's own (group, capacity, data...).
LABEL_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/-]{0,128}$")
MAX_SIZE = 1000  # per group; Auto Scaling takes more, the swarm's managers are the limit
MAX_TYPES = 20
EXAMPLE = '\'{"name":"batch","desired":2,"max":6,"onDemandBase":1,"onDemandPercent":0}\''
TYPES_EXAMPLE = '\'["t3.medium","t3a.medium"]\''
_URL = re.compile(r"^https?://[^\s/]+")


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    instance_types: list[str]
    min_size: int
    desired: int  # each morning; changes during the day (AWS, you) are kept until then
    max_size: int
    on_demand_base: int
    on_demand_percent: int  # of the capacity above the base; the rest is spot
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def uses_spot(self) -> bool:
        return self.on_demand_percent < 100 and self.max_size > self.on_demand_base


@dataclass(frozen=True)
class GroupEndpoints:
    ssm: str | None  # swarm:ssmEndpoint
    autoscaling: str | None  # swarm:autoscalingEndpoint


def read_group_endpoints(r: Reader) -> GroupEndpoints:
    found = {}
    for key, example in (
        ("ssmEndpoint", "https://ssm.eu-west-1.amazonaws.com"),
        ("autoscalingEndpoint", "https://autoscaling.eu-west-1.amazonaws.com"),
    ):
        value = r.string(key)
        if value and not _URL.match(value):
            r.problem(key, f"must be an http(s) URL (got {value!r})", example)
        found[key] = value
    return GroupEndpoints(found["ssmEndpoint"], found["autoscalingEndpoint"])


def read_worker_groups(r: Reader, default_type: str, architecture: str) -> list[WorkerGroup]:
    entries = r.json_list("workerGroups", "a list of groups with name and desired", EXAMPLE)
    groups: list[WorkerGroup] = []
    for i, entry in enumerate(entries):
        group = _read_group(r, i, entry, default_type, architecture)
        if group is None:
            continue
        if any(other.name == group.name for other in groups):
            _bad(r, i, "name", f"repeats {group.name!r}; group names are unique", "spot")
        groups.append(group)
    return groups


def _read_group(r: Reader, i: int, entry: object, default_type: str, architecture: str) -> WorkerGroup | None:
    if not isinstance(entry, dict):
        r.problem("workerGroups", f"[{i}] must be a map with name and desired (got {entry!r})", EXAMPLE, f"[{i}]")
        return None
    unknown = sorted(set(entry) - set(GROUP_KEYS))
    if unknown:
        r.problems.append(
            f"{NAMESPACE}:workerGroups[{i}] has unknown field(s) {', '.join(unknown)} "
            f"(known: {', '.join(GROUP_KEYS)}); "
            f"fix: pulumi config rm --path '{NAMESPACE}:workerGroups[{i}].{unknown[0]}'"
        )
    name = str(entry.get("name") or "").strip()
    ok = True
    if not NAME_RE.match(name):
        what = f"must be 1-21 lowercase letters, digits and '-', starting with a letter (got {name!r})"
        ok = _bad(r, i, "name", what, "batch")
    types = _instance_types(r, i, entry.get("instanceTypes", [default_type]), architecture)
    sizes = _sizes(r, i, entry)
    labels = _labels(r, i, entry.get("labels", {}))
    if not ok or types is None or sizes is None or labels is None:
        return None
    return WorkerGroup(name, types, *sizes, labels=labels)


def _instance_types(r: Reader, i: int, value: object, architecture: str) -> list[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_TYPES or not all(isinstance(v, str) for v in value):
        what = f"must be a list of 1 to {MAX_TYPES} instance types (got {value!r})"
        _bad(r, i, "instanceTypes", what, TYPES_EXAMPLE)
        return None
    types = [v.strip() for v in value]
    for t in types:
        if not _TYPE.match(t) or architecture_of_instance_type(t) not in (None, architecture):
            what = f"holds {t!r}, not an instance type of the stack's architecture {architecture}"
            _bad(r, i, "instanceTypes", what, TYPES_EXAMPLE)
            return None
    if len(set(types)) != len(types):
        _bad(r, i, "instanceTypes", f"repeats a type ({types})", TYPES_EXAMPLE)
        return None
    return types


def _sizes(r: Reader, i: int, entry: dict) -> tuple[int, int, int, int, int] | None:
    """min, desired, max, onDemandBase, onDemandPercent; desired is required, min defaults
    to 0, max to desired (a group grows only as far as you allow), all on-demand by default."""
    values = {}
    for key, default, top in (
        ("desired", None, MAX_SIZE),
        ("min", 0, MAX_SIZE),
        ("onDemandBase", 0, MAX_SIZE),
        ("onDemandPercent", 100, 100),
    ):
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            example = "0" if key == "onDemandPercent" else "2"
            _bad(r, i, key, f"must be a whole number from 0 to {top} (got {value!r})", example)
            return None
        values[key] = value
    top = entry.get("max", max(values["desired"], 1))
    if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_SIZE:
        _bad(r, i, "max", f"must be a whole number from 1 to {MAX_SIZE} (got {top!r})", "6")
        return None
    if not values["min"] <= values["desired"] <= top:
        what = f"must lie between min ({values['min']}) and max ({top}) (got {values['desired']})"
        _bad(r, i, "desired", what, str(min(max(values["desired"], values["min"]), top)))
        return None
    return values["min"], values["desired"], top, values["onDemandBase"], values["onDemandPercent"]


def _labels(r: Reader, i: int, value: object) -> dict[str, str] | None:
    if not isinstance(value, dict):
        _bad(r, i, "labels", f"must be a map of label names to values (got {value!r})", '\'{"tier":"batch"}\'')
        return None
    labels = {}
    for key, text in value.items():
        text = str(text)
        if not LABEL_KEY_RE.match(str(key)) or str(key).startswith("swarm.") or not LABEL_VALUE_RE.match(text):
            what = (
                f"has {key}={text!r}: names are lowercase letters, digits, '.', '_' and '-', not starting "
                "with swarm. (the program's own); values up to 128 of A-Z a-z 0-9 . _ : / -"
            )
            _bad(r, i, "labels", what, '\'{"tier":"batch"}\'')
            return None
        labels[str(key)] = text
    return labels


def _bad(r: Reader, i: int, field_name: str, what: str, example: str) -> bool:
    command = fix("workerGroups", example, f"[{i}].{field_name}")
    r.problems.append(f"{NAMESPACE}:workerGroups[{i}].{field_name} {what}; fix: {command}")
    return False
