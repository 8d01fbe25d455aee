"""Where the swarm's backups go and what the morning restores: the backup target, the
backup hook, retention and pruning, a pinned backup, the state bucket (created or the
user's own), the hosts' S3 keys, and the directory for local backups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi

from components.settings.base import BACKUP_TARGETS, DEFAULTS, MIN_RETENTION_DAYS, NAMESPACE, Reader

_BACKUP_KEY = re.compile(r"^backups/[A-Za-z0-9._-]+\.tar\.gz$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Backups:
    target: str  # s3 | local | none
    on_destroy: bool
    retention_days: int
    keep: int
    restore_from: str
    restore_unsigned: bool
    state_bucket_name: str | None
    existing_bucket: str | None
    access_key_id: pulumi.Output[str] | None
    secret_access_key: pulumi.Output[str] | None
    mirror_access_key_id: pulumi.Output[str] | None  # hosts + s3: the mirror's own key, if given
    mirror_secret_access_key: pulumi.Output[str] | None
    directory: str | None
    autolock: bool


def read_backup_target(r: Reader, hosts_mode: bool) -> str:
    target = r.string("backupTarget") or DEFAULTS["backupTarget"]
    if target not in BACKUP_TARGETS:
        r.problem("backupTarget", f"must be s3, local or none (got {target!r})", "s3")
        return DEFAULTS["backupTarget"]
    if target != "s3" and not hosts_mode:
        r.problem(
            "backupTarget",
            f"is {target}, which is for machines you bring (swarm:hosts); on EC2 backups "
            "and the mirror cache go to the state bucket",
            "s3",
        )
    return target


def read_backups(r: Reader, config: pulumi.Config, stack: str, hosts_mode: bool, target: str) -> Backups:
    on_destroy = r.boolean("backupOnDestroy")
    autolock = r.boolean("autolock")
    retention = r.integer(
        "backupRetentionDays",
        "30",
        lambda v: MIN_RETENTION_DAYS <= v <= 3650,
        f"at least {MIN_RETENTION_DAYS} days (and at most 3650)",
    )
    keep = r.integer("backupKeep", "14", lambda v: 1 <= v <= 1000, "from 1 to 1000")
    restore_from = _read_restore_from(r, target)
    state_bucket_name, existing_bucket = _read_buckets(r, stack, target)
    access_key_id, secret_access_key = _read_host_keys(r, config, hosts_mode, target)
    mirror_key_id, mirror_secret = _read_mirror_keys(r, config, hosts_mode, target)

    # Kept as written ("~/.swarm/backups"): the helper expands it when it runs, so a
    # teardown by another user or from another checkout finds that user's directory,
    # where a path expanded here and frozen in the state would not be theirs.
    directory = r.string("backupDirectory") or DEFAULTS["backupDirectory"]
    if target != "local" and r.string("backupDirectory") not in (None, DEFAULTS["backupDirectory"]):
        r.problem("backupDirectory", f"is only used with swarm:backupTarget local (it is {target})", '""')
    if target == "none" and restore_from not in ("latest", "none"):
        r.problem("restoreFrom", "names a backup, but swarm:backupTarget is none", "none")
    restore_unsigned = r.boolean("restoreUnsigned")
    if restore_unsigned and restore_from in ("latest", "none"):
        # Only ever for one backup you name: never for whatever backups/latest points to.
        r.problem(
            "restoreUnsigned",
            f"is true, but swarm:restoreFrom is {restore_from}: it only lets the one backup you name there "
            "restore without a signature",
            "false",
        )
    return Backups(
        target=target,
        on_destroy=on_destroy,
        retention_days=retention,
        keep=keep,
        restore_from=restore_from,
        restore_unsigned=restore_unsigned,
        state_bucket_name=state_bucket_name,
        existing_bucket=existing_bucket,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        mirror_access_key_id=mirror_key_id,
        mirror_secret_access_key=mirror_secret,
        directory=directory if target == "local" else None,
        autolock=autolock,
    )


def _read_restore_from(r: Reader, target: str) -> str:
    restore_from = r.string("restoreFrom") or DEFAULTS["restoreFrom"]
    if restore_from not in ("latest", "none") and not _BACKUP_KEY.match(restore_from):
        r.problem("restoreFrom", f"must be latest, none or backups/<name>.tar.gz (got {restore_from!r})", "latest")
    elif restore_from != "latest" and target != "none":
        # Bootstrap only restores onto a fresh manager 0, but a pin left in place would
        # bring this backup (or a new swarm) back every morning.
        pulumi.log.warn(
            f"{NAMESPACE}:restoreFrom is {restore_from}: every fresh morning uses it until "
            f"'pulumi config rm {NAMESPACE}:restoreFrom'"
        )
    return restore_from


def _read_buckets(r: Reader, stack: str, target: str) -> tuple[str | None, str | None]:
    state_bucket_name = r.string("stateBucketName")
    if state_bucket_name and not _BUCKET.match(state_bucket_name):
        r.problem(
            "stateBucketName", f"is not a valid S3 bucket name (got {state_bucket_name!r})", f"my-company-swarm-{stack}"
        )
    existing_bucket = r.string("existingStateBucket")
    if existing_bucket and not _BUCKET.match(existing_bucket):
        r.problem("existingStateBucket", f"is not a valid S3 bucket name (got {existing_bucket!r})", "my-backups")
    if existing_bucket and state_bucket_name:
        r.problem(
            "stateBucketName",
            "names a bucket to create, but swarm:existingStateBucket says to use one that exists; keep one",
            '""',
        )
    if existing_bucket and target != "s3":
        r.problem("existingStateBucket", f"is not used with swarm:backupTarget {target}", '""')
    return state_bucket_name, existing_bucket


def _read_host_keys(
    r: Reader, config: pulumi.Config, hosts_mode: bool, target: str
) -> tuple[pulumi.Output[str] | None, pulumi.Output[str] | None]:
    """The hosts' own S3 keys: required with swarm:hosts and S3 backups, refused elsewhere."""
    for key in ("s3AccessKeyId", "s3SecretAccessKey"):
        present = r.raw(key) is not None
        secret_fix = f"pulumi config set --secret {NAMESPACE}:{key} <value>"
        if not hosts_mode and present:
            r.problems.append(
                f"{NAMESPACE}:{key} is for machines you bring (swarm:hosts); EC2 nodes use their instance "
                f"role; fix: pulumi config rm {NAMESPACE}:{key}"
            )
        elif hosts_mode and target == "s3" and not present:
            r.problems.append(
                f"{NAMESPACE}:{key} is required with swarm:hosts and swarm:backupTarget s3 (the hosts' "
                f"credentials for the state bucket, written on each host readable by root only); fix: {secret_fix}"
            )
        elif hosts_mode and target != "s3" and present:
            r.problems.append(
                f"{NAMESPACE}:{key} is not used with swarm:backupTarget {target}; "
                f"fix: pulumi config rm {NAMESPACE}:{key}"
            )
    if not (hosts_mode and target == "s3"):
        return None, None
    return config.get_secret("s3AccessKeyId"), config.get_secret("s3SecretAccessKey")


