"""`scripts/swarm` (`python -m swarmcli`): the verbs table and the flags every verb shares.

Shaped as the docker and pulumi CLIs are: one entry point, noun-verb subcommands
(`backups list`), the same global flags on every verb (`--stack`, `--json`, before or
after the verb), an example in every `--help`. The stack is `--stack`, or the first
argument where the old scripts took it (`scripts/swarm status dev`), or $PULUMI_STACK.
Results go to stdout (`--json` for scripts); progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from swarmcli import addresses, ami, backups, context, cycle, logs, roll, status
from swarmcli.errors import SwarmCliError, UsageError

PROG = "scripts/swarm"
EXIT_CODES = "exit codes: 0 done, 1 failed (the reason on stderr), 2 usage, 3 nothing backed up yet (backups verify)"


def _no_options(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    examples: tuple[str, ...]
    run: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None] = _no_options
    positional_stack: bool = True  # `VERB STACK` as the old scripts took it
    needs_stack: bool = True


def _leader_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outputs", metavar="FILE", help="the stack's outputs as JSON, instead of the Pulumi CLI")
    parser.add_argument("--identity", metavar="KEY", help="your SSH private key, when the stack uses your own key pair")


def _status_options(parser: argparse.ArgumentParser) -> None:
    _leader_options(parser)
    parser.add_argument("--html", metavar="FILE", help="also write the view as one self-contained page")


def _context_options(parser: argparse.ArgumentParser) -> None:
    _leader_options(parser)
    parser.add_argument("--name", help="the docker context's name (default swarm-<stack>)")


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", nargs="?", metavar="KEY", help="a backup, e.g. backups/20261121T230000Z.tar.gz")
    parser.add_argument("--bucket", metavar="B", help="the state bucket, instead of reading it from the stack")
    parser.add_argument("--prefix", metavar="P", help="the stack's key prefix in it, e.g. swarm/dev/")
    _endpoint_option(parser)


def _endpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", metavar="URL", help="an S3-compatible endpoint (swarm:s3Endpoint)")


def _night_options(parser: argparse.ArgumentParser) -> None:
    _endpoint_option(parser)
    parser.add_argument(
        "--without-backup",
        action="store_true",
        help="no backup, drain or retire tonight: for a manager 0 that cannot be reached or is out of the swarm "
        "(the morning restores the last backup; today's changes are lost)",
    )


def _drill_options(parser: argparse.ArgumentParser) -> None:
    _store_options(parser)
    parser.add_argument("--on", default="bed", metavar="WHERE", help="bed (default) or ssh://user@host[:port]")
    parser.add_argument("--identity", metavar="KEY", help="--on ssh://: the SSH private key file")
    parser.add_argument("--signing-key-file", metavar="FILE", help="the stack's backup signing key (hex), not --stack")


def _logs_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_argument_group("which streams (--node, with one of --service, --verb, --journal)")
    which.add_argument("--node", metavar="NAME", help="only this node's, e.g. swarm-dev-manager-0")
    which.add_argument("--service", metavar="NAME", help="only its tasks' containers (web: web.1.<task id>)")
    # dest: args.verb is the parsed Verb itself
    which.add_argument(
        "--verb", dest="agent_verb", metavar="NAME", help="only the agent's verb: bootstrap, backup, ..."
    )
    which.add_argument("--journal", action="store_true", help="only the nodes' systemd journals")
    when = parser.add_argument_group("which events (oldest first)")
    when.add_argument("--since", metavar="WHEN", help="30m, 6h, 2d ago, or ISO 8601 (UTC unless given); default 24h")
    when.add_argument("--until", metavar="WHEN", help="as --since; default now")
    when.add_argument("--grep", metavar="TEXT", help="only events holding TEXT (a CloudWatch filter term)")
    when.add_argument("--limit", type=int, default=logs.DEFAULT_LIMIT, metavar="N", help="at most N (default 1000)")
    where = parser.add_argument_group(
        "where, instead of the stack's config (with --group and --region: no Pulumi CLI needed)"
    )
    where.add_argument("--group", metavar="G", help="the log group (default /swarm/<project>/<stack>)")
    where.add_argument("--region", metavar="R", help="its region (default the stack's aws:region)")
    where.add_argument("--endpoint", metavar="URL", help="CloudWatch Logs' endpoint (default swarm:logsEndpoint)")


def _adopt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="say what it would adopt, change nothing")


def _release_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="say which addresses it would release, release none")


def _roll_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", choices=("workers", "managers"), help="roll only these")
    parser.add_argument("--dry-run", action="store_true", help="print the order (the plan), replace nothing")


VERBS = (
    Verb(
        "status",
        "the nodes, services, backups, this morning's bootstrap and the mirror (read-only)",
        (
            "scripts/swarm status dev",
            "scripts/swarm status --stack dev --json | jq '.nodes[] | select(.state != \"ready\")'",
            "scripts/swarm status dev --html status.html",
        ),
        status.command,
        _status_options,
    ),
    Verb(
        "context",
        "a docker context reaching the leader, host keys checked strictly",
        ("scripts/swarm context dev && docker --context swarm-dev node ls",),
        context.command,
        _context_options,
    ),
    Verb(
        "logs",
        "the stack's logs in CloudWatch Logs (containers, journals, the agent's verbs), also after the teardown",
        (
            "scripts/swarm logs dev --verb bootstrap --since 6h",
            "scripts/swarm logs --stack dev --service web --since 2026-12-07T06:00 --until 2026-12-07T07:00",
            "scripts/swarm logs dev --node swarm-dev-manager-0 --journal --grep dockerd --json | jq -r .message",
            "scripts/swarm logs --group /swarm/swarm/dev --region eu-west-1 --endpoint http://10.0.0.5:5000",
        ),
        logs.command,
        _logs_options,
        needs_stack=False,
    ),
    Verb(
        "roll",
        "replace the machines one at a time: workers, managers, manager 0 last",
        ("scripts/swarm roll dev --dry-run --json", "scripts/swarm roll --stack dev --only workers"),
        roll.command,
        _roll_options,
    ),
    Verb(
        "night",
        "the nightly teardown: the backup, then all but the protected bucket; the backups listed",
        (
            "scripts/swarm night --stack dev",
            "PULUMI_STACK=dev scripts/swarm night --json | jq .latest",
            "scripts/swarm night --stack dev --without-backup",
        ),
        cycle.command_night,
        _night_options,
    ),
    Verb(
        "morning",
        "the morning rebuild: verify the backup to restore, pulumi up, print dockerHost",
        (
            "scripts/swarm morning --stack dev",
            "pulumi config set --stack dev swarm:restoreFrom backups/20261121T190000Z.tar.gz"
            " && scripts/swarm morning --stack dev",
        ),
        cycle.command_morning,
        _endpoint_option,
    ),
    Verb(
        "adopt-ami",
        "move the stack's pinned AMI (and so its Docker engine) to SSM's newest, for the next machines",
        ("scripts/swarm adopt-ami dev --dry-run", "scripts/swarm adopt-ami --stack dev && scripts/swarm roll dev"),
        ami.command,
        _adopt_options,
    ),
    Verb(
        "release-addresses",
        "release the Elastic IPs no manager uses any more (after fewer managers, or elasticIps off)",
        ("scripts/swarm release-addresses dev --dry-run", "scripts/swarm release-addresses --stack dev --json"),
        addresses.command,
        _release_options,
    ),
)

BACKUP_VERBS = (
    Verb(
        "list",
        "the backups in the state bucket, newest first, * marks latest",
        (
            "scripts/swarm backups list --stack dev",
            "scripts/swarm backups list --bucket swarm-dev-state --prefix swarm/dev/ --json",
        ),
        backups.command_list,
        _store_options,
        positional_stack=False,
        needs_stack=False,
    ),
    Verb(
        "verify",
        "download a backup (default: latest) and check its sha256; exit 3: nothing backed up yet",
        (
            "scripts/swarm backups verify --stack dev",
            "scripts/swarm backups verify backups/20261121T230000Z.tar.gz --stack dev --json",
        ),
        backups.command_verify,
        _store_options,
        positional_stack=False,
        needs_stack=False,
    ),
    Verb(
        "drill",
        "check a backup as the morning does, restore it into a sealed throwaway Docker that starts none of its "
        "tasks, list what it holds",
        (
            "scripts/swarm backups drill --stack dev",
            "scripts/swarm backups drill --stack dev --on ssh://admin@drill.example --json",
        ),
        backups.command_drill,
        _drill_options,
        positional_stack=False,
        needs_stack=False,
    ),
)


def _global_flags(parser: argparse.ArgumentParser) -> None:
    """--stack and --json on every parser, defaults suppressed so that a flag given before
    the verb is not overwritten by the verb's parser."""
    group = parser.add_argument_group("global flags (every verb, before or after it)")
    group.add_argument("--stack", "-s", default=argparse.SUPPRESS, metavar="STACK", help="default: $PULUMI_STACK")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")


