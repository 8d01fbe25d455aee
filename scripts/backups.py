#!/usr/bin/env python3
"""List and verify the swarm backups of a stack in its state bucket (works after teardown).

    scripts/backups.py list   --stack dev            # newest first, * marks `latest`
    scripts/backups.py verify --stack dev [KEY]      # download and check sha256 (default: latest)
                                                     # exit 0 ok, 3 nothing backed up yet, 1 anything else
    scripts/backups.py list   --bucket B --prefix swarm/dev/

With --stack the bucket is read from the stack's state (`pulumi stack export`), which
still holds the protected bucket after `pulumi destroy --exclude-protected`. To restore
an older backup: `pulumi config set swarm:restoreFrom <KEY>` before the next `pulumi up`.

The layout is the one `swarm-node backup` writes: `<prefix>backups/<UTC>.tar.gz`, its
`.sha256` beside it, and `<prefix>backups/latest` holding `<key> <sha256>`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass

import boto3
from botocore.exceptions import ClientError

BUCKET_TYPE = "aws:s3/bucket:Bucket"


@dataclass
class Backup:
    key: str  # relative to the prefix, as swarm:restoreFrom takes it
    size: int
    last_modified: str
    latest: bool = False


class BackupError(Exception):
    pass


class NothingBackedUp(BackupError):
    """No backup and no latest pointer: a first morning, a new swarm is right."""


def bucket_of_stack(stack: str) -> tuple[str, str]:
    """(bucket, prefix) of a stack, from its state: the bucket survives the teardown."""
    exported = subprocess.run(
        ["pulumi", "stack", "export", "--stack", stack], capture_output=True, text=True, check=False
    )
    if exported.returncode != 0:
        raise BackupError(f"pulumi stack export --stack {stack} failed: {exported.stderr.strip()}")
    resources = json.loads(exported.stdout).get("deployment", {}).get("resources", [])
    buckets = [r for r in resources if r.get("type") == BUCKET_TYPE]
    if not buckets:
        raise BackupError(f"stack {stack} has no state bucket; pass --bucket and --prefix")
    return buckets[0]["outputs"]["bucket"], f"swarm/{stack}/"


def read_text(s3, bucket: str, key: str) -> str | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def latest_pointer(s3, bucket: str, prefix: str) -> tuple[str, str] | None:
    text = read_text(s3, bucket, f"{prefix}backups/latest")
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2:
        raise BackupError(f"s3://{bucket}/{prefix}backups/latest is not '<key> <sha256>'")
    return parts[0], parts[1]


def list_backups(s3, bucket: str, prefix: str) -> list[Backup]:
    pointer = latest_pointer(s3, bucket, prefix)
    backups = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}backups/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".tar.gz"):
                key = obj["Key"][len(prefix) :]
                backups.append(
                    Backup(
                        key,
                        obj["Size"],
                        obj["LastModified"].strftime("%Y-%m-%d %H:%M:%SZ"),
                        latest=pointer is not None and pointer[0] == key,
                    )
                )
    return sorted(backups, key=lambda b: b.key, reverse=True)


def verify(s3, bucket: str, prefix: str, key: str | None = None) -> str:
    """The sha256 of a backup that matches its .sha256 object (and the pointer, for latest)."""
    pointer = latest_pointer(s3, bucket, prefix)
    expected_by_pointer = None
    if key is None:
        if pointer is None:
            backups = list_backups(s3, bucket, prefix)
            if backups:
                raise BackupError(
                    f"s3://{bucket}/{prefix}backups/ holds backups (the newest: {backups[0].key}) but no latest: "
                    f"the morning would refuse to start. Pin one: pulumi config set swarm:restoreFrom {backups[0].key}"
                )
            raise NothingBackedUp(f"no s3://{bucket}/{prefix}backups/latest: nothing backed up yet")
        key, expected_by_pointer = pointer
    elif pointer is not None and pointer[0] == key:
        expected_by_pointer = pointer[1]
    digest = hashlib.sha256()
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}{key}")["Body"]
    except ClientError as error:
        raise BackupError(f"s3://{bucket}/{prefix}{key}: {error.response['Error']['Code']}") from error
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    got = digest.hexdigest()
    side = (read_text(s3, bucket, f"{prefix}{key}.sha256") or "").split()
    if not side:
        raise BackupError(f"s3://{bucket}/{prefix}{key}.sha256 is missing")
    if side[0] != got:
        raise BackupError(f"s3://{bucket}/{prefix}{key} has sha256 {got}, its .sha256 says {side[0]}")
    if expected_by_pointer and expected_by_pointer != got:
        raise BackupError(f"s3://{bucket}/{prefix}{key} has sha256 {got}, backups/latest says {expected_by_pointer}")
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["list", "verify"])
    parser.add_argument("key", nargs="?", help="backup to verify, e.g. backups/20261121T230000Z.tar.gz")
    parser.add_argument("--stack", help="read the bucket from this stack's state")
    parser.add_argument("--bucket")
    parser.add_argument("--prefix", help="key prefix of the stack, e.g. swarm/dev/")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (swarm:s3Endpoint)")
    args = parser.parse_args(argv)
    try:
        if args.bucket and args.prefix:
            bucket, prefix = args.bucket, args.prefix if args.prefix.endswith("/") else args.prefix + "/"
        elif args.stack:
            bucket, prefix = bucket_of_stack(args.stack)
        else:
            parser.error("give --stack, or --bucket and --prefix")
        s3 = boto3.client("s3", endpoint_url=args.endpoint_url)
        if args.action == "list":
            backups = list_backups(s3, bucket, prefix)
            if not backups:
                print(f"no backups under s3://{bucket}/{prefix}backups/")
            for b in backups:
                print(f"{'*' if b.latest else ' '} {b.key}  {b.size:>10}  {b.last_modified}")
        else:
            sha = verify(s3, bucket, prefix, args.key)
            print(f"ok {args.key or 'latest'} sha256 {sha}")
    except NothingBackedUp as error:
        print(f"backups: {error}", file=sys.stderr)
        return 3
    except BackupError as error:
        print(f"backups: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