MIRROR_KEYS = ("mirrorS3AccessKeyId", "mirrorS3SecretAccessKey")


def _read_mirror_keys(
    r: Reader, config: pulumi.Config, hosts_mode: bool, target: str
) -> tuple[pulumi.Output[str] | None, pulumi.Output[str] | None]:
    """The mirror's own S3 key on machines you bring: optional, both or neither. (On EC2 the
    program makes the mirror's key; without one here the mirror caches on the manager.)"""
    present = [key for key in MIRROR_KEYS if r.raw(key) is not None]
    if not present:
        return None, None
    if not hosts_mode:
        for key in present:
            r.problems.append(
                f"{NAMESPACE}:{key} is for machines you bring (swarm:hosts); on EC2 the program makes the "
                f"mirror's key itself; fix: pulumi config rm {NAMESPACE}:{key}"
            )
        return None, None
    if target != "s3":
        for key in present:
            r.problems.append(
                f"{NAMESPACE}:{key} is not used with swarm:backupTarget {target} (the mirror caches on the "
                f"manager); fix: pulumi config rm {NAMESPACE}:{key}"
            )
        return None, None
    for key in set(MIRROR_KEYS) - set(present):
        r.problems.append(
            f"{NAMESPACE}:{key} is missing: the mirror's key needs both {' and '.join(MIRROR_KEYS)}; "
            f"fix: pulumi config set --secret {NAMESPACE}:{key} <value>"
        )
    return config.get_secret(MIRROR_KEYS[0]), config.get_secret(MIRROR_KEYS[1])
