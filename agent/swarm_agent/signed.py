"""Which backups this stack's managers signed: the only ones a refusal may point you to.

A backup's .meta carries `signature=`, an HMAC-SHA256 with the stack's signing key of
"<key> <sha256>". Anything that can write to the bucket (the mirror, a host-network
container on a manager, an own host's S3 keys, a CI role) can plant a tarball with a
matching .sha256, so when a morning refuses and says what to restore instead, it names
the newest backup whose signature checks, never merely the newest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil

from swarm_agent import keytool, paths, run, store
from swarm_agent.env import NodeEnv
from swarm_agent.run import AgentError


def meta_field(text: str, name: str) -> str:
    """`sed -n 's/^NAME=//p'`: every NAME= line's value, one a line."""
    return "\n".join(line[len(name) + 1 :] for line in text.split("\n") if line.startswith(name + "="))


def signature_checks(key: str, sha: str, meta_text: str, signing_key: bytes | None) -> bool:
    signature = meta_field(meta_text, "signature")
    expected = keytool.sign(key, sha, signing_key) if signing_key else ""
    return bool(signature and expected and hmac.compare_digest(signature.encode(), expected.encode()))


FIELDS = "fields"  # the .meta field that signs the others


def fields_signature(key: str, sha: str, meta: dict, signing: bytes) -> str:
    """HMAC over the backup's name, sha256 and every other .meta field (engine, addr, node,
    created, unlock): what a restore reads from the .meta is then as signed as the tarball."""
    canonical = "".join(f"{name}={meta[name]}\n" for name in sorted(meta) if name not in ("signature", FIELDS))
    return hmac.new(signing, f"meta {key} {sha}\n{canonical}".encode(), hashlib.sha256).hexdigest()


def meta_dict(text: str) -> dict:
    """The .meta's NAME=value lines (the first of each name)."""
    fields: dict = {}
    for line in text.split("\n"):
        name, sep, value = line.partition("=")
        if sep and name not in fields:
            fields[name] = value
    return fields


def fields_check(key: str, sha: str, meta_text: str, signing: bytes | None) -> bool | None:
    """True or False when the .meta signs its fields; None for one written before they were.
    A name given twice is False: the signature covers each name's first line, and a restore
    reads every line of a name (meta_field), so a second one would go unsigned."""
    meta = meta_dict(meta_text)
    if FIELDS not in meta:
        return None
    names = [line.partition("=")[0] for line in meta_text.split("\n") if "=" in line]
    if len(names) != len(set(names)):
        return False
    expected = fields_signature(key, sha, meta, signing) if signing else ""
    return bool(expected) and hmac.compare_digest(meta[FIELDS].encode(), expected.encode())


def signing_key() -> bytes | None:
    """The stack's signing key (hex in paths.SIGNING_KEY), or None, said on stderr, when it is
    missing: nothing verifies then."""
    try:
        with open(paths.SIGNING_KEY) as handle:
            key = bytes.fromhex(handle.read().strip())
    except (OSError, ValueError):
        key = b""
    if not key:
        run.note(f"swarm-keytool: the backup signing key is missing ({paths.SIGNING_KEY}): run 'pulumi up'")
        return None
    return key


def newest_signed(node: NodeEnv, keys: list[str], work: str, skip: tuple = ()) -> str:
    """The newest of `keys` (newest first) whose .meta signs the sha256 its .sha256 gives, or ""."""
    key_bytes = signing_key()
    candidates = [k for k in keys if k not in skip]
    if not (key_bytes and candidates):
        return ""
    sides = os.path.join(work, "signed")
    _fetch_sides(node, sides)
    for key in candidates:
        name = os.path.join(sides, key[len("backups/") :])
        sha, meta = _read(name + ".sha256").split(" ", 1)[0].strip(), _read(name + ".meta")
        if sha and signature_checks(key, sha, meta, key_bytes):
            return key
    return ""


def hint(node: NodeEnv, keys: list[str], work: str, skip: tuple = ()) -> str:
    """What a refusal tells you to restore instead: only a backup whose signature checks."""
    try:
        key = newest_signed(node, keys, work, skip)
    except AgentError as error:
        return f"(the other backups' signatures could not be read: {error})"
    if not key:
        return f"No other backup in {node.store}backups/ carries a signature that checks."
    return f"The newest backup whose signature checks: {key} (pulumi config set swarm:restoreFrom {key}; pulumi up)."


def _fetch_sides(node: NodeEnv, into: str) -> None:
    """Every .sha256 and .meta under backups/ (small files), in one aws call."""
    os.makedirs(into, exist_ok=True)
    if node.target == "local":
        directory = store.local_path(node, "backups")
        for name in os.listdir(directory) if os.path.isdir(directory) else []:
            if name.endswith((".sha256", ".meta")):
                shutil.copyfile(os.path.join(directory, name), os.path.join(into, name))
        return
    store.aws(node, "s3", "cp", store.url(node, "backups/"), into + "/", "--recursive", "--exclude", "*",
              "--include", "*.sha256", "--include", "*.meta", "--only-show-errors")  # fmt: skip


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""
