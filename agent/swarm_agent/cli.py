"""swarm-node: the verbs Pulumi runs on a node (as root, by full path, over SSH).

One table of verbs, their arguments, and the module that does each. Settings come only
from /etc/swarm/env, so a remote command can never be steered by the caller's
environment. Every verb is idempotent, every wait is bounded, and a join token, key or
unlock key is only ever read from stdin or docker's stdout and never reaches an argv.
A verb that fails prints one line, `swarm-node: <what happened and what to do>`, on
stderr and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
import traceback

from swarm_agent import logship
from swarm_agent.keytool import KeytoolError
from swarm_agent.run import AgentError

EPILOG = "Run as root. What each verb does: the README, 'On the nodes'. Example: sudo swarm-node probe"
# The verbs a machine's end may follow (a failed morning is destroyed, a backup precedes
# the night's teardown): what they said is shipped to CloudWatch Logs as soon as they end,
# not at the next run of the logs timer, which that machine may not live to see.
SHIPPED_AFTER = frozenset(
    ("bootstrap", "backup", "retire", "join", "reconcile", "group-join", "leave", "data-release", "teardown-mark")
)


def _timeout(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--timeout wants whole seconds, got '{text}'")
    return int(text)


def _seconds(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"wants whole seconds, got '{text}'")
    return int(text)


def _verbs(sub) -> None:
    """verb -> (module, function), with its arguments."""

    def verb(name: str, target: str, help_text: str, timeout: int | None = None):
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(target=target)
        if timeout is not None:
            parser.add_argument("--timeout", type=_timeout, default=timeout, help=f"seconds (default {timeout})")
        return parser

    verb("wait-ready", "ready:wait_ready", "wait until user-data has finished and dockerd answers", 300)
    p = verb("bootstrap", "bootstrap:bootstrap", "manager 0: nothing | join the live swarm | restore | init")
    p.add_argument("--restore", default="latest", help="latest, none or backups/<name>.tar.gz")
    p.add_argument("--allow-unsigned", action="store_true", help="the backup --restore names may lack a .meta")
    p.add_argument("--autolock", choices=("true", "false"), default=None)
    verb("tokens", "membership:tokens", "print the join tokens (and unlock key) as one JSON line")
    verb("probe", "membership:probe", "a manager's answer to a bootstrapping manager 0 (JSON)")
    p = verb("join", "membership:join", "join the swarm; the token comes on stdin")
    p.add_argument("role", choices=("manager", "worker"))
    p.add_argument("leader", help="HOST:PORT of a manager")
    p = verb("reconcile", "nodes:reconcile", "every named node Ready in its role; stale ones removed", 300)
    p.add_argument("--managers", required=True, help="names,...")
    p.add_argument("--workers", default="", help="names,...")
    p.add_argument("--data", default="", help="name=label,...: the swarm.data label of each node with a data volume")
    p.add_argument("--groups", default="", help="names,...: worker groups, each to reach its ASG's desired count")
    p = verb("retire", "nodes:retire", "drain, demote (within quorum) and remove a node", 120)
    p.add_argument("--name", required=True)
    p.add_argument("--addr", required=True)
    p = verb("teardown-mark", "nodes:teardown_mark", "mark the swarm as being torn down (after the backup)")
    p.add_argument("--clear", action="store_true")
    verb("converge", "nodes:converge", "wait until every service runs its desired replicas", 300)
    verb("authorize-key", "ready:authorize_key", "add the OpenSSH public key on stdin to the SSH user's keys")
    verb("install-backup-keys", "keys:install_backup_keys", "stdin: the backups' signing key (hex)")
    verb("store-check", "backup:store_check", "write, read back and delete an object in the store, as tonight will")
    p = verb("backup", "backup:backup", "stop dockerd, back up the swarm's state, sign, upload, prune")
    p.add_argument("--stdout", action="store_true", help="write the tar.gz to stdout (backup target local)")
    p.add_argument("--keep", action="append", default=[], help="a backup pruning must spare")
    p.add_argument("--handover", action="store_true", help="a lone manager that goes: nothing once the teardown began")
    verb("stage-restore", "bootstrap:stage_restore", "stdin: a tar of backups/ pushed from the Pulumi machine")
    verb("leave", "membership:leave", "leave the swarm and remove what this swarm put here")
    p = verb("mirror-deploy", "mirror:mirror_deploy", "deploy the registry mirror stack (stdin: its files)", 180)
    p.add_argument("--image", default="registry:2")
    p = verb("registry-auth", "registry_auth:registry_auth", "fresh ECR credentials in the services on ECR")
    p.add_argument("--now", action="store_true", help="on this manager, leader or not (Pulumi's morning step)")
    p = verb("data-mount", "data:data_mount", "mount this node's data volume at /var/data (formatted if empty)", 300)
    p.add_argument("--volume", help="the EBS volume ID (vol-...)")
    p.add_argument("--name", help="the volume's name (swarm:dataVolumes[].name)")
    p.add_argument("--boot", action="store_true", help="at boot: the volume the last data-mount recorded")
    p.add_argument("--existing", action="store_true", help="a host's own /var/data (swarm:hosts[].data): check only")
    verb("data-release", "data:data_release", "stop dockerd and its tasks, then unmount /var/data")
    p = verb("shared-mount", "shared:shared_mount", "mount the stack's EFS file system at /var/data/shared", 300)
    p.add_argument("--fs", required=True, help="the EFS file system ID (fs-...)")
    p.add_argument("--region", required=True, help="its region (eu-west-1)")
    verb("shared-release", "shared:shared_release", "stop dockerd, unmount /var/data/shared and forget it")
    verb("group-join", "group_join:group_join", "a worker group's machine at boot: claim its instance, join")
    p = verb("groups-watch", "groups:groups_watch", "the leader: label group nodes AWS backs, drain on scale-in")
    once = p.add_mutually_exclusive_group()
    once.add_argument("--configure", metavar="JSON", help='{"groups": [{"name", "asg", "hook", "labels"}]}; timer on')
    once.add_argument("--unconfigure", action="store_true", help="timer off, the groups forgotten")
    verb("cleanup-images", "ready:cleanup_images", "prune unused images older than 24h (swarm.keep spared)")
    p = verb("docker-service", "ready:docker_service", "start | stop | restart | enable dockerd and its socket")
    p.add_argument("action", choices=("start", "stop", "restart", "enable"))
    p = verb("logs-ship", "logship:logs_ship", "send the journal and the verbs' lines to CloudWatch Logs (its timer)")
    p.add_argument("--wait", type=_seconds, default=60, help="seconds to wait for another shipper (default 60)")
    verb("health-report", "health:health_report", "a manager: quorum, nodes down, backup age to CloudWatch (its timer)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="swarm-node", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    _verbs(top.add_subparsers(dest="verb", metavar="VERB"))
    return top


def _end_cleanly(signum, frame) -> None:
    # A dropped SSH session (SIGHUP) or a kill (SIGTERM) unwinds through every `finally`:
    # dockerd is started again and the temporary copy of the swarm's keys is removed.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    os.umask(0o022)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _end_cleanly)
    args = parser().parse_args(argv)
    if not getattr(args, "target", None):
        parser().print_help(sys.stderr)
        return 2
    module_name, function = args.target.split(":")
    module = importlib.import_module(f"swarm_agent.{module_name}")
    # Every line the verb writes on stderr reaches the journal as well, marked with the
    # verb, so it is shipped with the node's logs; stdout (tokens, a backup) is untouched.
    mirror = logship.Mirror(sys.stderr, args.verb)
    sys.stderr = mirror
    try:
        return _run(getattr(module, function), args, mirror)
    finally:
        if args.verb in SHIPPED_AFTER:
            logship.flush(args.verb)  # bounded; a failure is a note, the exit code stands
        sys.stderr = mirror.close()


def _run(verb_function, args, mirror: logship.Mirror) -> int:
    # Run by Pulumi or by hand, a verb says in the journal when it started and how it
    # ended, so every run has its stream (a bootstrap that succeeds may print nothing on
    # stderr); a timer's unit needs neither, systemd logs its start and end itself.
    started = time.monotonic()
    if not mirror.journal_only:
        mirror.journal(f"{args.verb}: started", logship.INFO)
    code = 1
    try:
        verb_function(args)
        code = 0
    except (AgentError, KeytoolError) as error:
        mirror.error(f"swarm-node: {error}")
    except Exception:
        # A bug: Python prints the traceback on stderr once main has ended, after the
        # shipping above; the journal gets it now, so that it is shipped with the rest.
        mirror.journal(traceback.format_exc())
        raise
    finally:
        if not mirror.journal_only:
            ended, priority = ("done", logship.INFO) if code == 0 else ("failed", logship.ERR)
            mirror.journal(f"{args.verb}: {ended} in {time.monotonic() - started:.1f} s", priority)
    return code
