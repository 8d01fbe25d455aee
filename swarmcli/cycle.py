"""`scripts/swarm night` and `scripts/swarm morning`: the daily cycle of one environment.

The night: `pulumi destroy --exclude-protected` runs the backup hook on manager 0 first
(stop Docker, tar the Raft state, upload, verify, move `latest`), then removes everything
except the protected state bucket and its settings (a plain `pulumi destroy` refuses: the
bucket is protected, nothing is lost by accident); then the backups are listed, newest
first, and whether `latest` is tonight's.

The morning: the backup it will restore (the latest, or the one swarm:restoreFrom pins) is
verified first, and nothing is started if it does not verify; nothing backed up yet (a
first morning) and swarm:restoreFrom none go on to a new swarm. Then `pulumi up` creates
fresh machines at yesterday's manager addresses, `bootstrap` restores that backup with
--force-new-cluster (the join tokens, services, secrets, configs and networks are
yesterday's) and `reconcile` removes yesterday's nodes; `dockerHost` is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from botocore.exceptions import BotoCoreError, ClientError

from swarmcli import backups, kept, outputs, pulumicli
from swarmcli.errors import SwarmCliError
from swarmcli.progress import Progress

# A backup newer than this before the night started is tonight's (S3's clock and ours differ).
CLOCK_SKEW = dt.timedelta(minutes=10)


def preflight(progress: Progress) -> None:
    """The Pulumi CLI there, and an SSH agent that answers or none (see pulumicli)."""
    with progress.step("checking the Pulumi CLI and the SSH agent"):
        pulumicli.require()
        pulumicli.environment(progress.note)


def _tonight(latest: backups.Backup | None, started: dt.datetime) -> bool:
    if latest is None:
        return False
    taken = dt.datetime.strptime(latest.last_modified, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=dt.UTC)
    return taken >= started - CLOCK_SKEW


# The teardown's hooks, whose deletes run on manager 0 (or manager 1): the backup, the
# teardown mark and the retires. Machines you bring keep their leave hooks (each on itself).
NIGHT_HOOKS = ("-swarm-backup", "-swarm-teardown", "-swarm-retire-")


def forget_hooks(stack: str, progress: Progress) -> list[str]:
    """`--without-backup`: the hooks leave the state without running (`pulumi state delete`
    runs no delete and dials nothing), so the teardown needs no manager at all. A change
    of swarm:backupOnDestroy could not do it: its `up` must reach manager 0, and the
    teardown mark and the retires need an active manager there."""
    forgotten: list[str] = []
    hooks = _hooks(outputs.stack_resources(stack))
    for _ in range(len(hooks)):  # each deletion may take others with it: read the state again
        if not hooks:
            break
        urn = hooks[0]
        name = urn.rsplit("::", 1)[-1]
        with progress.step(f"forgetting {name} (its delete does not run)"):
            # --target-dependents: a retire's dependents (the joins, the backup) go with it.
            pulumicli.run(["state", "delete", "--yes", "--target-dependents", urn], stack)
        forgotten.append(name)
        hooks = _hooks(outputs.stack_resources(stack))
    return forgotten


def _hooks(resources: list[dict]) -> list[str]:
    commands = ("command:remote:Command", "command:local:Command")
    return [
        r["urn"]
        for r in resources
        if r.get("type") in commands and any(hook in r["urn"].rsplit("::", 1)[-1] for hook in NIGHT_HOOKS)
    ]


def night(
    stack: str, endpoint_url: str | None, progress: Progress, summary: dict, without_backup: bool = False
) -> None:
    """Tear the stack down after its backup, then say what the bucket holds (in `summary`)."""
    preflight(progress)
    started = dt.datetime.now(dt.UTC)
    if without_backup:
        progress.note("--without-backup: no backup, drain or retire; the morning restores the last backup")
        summary["forgotten"] = forget_hooks(stack, progress)
    with progress.step("pulumi destroy --exclude-protected (the backup first, then all but the bucket)"):
        pulumicli.run(["destroy", "--exclude-protected", "--yes"], stack, timeout=pulumicli.LONG, capture=False)
    summary["destroyed"] = True
    with progress.step("listing the backups"):
        bucket, prefix = backups.bucket_of_stack(stack)
        listed = backups.list_backups(backups.s3_client(endpoint_url), bucket, prefix)
    latest = next((b for b in listed if b.latest), None)
    summary.update(
        backups=[b.as_json() for b in listed[:5]],
        backupCount=len(listed),
        latest=latest.key if latest else None,
        latestIsTonights=_tonight(latest, started),
    )
    if latest is None:
        progress.note("no backups/latest: the next morning starts a new swarm (or refuses, if backups exist)")
    elif not summary["latestIsTonights"]:
        progress.note(f"latest is {latest.key}: no backup tonight (swarm:backupOnDestroy false, or nothing was up)")


def _verify_restore(stack: str, pinned: str, endpoint_url: str | None) -> dict:
    """The backup the morning restores, verified; raises when it does not verify."""
    try:
        bucket, prefix = backups.bucket_of_stack(stack)
        s3 = backups.s3_client(endpoint_url)
        key, sha = backups.verify_named(s3, bucket, prefix, None if pinned == "latest" else pinned)
    except backups.NothingBackedUp:
        return {"restore": "nothing backed up yet", "backup": None, "sha256": None}
    except (SwarmCliError, BotoCoreError, ClientError) as error:
        raise SwarmCliError(
            f"the backup to restore did not verify ({error}); nothing was started. Pick another: "
            f"scripts/swarm backups list --stack {stack}, then "
            f"pulumi config set --stack {stack} swarm:restoreFrom backups/<UTC>.tar.gz"
        ) from error
    return {"restore": "verified", "backup": key, "sha256": sha}


def morning(stack: str, endpoint_url: str | None, progress: Progress, summary: dict) -> None:
    """Verify what will be restored, then `pulumi up`, then read `dockerHost` (in `summary`)."""
    preflight(progress)
    with progress.step("checking that the config drops nothing kept through the night"):
        config = outputs.config_values(stack)
        problems = kept.dropped(outputs.stack_resources(stack), config)
    if problems:
        raise SwarmCliError("\n".join(p.message(stack) for p in problems))
    pinned = config.get("swarm:restoreFrom") or "latest"
    summary["restoreFrom"] = pinned
    if pinned == "none":
        progress.note("swarm:restoreFrom is none: a new swarm starts, nothing is restored")
        summary.update(restore="none", backup=None, sha256=None)
    else:
        with progress.step(f"verifying the backup to restore ({pinned})"):
            summary.update(_verify_restore(stack, pinned, endpoint_url))
        if summary["restore"] == "verified":
            progress.note(f"{summary['backup']} verified (sha256 {summary['sha256'][:12]}): bootstrap restores it")
        else:
            progress.note("nothing backed up yet: a new swarm starts")
    with progress.step("pulumi up (fresh machines, the restore, the joins, reconcile)"):
        pulumicli.run(["up", "--yes", "--skip-preview"], stack, timeout=pulumicli.LONG, capture=False)
    with progress.step("reading dockerHost"):
        summary["dockerHost"] = outputs.output_value(stack, "dockerHost")


def _run(verb: str, work, args: argparse.Namespace) -> dict:
    """`work` with a progress display; its JSON summary printed with --json, even on failure."""
    progress = Progress(verb)
    summary: dict = {"verb": verb, "stack": args.stack, "ok": False}
    try:
        work(args.stack, args.endpoint_url, progress, summary)
        summary["ok"] = True
    except Exception as error:
        summary["error"] = str(error) or type(error).__name__
        raise
    finally:
        summary.update(steps=progress.steps, seconds=progress.elapsed())
        if args.json:
            print(json.dumps(summary, indent=2))
    return summary


def command_night(args: argparse.Namespace) -> int:
    without = getattr(args, "without_backup", False)
    summary = _run("night", lambda *a: night(*a, without_backup=without), args)
    if not args.json:
        print(f"teardown of {args.stack} done; the backups:")
        for b in summary["backups"]:
            print(f"{'*' if b['latest'] else ' '} {b['key']}  {b['size']:>10}  {b['lastModified']}")
        if not summary["backups"]:
            print("  (none)")
    return 0


def command_morning(args: argparse.Namespace) -> int:
    summary = _run("morning", morning, args)
    if not args.json:
        print(summary["dockerHost"])
    return 0
