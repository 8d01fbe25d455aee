"""Swarm formation over SSH: the remote commands that turn machines into one swarm.

It knows nothing of EC2: it receives `SwarmNode`s (where to connect, which address the
node advertises, what changes when the machine is replaced), installs the node agent on
them (components/agent.py) and runs its verbs (`swarm-node`, agent/swarm_agent/cli.py)
in this order:

    ready (every node: user-data waited for, the agent installed, Docker waited for)
    -> [data: the node's kept volume mounted at /var/data]
    -> probe (the other managers) -> [stage: a local backup pushed]
    -> bootstrap (manager 0: nothing | join the live swarm | restore | init) -> tokens
    -> manager joins, one at a time -> worker joins, in parallel
    -> [groups: the worker join token to SSM, the Auto Scaling groups, the managers' watcher]
    -> reconcile (pinned nodes by name, group nodes by label)
    -> teardown marker -> backup -> [registry-auth: fresh ECR credentials in the services]

Beside that chain, every node has a `retire` command on a manager that stays (manager 0,
or manager 1 for manager 0 itself): its `delete` drains the node, demotes it if it is a
manager (never below quorum) and removes it from the swarm, so a node that goes during
the day (replaced, scaled in) leaves cleanly before its machine is deleted; Pulumi
deletes the retire first because it depends on the machine. Machines the user brings
also get a `leave` command on the node itself, which leaves them clean.

Destroy runs this backwards: the backup first, then the teardown marker (after which
every retire is a no-op: a teardown needs no draining), then the nodes leave (machines
the user brings) and the machines go (EC2). The backup goes to S3 from manager 0, or
(`local`) through `scripts/swarm_backup_local.py` to the machine running Pulumi, which
also pushes it back before the next bootstrap.

Never a second swarm: before manager 0 initialises or restores, each other manager's
`probe` says whether it is in a swarm with quorum; if one is, bootstrap joins it (the
probe carries that swarm's manager join token). So replacing manager 0 during the day
keeps today's swarm, and a restore happens only when no manager of the environment is
alive.

Join tokens are secrets end to end: `tokens` and `probe` run with logging off and secret
outputs, the values derived from their stdout are wrapped in `Output.secret`, and joins
and bootstrap receive them on stdin, never in a command string (a failed command's
error prints it).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

import pulumi
import pulumi_random as random
from pulumi_command import local, remote

from agent.swarm_agent import contract
from components.agent import agent_bundle, agent_digest, install_command
from components.hostkeys import known_hosts_lines
from components.payload import NODE_CLI
from components.settings import BACKUP_DIAL_ERROR_LIMIT, BOOT_DIAL_ERROR_LIMIT, DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT

SWARM_PORT = 2377
READY_TIMEOUT = 900
# Waits (bounded) for user-data to finish: it leaves /etc/swarm/ready, or /etc/swarm/failed
# with the line that broke; it exits the shell on either failure.
WAIT_USER_DATA = (
    f"i=0; while [ $i -lt {READY_TIMEOUT} ]; do "
    'if [ -e /etc/swarm/failed ]; then echo "user-data failed: $(cat /etc/swarm/failed)" >&2; '
    "echo 'see /var/log/swarm-user-data.log on the node' >&2; exit 1; fi; "
    "[ -e /etc/swarm/ready ] && break; i=$((i+1)); sleep 1; done; "
    "if [ ! -e /etc/swarm/ready ]; then "
    f"echo 'user-data did not finish within {READY_TIMEOUT}s (no /etc/swarm/ready)' >&2; exit 1; fi"
)


# Machines the user brings run user-data over SSH: a root-only copy of the script, run with
# stdin closed (apt, dnf or docker reading stdin would otherwise eat the rest of a script
# piped into `bash -s`).
PROVISION = """sudo sh -c 'umask 077; f=$(mktemp) || exit 1; trap "rm -f $f" EXIT; cat >"$f" && bash "$f" </dev/null'"""

# A machine the user brings keeps its own host key: read it, to export it.
READ_HOST_KEY = "cat /etc/ssh/ssh_host_ed25519_key.pub"

# Run by local.Commands from the project directory with the python3 on PATH (stdlib only).
LOCAL_BACKUP = "scripts/swarm_backup_local.py"
LOCAL_KEY_ENV = "SWARM_SSH_PRIVATE_KEY"


def node_cli(*args: str) -> str:
    return " ".join(["sudo", NODE_CLI, *(shlex.quote(a) for a in args)])


def ssh_connection(
    node: SwarmNode, user: pulumi.Input[str], private_key: pulumi.Input[str], dial_error_limit: int = DIAL_ERROR_LIMIT
) -> remote.ConnectionArgs:
    """pulumi-command's connection to `node`, checking its host key whenever it is known:
    whatever else answers at the address must not receive the keys, tokens and backups."""
    return remote.ConnectionArgs(
        host=node.connect_host,
        port=node.port,
        user=node.user or user,
        private_key=private_key,
        host_key=node.host_key,
        dial_error_limit=dial_error_limit,
        per_dial_timeout=PER_DIAL_TIMEOUT,
    )


@dataclass
class NodeData:
    """The node's data at /var/data: a kept volume attached to its machine (EC2:
    components/data.py), or what a host the user brings already holds there (no volume)."""

    label: str  # the node's swarm.data label: what a stack pins a service to
    volume_id: pulumi.Input[str] | None = None  # how the node finds the disk (device names are not stable)
    attachment: pulumi.Resource | None = None  # replaced with the machine: the mount's trigger


@dataclass
class SwarmNode:
    """A machine to put into the swarm, wherever it comes from."""

    name: str  # hostname the node has; reconcile matches on it
    role: str  # "manager" | "worker"
    connect_host: pulumi.Input[str]  # where Pulumi's SSH goes
    private_ip: pulumi.Input[str]  # what the node advertises to the swarm
    replaced_by: list[pulumi.Input[str]] = field(default_factory=list)  # changes when the machine is new
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    user: pulumi.Input[str] | None = None
    port: int = 22
    # The advertised address survives the machine (a pinned manager, a host the user
    # brings): its successor cannot exist beside it, so it goes first (delete before replace).
    pinned: bool = False
    # Machines the user brings: the user-data to run over SSH (secret), after the node's leave.
    provision: pulumi.Input[str] | None = None
    # EC2: the public half of the stable host key cloud-init gave it (see hostkeys.py);
    # None: a machine the user brings keeps its own, which is read and exported.
    host_public_key: pulumi.Input[str] | None = None
    # Where clients reach it (known_hosts names); the connect address and the private one.
    addresses: list[pulumi.Input[str]] = field(default_factory=list)
    # What Pulumi's SSH checks the node's host key against ("ssh-ed25519 AAAA..."): the
    # formation sets it, from host_public_key or, on an own host, from its first read.
    host_key: pulumi.Input[str] | None = None
    # swarm:dataVolumes: mounted at /var/data before the node bootstraps or joins.
    data: NodeData | None = None


@dataclass
class SwarmFormationArgs:
    managers: list[SwarmNode]
    workers: list[SwarmNode]
    ssh_user: pulumi.Input[str]
    ssh_private_key: pulumi.Input[str]
    # The key every machine accepts from its first boot (the generated one on EC2): the
    # `ready` checks use it, and authorize `authorized_key` (your own, if you switched to
    # it) before anything else connects with `ssh_private_key`.
    operator_key: pulumi.Input[str] | None = None
    authorized_key: pulumi.Input[str] | None = None
    restore_from: str = "latest"
    restore_unsigned: bool = False  # the backup restore_from names may lack a signed .meta
    backup_on_destroy: bool = True
    backup_target: str = "s3"  # s3 | local | none
    backup_directory: str | None = None  # local: on the machine running Pulumi
    state_prefix: str = ""  # local: the layout under backup_directory, as in S3
    backup_keep: int = 14
    # Machines that outlive `pulumi destroy` (swarm:hosts) leave the swarm after the backup.
    leave_on_destroy: bool = False
    # swarm:autolock: managers restart locked; the unlock key is exported (secret).
    autolock: bool = False
    # swarm:ecrRefresh: fresh ECR credentials in the services at the end of each formation.
    ecr_refresh: bool = False
    # swarm:sharedFiles: the EFS file system every node mounts at /var/data/shared (its ID
    # carries the mount targets and the NFS rule as dependencies), and the stack's region.
    shared_files: pulumi.Input[str] | None = None
    region: str | None = None
    # swarm:workerGroups (components/groups.py): made from the worker join token once it is
    # read (the token to SSM, then the Auto Scaling groups); what the managers' watcher is
    # told (`groups-watch --configure`), and the groups' names reconcile counts by label.
    worker_groups: Callable[[pulumi.Output[str]], list[pulumi.Resource]] | None = None
    groups_config: str = ""
    group_names: list[str] = field(default_factory=list)


class SwarmFormation(pulumi.ComponentResource):
    worker_join_token: pulumi.Output[str]
    manager_join_token: pulumi.Output[str]
    unlock_key: pulumi.Output[str]
    leader_address: pulumi.Output[str]
    bootstrap_result: pulumi.Output[str]
    reconcile: remote.Command
    leader: SwarmNode

    def __init__(self, name: str, args: SwarmFormationArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("swarm:index:SwarmFormation", name, None, opts)
        if not args.managers:
            raise ValueError("a swarm needs at least one manager")
        self._args = args
        self._delivery: tuple[str, pulumi.Input[str]] | None = None
        self.leader = leader = args.managers[0]
        self.leader_address = pulumi.Output.concat(leader.private_ip, f":{SWARM_PORT}")

        nodes = args.managers + args.workers
        self._pin_host_keys(name, nodes)
        self.leaves = self._leaves(name) if args.leave_on_destroy else {}
        self.provisions = {node.name: self._provision(name, node) for node in nodes if node.provision is not None}
        # Each node's chain before it bootstraps or joins: ready, then its data volume, then
        # the shared files (they sit on /var/data).
        ready = {node.name: self._shared(name, node, self._data(name, node, self._ready(name, node))) for node in nodes}
        self.retires = self._retires(name, ready)
        self.signing = self._signing_keys(name, ready)
        self.known_hosts = self._host_keys()
        self.bootstrap = self._bootstrap(name, ready)
        self.bootstrap_result = self.bootstrap.stdout.apply(_bootstrap_result)

        tokens = self._command(
            f"{name}-tokens",
            leader,
            create=node_cli("tokens"),
            depends_on=[self.bootstrap],
            secret=True,
            # Read again when autolock is switched (the unlock key appears or goes).
            triggers=[*leader.replaced_by, "autolock" if args.autolock else "no-autolock"],
        )
        parsed = tokens.stdout.apply(_parse_tokens)
        self.worker_join_token = pulumi.Output.secret(parsed.apply(lambda t: t["worker"]))
        self.manager_join_token = pulumi.Output.secret(parsed.apply(lambda t: t["manager"]))
        self.unlock_key = pulumi.Output.secret(parsed.apply(lambda t: t["unlock"]))

        # Managers one at a time: each join changes the Raft membership, and two
        # concurrent joins can leave the cluster without quorum while both catch up.
        previous: pulumi.Resource = tokens
        self.joins: list[remote.Command] = []
        for node in args.managers[1:]:
            join = self._join(name, node, "manager", [previous, ready[node.name], *self._retired(node)])
            self.joins.append(join)
            previous = join
        # Workers do not vote: all at once, as soon as their machine is ready.
        for node in args.workers:
            self.joins.append(self._join(name, node, "worker", [tokens, ready[node.name], *self._retired(node)]))

        self.groups = self._groups(name, ready)
        self.reconcile = self._reconcile(name, nodes)

        self._night_hooks(name)
        if args.ecr_refresh:
            # Each morning the restored services hold last night's expired ECR credentials;
            # refreshed once the swarm is formed and tonight's hooks are in place, so an ECR
            # that fails (unreachable, a right missing) fails the `up` with nothing else left
            # undone; until then the tasks on ECR retry their pulls (registry_auth.py).
            hooks = [self.reconcile, self.teardown, *([self.backup] if self.backup else [])]
            self._command(f"{name}-registry-auth", leader, create=node_cli("registry-auth", "--now"), depends_on=hooks)

        self.register_outputs(
            {
                "leader_address": self.leader_address,
                "worker_join_token": self.worker_join_token,
                "manager_join_token": self.manager_join_token,
                "unlock_key": self.unlock_key,
                "known_hosts": self.known_hosts,
            }
        )

    def _groups(self, name: str, ready: dict[str, remote.Command]) -> list[pulumi.Resource]:
        """The worker groups, once the token is known, and on every manager the watcher that
        labels their nodes and drains those AWS takes away (whichever manager leads acts)."""
        args = self._args
        if args.worker_groups is None:
            return []
        watchers = [
            self._command(
                f"{name}-groups-watch-{i}",
                manager,
                create=node_cli("groups-watch", "--configure", args.groups_config),
                delete=node_cli("groups-watch", "--unconfigure"),
                depends_on=[ready[manager.name]],
                triggers=[*manager.replaced_by, args.groups_config],
            )
            for i, manager in enumerate(args.managers)
        ]
        return [*args.worker_groups(self.worker_join_token), *watchers]

    def _reconcile(self, name: str, nodes: list[SwarmNode]) -> remote.Command:
        """After every join: each named node Ready in its role, yesterday's removed, and the
        data nodes labelled swarm.data=<name> (no other node keeps that label)."""
        args = self._args
        data_labels = ",".join(f"{n.name}={n.data.label}" for n in nodes if n.data is not None)
        return self._command(
            f"{name}-reconcile",
            self.leader,
            create=node_cli(
                "reconcile",
                "--managers",
                ",".join(n.name for n in args.managers),
                "--workers",
                ",".join(n.name for n in args.workers),
                *(["--data", data_labels] if data_labels else []),
                *(["--groups", ",".join(args.group_names)] if args.group_names else []),
            ),
            depends_on=[self.bootstrap, *self.joins, *self.groups],
            # Rerun whenever any machine is new (yesterday's nodes must be removed),
            # whenever a data volume moves to another node (its label with it), and whenever
            # the groups change (reconcile waits for theirs). A stack without data or groups
            # keeps the triggers it had: no replacement on upgrade.
            triggers=[
                *(r for n in nodes for r in n.replaced_by),
                *([data_labels] if data_labels else []),
                *([",".join(args.group_names)] if args.group_names else []),
            ],
        )

    def _night_hooks(self, name: str) -> None:
        """What the teardown runs first (the backup, then the mark), and the morning's check
        that tonight's backup will be able to write."""
        args, leader = self._args, self.leader
        # Deleted right after the backup at the nightly teardown: from then on the
        # retire hooks have nothing to do (no draining a swarm that is going anyway).
        self.teardown = self._command(
            f"{name}-teardown",
            leader,
            create=node_cli("teardown-mark", "--clear"),
            delete=node_cli("teardown-mark"),
            depends_on=[self.reconcile, *self.retires.values(), *self.leaves.values()],
            dial_error_limit=BACKUP_DIAL_ERROR_LIMIT,
            triggers=[],  # never replaced: a replacement's delete would mark a live swarm
        )

        # The backup's `delete` is the backup. With swarm:backupOnDestroy false the resource
        # stays and its `delete` does nothing: dropping the resource would run its old
        # `delete`, the very backup that was meant to be skipped.
        self.backup: remote.Command | local.Command | None = None
        pinned = [] if args.restore_from in ("latest", "none") else [args.restore_from]
        skip = "echo 'backup: skipped (swarm:backupOnDestroy is false)'"
        if args.backup_target == "s3":
            # Every morning (a new manager 0): the bucket round trip tonight's backup and the
            # mirror's cache need, with the managers' own rights; after the formation, beside the rest.
            store_check = self._command(
                f"{name}-store-check", leader, create=node_cli("store-check"), depends_on=[self.reconcile]
            )
            self.backup = self._command(
                f"{name}-backup",
                leader,
                create=node_cli("wait-ready"),
                delete=node_cli("backup", *(arg for key in pinned for arg in ("--keep", key)))
                if args.backup_on_destroy
                else skip,
                depends_on=[self.reconcile, self.teardown, store_check, *self.signing.values()],
                dial_error_limit=BACKUP_DIAL_ERROR_LIMIT,
                # Never replaced: a replacement would run `delete` (a backup) against
                # yesterday's address. A new manager 0 only updates the connection.
                triggers=[],
            )
        elif args.backup_target == "local":
            fetch = self._local_backup(
                "fetch", leader, "--keep", str(args.backup_keep), *(arg for key in pinned for arg in ("--spare", key))
            )
            # `create` checks the directory now, so a broken setup fails in the morning.
            self.backup = self._local(
                f"{name}-backup",
                leader,
                create=self._local_backup("check", None),
                delete=fetch if args.backup_on_destroy else skip,
                depends_on=[self.reconcile, self.teardown, *self.signing.values()],
                triggers=[],  # as the S3 hook: never a fetch from yesterday's address
            )

    def _ready(self, name: str, node: SwarmNode) -> remote.Command:
        """Wait for user-data, install the agent (components/agent.py: its bundle is stdin's
        first line), wait for Docker; with a key of your own, authorize it (stdin's second
        line). One SSH session, so copying the agent adds no step to the formation's chain;
        an agent change is an update of this command alone (it has no delete)."""
        args = self._args
        create, stdin = self._agent_delivery()
        return remote.Command(
            f"{name}-ready-{node.name}",
            # The first command on a new machine: its dials wait for the boot.
            connection=ssh_connection(
                node, args.ssh_user, args.operator_key or args.ssh_private_key, BOOT_DIAL_ERROR_LIMIT
            ),
            create=create,
            stdin=stdin,
            triggers=list(node.replaced_by),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*node.depends_on, *self._provisioned(node)]),
        )

    def _agent_delivery(self) -> tuple[str, pulumi.Input[str]]:
        """`ready`'s command and stdin, the same on every node: made once and shared, since
        the bundle is some 85 KB, and a copy of it per node was 85 MB more at 1000 workers."""
        if self._delivery is None:
            # After user-data: it installs python3 where the image has none.
            steps = [install_command(agent_digest()), node_cli("wait-ready")]
            stdin: pulumi.Input[str] = agent_bundle() + "\n"
            if self._args.authorized_key is not None:
                steps.append(node_cli("authorize-key"))
                stdin = pulumi.Output.concat(agent_bundle(), "\n", self._args.authorized_key)
            self._delivery = (f"{WAIT_USER_DATA}; " + " && ".join(steps), stdin)
        return self._delivery

    def _data(self, name: str, node: SwarmNode, ready: remote.Command) -> remote.Command:
        """The node's kept volume, mounted at /var/data before it bootstraps or joins (so no
        task of the swarm starts on it without its data): what comes after the node's
        `ready` depends on this instead. Its `delete` stops dockerd (every task writing
        there) and unmounts, before the attachment is detached and the machine goes: at
        night, after the backup and the retires; during the day, after the node's retire
        has drained it. The trigger is the attachment, which every new machine replaces, so
        Pulumi deletes this first in the machine's delete-before-replace chain. A host the
        user brings only has its /var/data checked: the program mounts nothing there."""
        data = node.data
        if data is None:
            return ready
        if data.attachment is None:
            return self._command(
                f"{name}-data-{node.name}",
                node,
                create=node_cli("data-mount", "--existing", "--name", data.label),
                depends_on=[ready],
                triggers=list(node.replaced_by),
            )
        return self._command(
            f"{name}-data-{node.name}",
            node,
            create=pulumi.Output.concat(node_cli("data-mount", "--name", data.label, "--volume"), " ", data.volume_id),
            delete=node_cli("data-release"),
            depends_on=[ready, data.attachment],
            dial_error_limit=BACKUP_DIAL_ERROR_LIMIT,
            triggers=[data.attachment.id],
            delete_before_replace=True,
        )

    def _releases_storage(self, node: SwarmNode) -> bool:
        """Whether the node's chain ends in a command whose `delete` stops its dockerd."""
        has_volume = node.data is not None and node.data.attachment is not None
        return has_volume or self._args.shared_files is not None

    def _shared(self, name: str, node: SwarmNode, ready: remote.Command) -> remote.Command:
        """The stack's EFS file system at /var/data/shared (swarm:sharedFiles), after the node's
        data volume (it sits on /var/data) and before the node bootstraps or joins. The ID it
        mounts carries the mount targets and the NFS rule, so each morning it waits for them,
        and its `delete` (dockerd stopped, the client's writes flushed, unmounted, dockerd
        started again) runs before they go: at night after the backup and the node's
        retire; during the day after the retire has drained the node."""
        args = self._args
        if args.shared_files is None:
            return ready
        return self._command(
            f"{name}-shared-{node.name}",
            node,
            create=pulumi.Output.concat(
                node_cli("shared-mount", "--region", args.region or ""), " --fs ", args.shared_files
            ),
            delete=node_cli("shared-release"),
            depends_on=[ready],
            dial_error_limit=BACKUP_DIAL_ERROR_LIMIT,
        )

    def _provisioned(self, node: SwarmNode) -> list[pulumi.Resource]:
        provision = self.provisions.get(node.name)
        return [provision] if provision is not None else []

    def _leaves(self, name: str) -> dict[str, remote.Command]:
        """Machines the user brings stay: each leaves the swarm itself (its `delete`) when
        it goes, at `pulumi destroy` and when it gets a new private address (then before
        it is provisioned and joins again: delete before replace)."""
        return {
            node.name: self._command(
                f"{name}-leave-{node.name}",
                node,
                # No create: pulumi-command then dials nothing at `up` (its Create returns
                # before connecting); only the delete hook matters.
                create=None,
                delete=node_cli("leave"),
                depends_on=node.depends_on,
                dial_error_limit=BACKUP_DIAL_ERROR_LIMIT,
                delete_before_replace=True,
            )
            for node in self._args.managers + self._args.workers
        }

    def _provision(self, name: str, node: SwarmNode) -> remote.Command:
        """user-data over SSH on a machine the user brings (its keys travel in stdin, secret)."""
        return self._command(
            f"{name}-provision-{node.name}",
            node,
            create=PROVISION,
            stdin=node.provision,
            depends_on=[*node.depends_on, *([self.leaves[node.name]] if node.name in self.leaves else [])],
        )

    def _retires(self, name: str, ready: dict[str, remote.Command]) -> dict[str, remote.Command]:
        """One per node with a manager to retire it from: its `delete` drains, demotes and
        removes the node, on that manager, before the node's machine (or its `leave`) goes."""
        args = self._args
        retires = {}
        for node in args.managers + args.workers:
            steward = self._steward(node)
            if steward is None:
                handover = self._handover(name, node, ready)
                if handover is not None:
                    retires[node.name] = handover
                continue
            leave = self.leaves.get(node.name)
            # A host's leave replaced (delete before replace) takes its retire with it,
            # first: the node is drained and removed before it leaves.
            triggers = [*node.replaced_by, *([leave.id] if leave is not None else [])]
            retires[node.name] = self._command(
                f"{name}-retire-{node.name}",
                steward,
                # No create: nothing dials the steward at `up`. A `true` here was one more
                # SSH session per node on manager 0 at the same moment (sshd's MaxStartups
                # drops them beyond 10 unauthenticated) and one more step before the joins.
                create=None,
                delete=pulumi.Output.concat(node_cli("retire", "--name", node.name, "--addr"), " ", node.private_ip),
                # A steward with a data volume or the shared files stops its dockerd when it
                # releases them (data-release, shared-release): every retire it runs goes first.
                depends_on=[
                    ready[node.name],
                    *([leave] if leave is not None else []),
                    *([ready[steward.name]] if self._releases_storage(steward) else []),
                ],
                dial_error_limit=BACKUP_DIAL_ERROR_LIMIT,
                triggers=triggers,
                delete_before_replace=node.pinned,
            )
        return retires

    def _handover(self, name: str, node: SwarmNode, ready: dict[str, remote.Command]) -> remote.Command | None:
        """The lone manager of a one-manager swarm has no other to retire it, and its successor
        would restore last night's backup: the day's services, secrets and joins lost. So
        when its machine goes during the day it backs itself up first (its `delete`), and
        the new manager 0 restores that; at the night, the teardown's backup came first and
        the mark it leaves makes this a no-op."""
        if self._args.backup_target != "s3" or node is not self._args.managers[0]:
            return None  # local backups: the machine running Pulumi takes them (see README)
        return self._command(
            f"{name}-handover-{node.name}",
            node,
            create=None,
            delete=node_cli("backup", "--handover"),
            depends_on=[ready[node.name]],
            dial_error_limit=BACKUP_DIAL_ERROR_LIMIT,
            triggers=list(node.replaced_by),
            delete_before_replace=node.pinned,
        )

    def _signing_keys(self, name: str, ready: dict[str, remote.Command]) -> dict[str, remote.Command]:
        """The key that signs the backups (HMAC of name and sha256) and seals an autolocked
        swarm's unlock key beside them, on every manager: a restore refuses a backup whose
        signature does not match, so nothing that can only write to the bucket can plant
        one. Made once and kept through the teardown (the backups outlive the machines), it
        reaches the managers only on a secret stdin."""
        key = random.RandomBytes(
            f"{name}-backup-signing-key", length=32, opts=pulumi.ResourceOptions(parent=self, protect=True)
        )
        stdin = pulumi.Output.secret(pulumi.Output.concat(key.hex, "\n"))
        if self._args.backup_target == "none":
            return {}  # kept all the same: a protected resource must never be dropped
        return {
            node.name: self._command(
                f"{name}-backup-keys-{node.name}",
                node,
                create=node_cli("install-backup-keys"),
                stdin=stdin,
                depends_on=[ready[node.name]],
            )
            for node in self._args.managers
        }

    def _pin_host_keys(self, name: str, nodes: list[SwarmNode]) -> None:
        """Every connection checks the node's host key. An EC2 node's is known before it
        boots (hostkeys.py); a machine the user brings is read once, by the first command
        that reaches it (trust on first use, as ssh's accept-new), and every other command
        checks against that. It is read again only when this command's inputs change (a
        new private address, SSH address, port or user)."""
        for node in nodes:
            if node.host_public_key is not None:
                node.host_key = node.host_public_key
                continue
            read = self._command(
                f"{name}-host-key-{node.name}",
                node,
                create=READ_HOST_KEY,
                depends_on=node.depends_on,
                dial_error_limit=BOOT_DIAL_ERROR_LIMIT,
            )
            node.host_key = read.stdout.apply(_host_key_line)

    def _host_keys(self) -> pulumi.Output[str]:
        """Every node's ed25519 host key as known_hosts lines (`sshKnownHosts`)."""
        lines = []
        for node in self._args.managers + self._args.workers:
            addresses = node.addresses or [node.connect_host, node.private_ip]
            lines.append(
                pulumi.Output.all(node.host_key, *addresses).apply(
                    lambda v, port=node.port: known_hosts_lines(sorted(set(v[1:])), v[0], port) if v[0] else []
                )
            )
        return pulumi.Output.all(*lines).apply(lambda groups: "".join(f"{line}\n" for g in groups for line in g))

    def _steward(self, node: SwarmNode) -> SwarmNode | None:
        """The manager that retires `node`: manager 0, or manager 1 for manager 0 itself."""
        managers = self._args.managers
        if node is not managers[0]:
            return managers[0]
        return managers[1] if len(managers) > 1 else None

    def _retired(self, node: SwarmNode) -> list[pulumi.Resource]:
        retire = self.retires.get(node.name)
        return [retire] if retire is not None else []

    def _bootstrap(self, name: str, ready: dict[str, remote.Command]) -> remote.Command:
        """Manager 0 joins a live swarm, restores or initialises; the other managers' probes
        (secret: they carry a manager join token) come on its stdin."""
        args, leader = self._args, self._args.managers[0]
        probes = [
            self._command(
                f"{name}-probe-{node.name}",
                node,
                create=node_cli("probe"),
                depends_on=[ready[node.name], *self._retired(node)],
                secret=True,
                # Asked again whenever manager 0 is new, since that is when bootstrap runs.
                triggers=[*leader.replaced_by, *node.replaced_by],
            )
            for node in args.managers[1:]
        ]
        restore = args.restore_from if args.backup_target != "none" else "none"
        staged: list[pulumi.Resource] = []
        if args.backup_target == "local" and restore != "none":
            staged.append(
                self._local(
                    f"{name}-stage-restore",
                    leader,
                    create=self._local_backup("push", leader, "--restore", restore),
                    depends_on=[ready[leader.name]],
                )
            )
        stdin = None
        if probes:
            answers = pulumi.Output.all(*[p.stdout for p in probes]).apply(lambda outs: "\n".join(outs) + "\n")
            stdin = pulumi.Output.secret(answers)
        unsigned = ["--allow-unsigned"] if args.restore_unsigned and restore not in ("latest", "none") else []
        return self._command(
            f"{name}-bootstrap",
            leader,
            create=node_cli(
                "bootstrap", "--restore", restore, *unsigned, "--autolock", "true" if args.autolock else "false"
            ),
            stdin=stdin,
            depends_on=[ready[leader.name], *staged, *probes, *self._retired(leader), *self.signing.values()],
        )

    def connection(self, node: SwarmNode, dial_error_limit: int = DIAL_ERROR_LIMIT) -> remote.ConnectionArgs:
        return ssh_connection(node, self._args.ssh_user, self._args.ssh_private_key, dial_error_limit)

    def _local_backup(self, verb: str, node: SwarmNode | None, *extra: str) -> pulumi.Output[str]:
        """The command line of scripts/swarm_backup_local.py; the key travels in the environment."""
        args = self._args
        base = ["python3", LOCAL_BACKUP, verb, "--dir", args.backup_directory or "", "--prefix", args.state_prefix]
        if node is None:
            return pulumi.Output.from_input(shlex.join(base))
        return pulumi.Output.all(node.connect_host, node.user or args.ssh_user, node.host_key or "").apply(
            lambda v: shlex.join(
                [*base, "--host", v[0], "--port", str(node.port), "--user", v[1], "--host-key", v[2], *extra]
            )
        )

    def _local(
        self,
        resource_name: str,
        node: SwarmNode,
        *,
        create: pulumi.Input[str] | None,
        depends_on: list[pulumi.Resource],
        delete: pulumi.Input[str] | None = None,
        triggers: list | None = None,
    ) -> local.Command:
        return local.Command(
            resource_name,
            create=create,
            delete=delete,
            # No `dir`: a local command's delete runs with the inputs frozen at the last
            # `up`, so this checkout's path would fail the teardown from any other one
            # ("chdir: no such file or directory", no backup). Pulumi starts providers in
            # the project directory, where scripts/ is, in every checkout.
            environment={LOCAL_KEY_ENV: pulumi.Output.secret(self._args.ssh_private_key)},
            triggers=triggers if triggers is not None else list(node.replaced_by),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on, additional_secret_outputs=["environment"]),
        )

    def _join(self, name: str, node: SwarmNode, role: str, after: list[pulumi.Resource]) -> remote.Command:
        token = self.manager_join_token if role == "manager" else self.worker_join_token
        return self._command(
            f"{name}-join-{node.name}",
            node,
            create=pulumi.Output.concat(node_cli("join", role), " ", self.leader_address),
            stdin=token,
            depends_on=after,
            triggers=node.replaced_by,
        )

    def _command(
        self,
        resource_name: str,
        node: SwarmNode,
        *,
        create: pulumi.Input[str] | None,
        depends_on: list[pulumi.Resource],
        delete: pulumi.Input[str] | None = None,
        stdin: pulumi.Input[str] | None = None,
        secret: bool = False,
        triggers: list | None = None,
        dial_error_limit: int = DIAL_ERROR_LIMIT,
        delete_before_replace: bool = False,
    ) -> remote.Command:
        secret_outputs = ["stdin"] if stdin is not None else []
        if secret:
            secret_outputs += ["stdout", "stderr"]
        return remote.Command(
            resource_name,
            connection=self.connection(node, dial_error_limit),
            create=create,
            delete=delete,
            stdin=stdin,
            triggers=triggers if triggers is not None else list(node.replaced_by),
            add_previous_output_in_env=False,
            logging=remote.Logging.NONE if secret else None,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends_on,
                additional_secret_outputs=secret_outputs or None,
                delete_before_replace=delete_before_replace or None,
            ),
        )


