"""Stable SSH host keys: each node's ed25519 host key is derived from one secret seed that
Pulumi keeps through the teardown, so a node rebuilt at its address tomorrow answers with
today's key, and clients can check it (`sshKnownHosts`) instead of trusting whatever
answers. Derived rather than stored per node: a protected key per node would make every
scale-in fail (Pulumi refuses to drop a protected resource), and an unprotected one would
go every night.

The OpenSSH private key file is written here byte for byte (PROTOCOL.key), because
libraries fill its two check integers with random bytes: the same key would then differ
on every `pulumi up` and update every node's command.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_TYPE = b"ssh-ed25519"


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def derive_host_key(seed_hex: str, node_name: str) -> tuple[str, str]:
    """(OpenSSH private key file, `ssh-ed25519 AAAA...` public key) of `node_name`."""
    seed = hmac.new(bytes.fromhex(seed_hex), b"swarm ssh host key\0" + node_name.encode(), hashlib.sha256).digest()
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    public_blob = _string(KEY_TYPE) + _string(public)
    check = hmac.new(seed, b"check", hashlib.sha256).digest()[:4]
    comment = f"root@{node_name}".encode()
    private = check + check + _string(KEY_TYPE) + _string(public) + _string(seed + public) + _string(comment)
    private += bytes(range(1, 1 + (-len(private) % 8)))
    blob = b"openssh-key-v1\0" + _string(b"none") + _string(b"none") + _string(b"") + struct.pack(">I", 1)
    blob += _string(public_blob) + _string(private)
    encoded = base64.b64encode(blob).decode()
    body = "\n".join(encoded[i : i + 70] for i in range(0, len(encoded), 70))
    private_file = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----\n"
    return private_file, f"ssh-ed25519 {base64.b64encode(public_blob).decode()}"


def known_hosts_lines(addresses: list[str], public_key: str, port: int = 22) -> list[str]:
    """known_hosts lines for one node's addresses (`[addr]:port` when not 22)."""
    names = [a if port == 22 else f"[{a}]:{port}" for a in addresses if a]
    return [f"{name} {public_key}" for name in names]
