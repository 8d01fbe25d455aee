"""How Pulumi and app teams reach the nodes: the SSH user, the key pair (generated or the
user's own), the networks allowed to SSH in, and whether to connect to public or private
addresses.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import pulumi

from components.settings.base import DEFAULTS, NAMESPACE, SSH_USER, Reader, cidr

_PUBLIC_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+")


@dataclass(frozen=True)
class Access:
    ssh_allowed_cidrs: list[str]
    ssh_user: str
    ssh_public_key: str | None
    ssh_private_key: pulumi.Output[str] | None  # None: the program generates a key
    connect_via: str
    # Managers keep one Elastic IP each through the night (only when reached at public ones).
    elastic_ips: bool


def read_access(r: Reader, config: pulumi.Config, hosts_mode: bool) -> Access:
    ssh_cidrs = _read_allowed_cidrs(r, hosts_mode)

    ssh_user = r.string("sshUser") or DEFAULTS["sshUser"]
    if not SSH_USER.match(ssh_user):
        r.problem("sshUser", f"is not a valid Linux user name (got {ssh_user!r})", "ec2-user")

    ssh_public_key = r.string("sshPublicKey")
    ssh_private_key = config.get_secret("sshPrivateKey")
    has_private = r.raw("sshPrivateKey") is not None
    if hosts_mode and not has_private:
        r.problems.append(
            f"{NAMESPACE}:sshPrivateKey is required with {NAMESPACE}:hosts (the key Pulumi logs in to your "
            f"machines with); fix: pulumi config set --secret {NAMESPACE}:sshPrivateKey < ~/.ssh/id_ed25519"
        )
    if ssh_public_key and not has_private:
        r.problems.append(
            f"{NAMESPACE}:sshPrivateKey is required when {NAMESPACE}:sshPublicKey is set (the program "
            f"connects to the nodes with it); fix: pulumi config set --secret {NAMESPACE}:sshPrivateKey "
            f"< ~/.ssh/id_ed25519"
        )
    if has_private and not ssh_public_key and not hosts_mode:
        r.problem("sshPublicKey", "is required when swarm:sshPrivateKey is set", '"$(cat ~/.ssh/id_ed25519.pub)"')
    if ssh_public_key and not _PUBLIC_KEY.match(ssh_public_key):
        r.problem(
            "sshPublicKey", "must be an OpenSSH public key line (ssh-ed25519 AAAA...)", '"$(cat ~/.ssh/id_ed25519.pub)"'
        )

    connect_via = r.string("connectVia") or DEFAULTS["connectVia"]
    if connect_via not in ("public", "private"):
        r.problem("connectVia", f"must be public or private (got {connect_via!r})", "public")
    elastic_ips = r.boolean("elasticIps") and connect_via == "public"
    private = ssh_private_key if has_private else None
    return Access(ssh_cidrs, ssh_user, ssh_public_key, private, connect_via, elastic_ips)


def _read_allowed_cidrs(r: Reader, hosts_mode: bool) -> list[str]:
    ssh_cidrs = r.string_list("sshAllowedCidrs", "203.0.113.10/32")
    if not hosts_mode and (r.raw("sshAllowedCidrs") is None or ssh_cidrs == []):
        r.problem(
            "sshAllowedCidrs",
            "is required (no default): the networks allowed to SSH to the nodes",
            "203.0.113.10/32",
            path="[0]",
        )
    ssh_cidrs = ssh_cidrs or []
    for block in ssh_cidrs:
        net = cidr(block)
        if net is None:
            hint = ""
            try:
                hint = f" (did you mean {ipaddress.ip_network(block, strict=False)}?)"
            except ValueError:
                pass
            r.problem("sshAllowedCidrs", f"has {block!r}, not a CIDR block{hint}", "203.0.113.10/32", path="[0]")
        elif net.prefixlen == 0:
            pulumi.log.warn(f"{NAMESPACE}:sshAllowedCidrs admits SSH from the whole internet ({block})")
    return ssh_cidrs