def _host_key_line(stdout: str | None) -> str:
    """`ssh-ed25519 AAAA...` from the public key file (its comment dropped)."""
    return " ".join((stdout or "").split()[:2])


def _parse_tokens(stdout: str) -> dict[str, str]:
    """The swarm-tokens line of `swarm-node tokens`; errors never echo the text (it is secret)."""
    try:
        tokens = _tokens_record(stdout)
    except (contract.ContractError, ValueError):
        if pulumi.runtime.is_dry_run():
            return {"worker": "", "manager": "", "unlock": ""}
        raise ValueError("swarm-node tokens did not print a swarm-tokens line (contents hidden: secret)") from None
    return {"worker": tokens["worker"], "manager": tokens["manager"], "unlock": tokens.get("unlock") or ""}


def _tokens_record(stdout: str) -> dict:
    try:
        return contract.read("swarm-tokens", stdout)
    except contract.ContractError:
        # The bash agent printed the same fields without a kind, and a stack's state from
        # then keeps that line until tokens runs again (a live stack upgraded mid-day).
        last = json.loads(stdout.strip().splitlines()[-1]) if stdout and stdout.strip() else None
        if not isinstance(last, dict) or "kind" in last:
            raise
        return contract.check({"kind": "swarm-tokens", **last})


def _bootstrap_result(stdout: str | None) -> str:
    """bootstrapResult: the human line of bootstrap's swarm-bootstrap record (the same
    string the output always carried). Before the agent was Python, bootstrap printed that
    line alone; a state from then still reads."""
    try:
        return contract.read("swarm-bootstrap", stdout)["result"]
    except contract.ContractError:
        return (stdout or "").strip()