def _add_verb(subparsers, verb: Verb, path: str) -> argparse.ArgumentParser:
    examples = "\n".join(f"  {line}" for line in verb.examples)
    parser = subparsers.add_parser(
        verb.name,
        help=verb.summary,
        description=verb.summary,
        epilog=f"examples:\n{examples}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if verb.positional_stack:
        parser.add_argument("stack_argument", nargs="?", metavar="STACK", help="the stack, as --stack")
    verb.options(parser)
    _global_flags(parser)
    parser.set_defaults(verb=verb, command_path=path)
    return parser


def build_parser() -> argparse.ArgumentParser:
    examples = "\n".join(f"  {v.examples[0]}" for v in (*VERBS[:2], BACKUP_VERBS[0], *VERBS[2:]))
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The operator CLI of a stack's swarm: see it, reach it, its backups and logs, roll it, "
        "the daily cycle.",
        epilog=f"examples:\n{examples}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_flags(parser)
    verbs = parser.add_subparsers(title="verbs", metavar="VERB", required=True)
    for verb in VERBS[:2]:
        _add_verb(verbs, verb, verb.name)
    noun = verbs.add_parser(
        "backups",
        help="list, verify or drill the stack's backups (they outlive the teardown)",
        description="The stack's swarm backups in its state bucket: list, verify, drill.",
        epilog="examples:\n" + "\n".join(f"  {v.examples[0]}" for v in BACKUP_VERBS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_flags(noun)
    backup_verbs = noun.add_subparsers(title="verbs", metavar="VERB", required=True)
    for verb in BACKUP_VERBS:
        _add_verb(backup_verbs, verb, f"backups {verb.name}")
    for verb in VERBS[2:]:
        _add_verb(verbs, verb, verb.name)
    return parser


def resolve(args: argparse.Namespace) -> None:
    """The flags every verb reads, with their defaults: the stack (required by most) and --json."""
    given, positional = getattr(args, "stack", None), getattr(args, "stack_argument", None)
    if given and positional and given != positional:
        raise UsageError(f"two stacks given: {positional} and --stack {given}")
    args.stack = positional or given or os.environ.get("PULUMI_STACK") or None
    args.json = getattr(args, "json", False)
    if args.verb.needs_stack and not args.stack:
        raise UsageError("no stack: pass --stack STACK (or set $PULUMI_STACK)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    said = f"swarm {args.command_path}"
    try:
        resolve(args)
        return args.verb.run(args)
    except backups.NothingBackedUp as error:
        print(f"{said}: {error}", file=sys.stderr)
        return 3
    except UsageError as error:
        print(f"{said}: {error}", file=sys.stderr)
        return 2
    except SwarmCliError as error:
        print(f"{said}: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        print(f"{said}: S3: {error}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as error:
        print(f"{said}: {error}", file=sys.stderr)
        return 1
