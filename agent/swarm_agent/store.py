"""The backup store: the stack's prefix in S3, or the copy staged from the Pulumi machine.

Keys are relative to the store (`backups/latest`, `backups/<UTC>.tar.gz`). S3 goes
through the aws CLI (the instance role, or an own host's root-only keys), one call per
object: each `aws` start costs about a second.

Whether an object exists is told by listing, never by a GetObject that fails: S3 answers
a missing key with 404 only to a caller that may list the bucket, and with 403 to one
whose ListBucket is conditioned on a prefix, as the nodes' is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import NamedTuple

from swarm_agent import paths
from swarm_agent.env import NodeEnv
from swarm_agent.run import AWS_TIMEOUT, AgentError, CallFailed, call

BACKUP_NAME = re.compile(r"^backups/[0-9]{8}T[0-9]{6}Z\.tar\.gz$")
MISSING = ("Not Found", "404", "NoSuchKey")


def aws(env: NodeEnv, *args: str, **kwargs):
    region = ["--region", env.region] if env.region else []
    endpoint = ["--endpoint-url", env.get("SWARM_S3_ENDPOINT")] if env.get("SWARM_S3_ENDPOINT") else []
    return call("aws", *region, *endpoint, *args, timeout=AWS_TIMEOUT, env=env.aws_env(), **kwargs)


def url(env: NodeEnv, key: str) -> str:
    return f"s3://{env.bucket}/{env.prefix}{key}"


def local_path(env: NodeEnv, key: str) -> str:
    return os.path.join(paths.RESTORE_DIR, env.prefix + key)


def fetch(env: NodeEnv, key: str, dest: str) -> bool:
    """Copy `key` to the file `dest`: True if fetched, False if it does not exist; any other
    failure (credentials, network) raises."""
    if env.target == "local":
        source = local_path(env, key)
        if not os.path.isfile(source):
            return False
        shutil.copyfile(source, dest)
        return True
    try:
        aws(env, "s3", "cp", url(env, key), dest, "--only-show-errors")
    except CallFailed as error:
        if any(m in error.stderr for m in MISSING):
            return False
        raise AgentError(f"cannot read {env.store}{key}: {error}") from None
    return True


def read_text(env: NodeEnv, key: str, work_dir: str) -> str:
    """The object's text, or "" when it does not exist."""
    dest = os.path.join(work_dir, key.replace("/", "_") + ".fetched")
    if not fetch(env, key, dest):
        return ""
    with open(dest) as handle:
        return handle.read()


def put_file(env: NodeEnv, path: str, key: str) -> None:
    aws(env, "s3", "cp", path, url(env, key), "--only-show-errors")


def put_text(env: NodeEnv, text: str, key: str) -> None:
    aws(env, "s3", "cp", "-", url(env, key), "--only-show-errors", input=text)


def remove(env: NodeEnv, key: str) -> None:
    aws(env, "s3", "rm", url(env, key), "--only-show-errors")


def backups(env: NodeEnv) -> list[str]:
    """The backups/<UTC>.tar.gz keys in the store, newest first (S3: the current ones alone,
    from list-objects-v2, which pruning needs and which needs no version rights)."""
    if env.target == "local":
        return listing(env).backups
    result = aws(env, "s3api", "list-objects-v2", "--bucket", env.bucket, "--prefix", f"{env.prefix}backups/",
                 "--query", "Contents[].Key", "--output", "text")  # fmt: skip
    keys = [k[len(env.prefix) :] for k in result.stdout.split() if k.startswith(env.prefix)]
    return sorted((k for k in keys if BACKUP_NAME.match(k)), reverse=True)


class Listing(NamedTuple):
    """What backups/ holds: keys that exist now, and backups that only earlier versions or
    delete markers remain of (a versioned bucket keeps those after an `aws s3 rm`)."""

    current: frozenset
    gone: tuple  # backups/<UTC>.tar.gz keys with no current object, newest first

    @property
    def backups(self) -> list[str]:
        return sorted((k for k in self.current if BACKUP_NAME.match(k)), reverse=True)


def listing(env: NodeEnv) -> Listing:
    """One `aws s3api list-object-versions` of backups/ (it needs s3:ListBucketVersions):
    the current objects, and the backups deleted since (nothing of the kind for a staged copy)."""
    if env.target == "local":
        directory = local_path(env, "backups")
        names = os.listdir(directory) if os.path.isdir(directory) else []
        return Listing(frozenset(f"backups/{n}" for n in names), ())
    result = aws(env, "s3api", "list-object-versions", "--bucket", env.bucket, "--prefix",
                 f"{env.prefix}backups/", "--output", "json")  # fmt: skip
    try:
        answer = json.loads(result.stdout) if result.stdout.strip() else {}
    except ValueError:
        raise AgentError(f"cannot list {env.store}backups/: aws answered something that is not JSON") from None
    versions, markers = answer.get("Versions") or [], answer.get("DeleteMarkers") or []
    current = frozenset(v["Key"][len(env.prefix) :] for v in versions if v.get("IsLatest"))
    earlier: dict[str, str] = {}
    for entry in versions + markers:
        key = entry["Key"][len(env.prefix) :]
        if key not in current and BACKUP_NAME.match(key):
            earlier[key] = max(earlier.get(key, ""), entry.get("LastModified", ""))
    return Listing(current, tuple(sorted(earlier, reverse=True)))


CHECK_KEY = ".swarm-store-check"  # under the prefix, outside backups/ and the mirror's docker/


def check_round_trip(env: NodeEnv, work_dir: str) -> str:
    """Write an object under the prefix, read it back, delete it, with this node's rights: a
    bucket it cannot use (a customer-managed KMS key the role may not use, a bucket policy)
    fails now, in the morning, not at 19:00 when the backup needs it."""
    token = os.urandom(16).hex()
    where = f"{env.store}{CHECK_KEY}"
    try:
        put_text(env, token + "\n", CHECK_KEY)
        back = read_text(env, CHECK_KEY, work_dir).strip()
        remove(env, CHECK_KEY)
    except AgentError as error:
        raise AgentError(
            f"store-check: this manager cannot write, read and delete {where} with its rights ({error}). Tonight's "
            "backup would fail the same way. A bucket encrypted with a customer-managed KMS key needs "
            "kms:GenerateDataKey and kms:Decrypt on that key for the managers' role (add them to the key's policy: "
            "README, Security, Rights)."
        ) from None
    if back != token:
        raise AgentError(f"store-check: {where} read back other than it was written; nothing else was touched")
    return f"store-check: {env.store} written, read back and cleaned with this node's rights"
