"""Machines the user brings (`swarm:hosts`): each host's name, addresses, role and login,
checked as a whole list (unique names, SSH logins and advertised addresses; an odd
number of managers).
"""

from __future__ import annotations

import ipaddress
import json
import re

from components.settings.base import HOST_KEYS, MAX_MANAGERS, NAMESPACE, SSH_USER, NodePlan, Reader, fix
from components.settings.data import NAME_RE as DATA_NAME

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _ip_version(text: str) -> int | None:
    """4 or 6 for an IP address, None for anything else (a DNS name, a typo)."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def read_hosts(r: Reader, default_user: str) -> list[NodePlan]:
    """swarm:hosts: the machines the user brings. Managers first, in the order given.

    The first manager listed is manager 0: it bootstraps, restores and backs up.
    """
    example = '\'{"name":"node-1","address":"192.168.1.11","role":"manager"}\''
    raw = r.raw("hosts")
    try:
        hosts = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        hosts = None
    if not isinstance(hosts, list) or not hosts:
        r.problem("hosts", "must be a list of hosts with name, address and role (see the README)", example, "[0]")
        return []

    plans: list[NodePlan] = []
    seen_names: dict[str, int] = {}
    seen_logins: dict[tuple[str, int], int] = {}
    seen_advertised: dict[str, int] = {}
    seen_data: dict[str, int] = {}
    counters = {"manager": 0, "worker": 0}
    for i, host in enumerate(hosts):
        at = f"[{i}]"

        def bad(field_name: str, what: str, value_example: str, at: str = at) -> None:
            command = fix("hosts", value_example, f"{at}.{field_name}")
            r.problems.append(f"{NAMESPACE}:hosts{at}.{field_name} {what}; fix: {command}")

        if not isinstance(host, dict):
            r.problem("hosts", f"{at} must be a map with name, address and role (got {host!r})", example, at)
            continue
        unknown = sorted(set(host) - set(HOST_KEYS))
        if unknown:
            r.problems.append(
                f"{NAMESPACE}:hosts{at} has unknown field(s) {', '.join(unknown)} (known: {', '.join(HOST_KEYS)}); "
                f"fix: pulumi config rm --path '{NAMESPACE}:hosts{at}.{unknown[0]}'"
            )
        name = str(host.get("name") or "").strip()
        address = str(host.get("address") or "").strip()
        role = str(host.get("role") or "").strip()
        private = str(host.get("privateAddress") or "").strip()
        user = str(host.get("user") or "").strip() or default_user
        port_raw = host.get("port", 22)

        if not _HOSTNAME.match(name):
            bad("name", f"must be a lowercase host name of letters, digits and '-' (got {name!r})", "node-1")
        elif name in seen_names:
            bad("name", f"repeats {name!r} from hosts[{seen_names[name]}]; names are unique", "node-2")
        else:
            seen_names[name] = i
        if not address:
            bad("address", "is required: where Pulumi connects over SSH (IP or DNS name)", "192.168.1.11")
        elif not (_ip_version(address) or _DNS_NAME.match(address)):
            bad("address", f"is not an IP address or DNS name (got {address!r})", "192.168.1.11")
        if role not in ("manager", "worker"):
            bad("role", f"must be manager or worker (got {role!r})", "manager")
        if private and _ip_version(private) != 4:
            bad("privateAddress", f"must be an IPv4 address (got {private!r})", "10.0.0.11")
        if not private and address and _ip_version(address) != 4:
            bad(
                "privateAddress",
                f"is required because address {address!r} is not an IPv4 address: the node advertises "
                "this IP to the swarm",
                "10.0.0.11",
            )
        advertised = private or address
        if advertised and _ip_version(advertised) == 4:
            if advertised in seen_advertised:
                which = "privateAddress" if private else "address"
                bad(which, f"{advertised} is also advertised by hosts[{seen_advertised[advertised]}]", "10.0.0.12")
            else:
                seen_advertised[advertised] = i
        if not SSH_USER.match(user):
            bad("user", f"is not a valid Linux user name (got {user!r})", "ubuntu")
        try:
            port = int(port_raw)
            if str(port_raw).strip() != str(port) or not 1 <= port <= 65535:
                raise ValueError
        except (TypeError, ValueError):
            bad("port", f"must be a TCP port from 1 to 65535 (got {port_raw!r})", "22")
            port = 22
        login = (address, port)
        if address and login in seen_logins:
            bad("address", f"{address}:{port} is also hosts[{seen_logins[login]}]'s SSH address", "192.168.1.12")
        elif address:
            seen_logins[login] = i
        data = _data_name(host, bad, seen_data, i)
        if role in counters:
            plans.append(NodePlan(name, role, counters[role], 0, advertised or None, address, user, port, data))
            counters[role] += 1

    managers = counters["manager"]
    if not 1 <= managers <= MAX_MANAGERS or managers % 2 == 0:
        r.problem(
            "hosts",
            f"has {managers} manager(s); a swarm needs an odd number from 1 to {MAX_MANAGERS} (Raft needs a majority)",
            "manager",
            f"[{len(hosts) - 1}].role",
        )
    return sorted(plans, key=lambda p: p.role != "manager")


def _data_name(host: dict, bad, seen: dict[str, int], i: int) -> str | None:
    """hosts[].data: the name its data goes by (node.labels.swarm.data), as swarm:dataVolumes names a volume."""
    raw = host.get("data")
    if raw is None:
        return None
    name = str(raw).strip()
    if not DATA_NAME.match(name):
        bad("data", f"must be 1-32 lowercase letters, digits and '-': the node's swarm.data label (got {raw!r})", "pg")
        return None
    if name in seen:
        bad("data", f"repeats {name!r} from hosts[{seen[name]}]: one host per data name", "uploads")
        return None
    seen[name] = i
    return name
