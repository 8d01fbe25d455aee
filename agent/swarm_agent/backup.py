"""The nightly backup of the swarm's state, on manager 0, before the teardown.

Pulumi runs `backup` as the delete hook of manager 0's backup command: with dockerd
stopped (Raft files must not change under tar), a tar.gz of /var/lib/docker/swarm,
checked (the Raft log and the certificates; an autolocked one opens with the current
unlock key), signed with the stack's signing key, and uploaded beside its .sha256 and
.meta; only once the upload reads back whole does backups/latest point at it. With
`--stdout` (backup target local) the tar.gz goes to stdout instead and the machine
running Pulumi keeps it. Nothing is uploaded unless it is signed: the bash agent's
`$(keytool sign ...)` failed silently and published `signature=` empty.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass

from swarm_agent import (
    contract,
    dockerd,
    env,
    keys,
    keytool,
    lock,
    metrics,
    paths,
    run,
    signed,
    snapshot,
    store,
    tarballs,
)
from swarm_agent.env import NodeEnv
from swarm_agent.keytool import KeytoolError
from swarm_agent.run import AgentError

STAMP = "%Y%m%dT%H%M%SZ"  # the backup's name: backups/<UTC>.tar.gz
CREATED = "%Y-%m-%dT%H:%M:%SZ"  # .meta's created=
NODE_KEY = "swarm/certificates/swarm-node.key"
NOT_MOVED = "the latest pointer was not moved"


@dataclass(frozen=True)
class Job:
    """One backup: what every step needs, read once before dockerd stops."""

    node: NodeEnv
    key: str  # backups/<UTC>.tar.gz
    unlock_key: str  # "" without autolock
    signing_key: bytes
    engine: str  # the version of the dockerd that wrote the state


def backup(args) -> None:
    """The verb, and BackupFailed for the night's alarm. A --handover run that finds the
    teardown's backup taken does nothing and sends nothing; one that backs up is a backup."""
    counted = {"yes": not getattr(args, "handover", False)}
    try:
        with lock.held(getattr(args, "verb", None) or "backup", 900):
            _backup(args, counted)
    except Exception:
        if counted["yes"]:
            metrics.report({"BackupFailed": 1})
        raise
    if counted["yes"]:
        metrics.report({"BackupFailed": 0})


def _backup(args, counted: dict) -> None:
    node = env.load()
    keep_count = node.get("SWARM_BACKUP_KEEP", "14")
    if not re.fullmatch(r"[0-9]+", keep_count):
        raise AgentError("SWARM_BACKUP_KEEP must be a number")
    if node.target != "s3" and not args.stdout:
        raise AgentError(f"backup: this swarm's backups go to '{node.target}', not S3; use 'backup --stdout > file'")
    if getattr(args, "handover", False) and dockerd.in_no_swarm():
        print("backup: this node is in no swarm (its morning failed before the swarm formed); nothing to hand over")
        return
    backup_preflight()
    if getattr(args, "handover", False) and _teardown_began():
        print("backup: the teardown's own backup is taken; nothing to hand over")
        return
    counted["yes"] = True
    run.note(snapshot.fresh_snapshot())
    unlock_key = keys.read_unlock_key()
    # Before dockerd stops: without the key there is no signature, and a night without a
    # backup is better than an outage for one that a restore refuses.
    signing_key = keys.read_signing_key()
    job = Job(node, f"backups/{_utc().strftime(STAMP)}.tar.gz", unlock_key, signing_key, dockerd.server_version())
    restart = Restart(unlock_key)
    try:
        sha, meta = take_and_ship(job, restart, args.stdout, int(keep_count), args.keep)
        restart.rejoin()
    except BaseException:
        restart.after_failure()
        raise
    report(job, sha, meta, args.stdout)


def backup_preflight() -> None:
    """Only a manager that sees a leader and is reachable holds today's Raft state: a
    manager cut off from the others would back up a stale one."""
    dockerd.wait_up(60)
    if not dockerd.is_active_manager():
        raise AgentError(
            "backup: this node is not an active swarm manager, so there is nothing safe to back up. To destroy "
            "without a backup: 'pulumi config set swarm:backupOnDestroy false', 'pulumi up', then destroy."
        )
    if not dockerd.has_leader():
        raise AgentError(
            "backup: this manager sees no leader (the swarm has lost its quorum, or this manager is cut off): its "
            "Raft state may be stale, so nothing was backed up. Bring the managers back ('docker node ls'), then "
            "run the teardown again."
        )
    reach = _reachability()
    if reach != "reachable":
        raise AgentError(
            f"backup: the other managers see this manager as '{reach or 'unknown'}', not reachable; "
            "nothing was backed up"
        )


def _reachability() -> str:
    result = run.docker("node", "inspect", "self", "--format", "{{json .ManagerStatus}}", check=False)
    if result.returncode != 0:
        return ""
    try:
        status = json.loads(result.stdout or "null")
    except ValueError:
        return ""
    return str(status.get("Reachability") or "") if isinstance(status, dict) else ""


class Restart:
    """dockerd stopped for the tar, and started again at once in a thread: it takes
    seconds to rejoin the other managers, so it does that while the backup travels, and
    `rejoin` waits for it at the end. Whatever fails after the stop, `after_failure`
    starts dockerd again (and unlocks it): bash's EXIT trap."""

    def __init__(self, unlock_key: str):
        self.unlock_key = unlock_key
        self.stopped = False  # dockerd may be down: a failure must start it again
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def stop(self) -> None:
        self.stopped = True
        dockerd.stop()

    def begin(self) -> None:
        self.thread = threading.Thread(target=self._start, name="dockerd-start", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            dockerd.service("start")
        except Exception as error:  # reported by rejoin, which waits for dockerd anyway
            self.failure = error

    def rejoin(self) -> None:
        """The end of a backup: dockerd is back, unlocked, and this manager is in the swarm again."""
        if self.thread is not None:
            self.thread.join()  # every call in it is bounded
        if self.failure is not None:
            run.note(f"backup: starting docker reported a failure ({self.failure}); waiting for it anyway")
        dockerd.wait_up(120)
        self.stopped = False
        keys.unlock_after_restart(self.unlock_key)
        dockerd.wait_active_manager(120)

    def after_failure(self) -> None:
        if not self.stopped:
            return
        if self.thread is not None:
            self.thread.join()
        try:
            dockerd.service("start")
            dockerd.wait_up(120)
        except AgentError as error:
            run.note(f"swarm-node: could not restart docker ({error}); start it by hand")
            return
        try:
            keys.unlock_after_restart(self.unlock_key)
        except AgentError as error:
            run.note(f"swarm-node: {error}")


def store_check(args) -> None:
    node = env.load()
    if node.target != "s3":
        print(f"store-check: backups go to '{node.target}'; nothing to check here")
        return
    work = tempfile.mkdtemp(dir=paths.WORK_DIR, prefix="swarm-check.")
    try:
        print(store.check_round_trip(node, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _teardown_began() -> bool:
    """--handover: the lone manager of a swarm is going. During the day (a replacement) its
    state is backed up for its successor to restore; at the night the teardown's backup
    came first and marked the swarm, and there is nothing to add."""
    from swarm_agent import nodes  # only the handover reads the mark

    return nodes.teardown_marked()


def take_and_ship(
    job: Job, restart: Restart, to_stdout: bool, keep_count: int, keep: list[str]
) -> tuple[str, dict[str, str]]:
    """Tar, check, sign, then send or publish and prune: (sha256, .meta fields). The tar holds
    the swarm's keys: its directory never outlives this step."""
    work = tempfile.mkdtemp(dir=paths.WORK_DIR, prefix="swarm-backup.")
    try:
        tarball = take_tarball(job, work, restart)
        check_backup_content(job, tarball, work)
        sha = tarballs.sha256_file(tarball)
        meta = backup_meta(job, sha)
        if to_stdout:
            send(tarball)
            return sha, meta
        with open(tarball + ".meta", "w") as handle:
            handle.write("".join(f"{name}={value}\n" for name, value in meta.items()))
        publish_backup(job, tarball, sha, work)
        prune_backups(job.node, keep_count, [job.key, *keep], work)
        return sha, meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


def take_tarball(job: Job, work: str, restart: Restart) -> str:
    tarball = os.path.join(work, os.path.basename(job.key))
    restart.stop()  # Raft files must not change under tar
    parent, name = os.path.split(paths.SWARM_DIR)
    run.call("tar", "-C", parent, "-czf", tarball, name)
    restart.begin()
    return tarball


def check_backup_content(job: Job, tarball: str, work: str) -> None:
    problem = tarballs.content_problem(tarball)
    if problem:
        raise AgentError(f"backup: the tar of {paths.SWARM_DIR} is {problem}; nothing was uploaded")
    if job.unlock_key:
        check_sealed_backup(job, tarball, work)


def check_sealed_backup(job: Job, tarball: str, work: str) -> None:
    """An autolocked backup is only worth keeping if the key that goes beside it opens it
    (a rotation still being applied could leave the old one)."""
    state = os.path.join(work, "open", "swarm")
    os.makedirs(os.path.join(state, "certificates"), mode=0o700)
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.extractfile(NODE_KEY)
            data = member.read() if member is not None else None
    except (KeyError, OSError, tarfile.TarError):
        data = None
    if data is None:
        raise AgentError(f"backup: the tar of {paths.SWARM_DIR} has no {NODE_KEY}; nothing was uploaded")
    fd = os.open(os.path.join(state, "certificates", "swarm-node.key"), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    try:
        keys.open_state(state, job.unlock_key)
    except KeytoolError:
        raise AgentError(
            "backup: the swarm's current unlock key does not open manager 0's node key (a key rotation still under "
            "way?); nothing was uploaded, run the teardown again"
        ) from None
    finally:
        shutil.rmtree(os.path.join(work, "open"), ignore_errors=True)


def backup_meta(job: Job, sha: str) -> dict[str, str]:
    """What a restore checks before it runs (KEY.meta): the engine, the manager's address,
    the signature of KEY and its sha256 (HMAC with the stack's signing key, which only
    Pulumi and the managers hold), and for an autolocked swarm its unlock key, sealed with
    the signing key. Computed before anything is uploaded: no signature, no backup."""
    try:
        meta = {
            "engine": job.engine,
            "addr": job.node.advertise_addr,
            "node": job.node.node_name,
            "created": _utc().strftime(CREATED),
            "signature": keytool.sign(job.key, sha, job.signing_key),
        }
        if job.unlock_key:
            meta["unlock"] = keys.seal_unlock_key(job.key, job.unlock_key, job.signing_key)
        meta[signed.FIELDS] = signed.fields_signature(job.key, sha, meta, job.signing_key)
    except KeytoolError as error:
        raise AgentError(f"backup: cannot sign {job.key} ({error}); nothing was uploaded") from None
    return meta


def publish_backup(job: Job, tarball: str, sha: str, work: str) -> None:
    """The tarball, its .sha256 and .meta; read back whole; only then backups/latest."""
    node, key = job.node, job.key
    check = os.path.join(work, "check.tar.gz")
    try:
        store.put_file(node, tarball, key)
        store.put_text(node, f"{sha}  {os.path.basename(key)}\n", key + ".sha256")
        store.put_file(node, tarball + ".meta", key + ".meta")
        found = store.fetch(node, key, check)
    except AgentError as error:
        raise AgentError(f"backup: uploading {node.store}{key} failed ({error}); {NOT_MOVED}") from None
    if not found:
        raise AgentError(f"backup: {node.store}{key} is not there after its upload; {NOT_MOVED}")
    got = tarballs.sha256_file(check)
    if got != sha:
        raise AgentError(f"backup: {node.store}{key} read back with sha256 {got}, not {sha}; {NOT_MOVED}")
    store.put_text(node, f"{key} {sha}\n", "backups/latest")


def prune_backups(node: NodeEnv, keep_count: int, spare: list[str], work: str) -> None:
    """Keep the newest SWARM_BACKUP_KEEP, and never the target of latest, a pinned one
    (--keep) or the last restored one (backups/restored). Best effort: the backup is
    already safe and pointed to, so a failure here is only a note."""
    spared = set(spare)
    restored = _restored(node, work)
    if restored:
        spared.add(restored)
    try:
        old = store.backups(node)[keep_count:]
    except AgentError:
        run.note("backup: pruning stopped early; the next backup tries again")
        return
    for key in old:
        if key in spared:
            run.note(f"backup: kept {key} (latest, pinned or last restored)")
            continue
        try:
            store.remove(node, key)
        except AgentError:
            run.note(f"backup: could not prune {key}; the next backup tries again")
            continue
        for side in (key + ".sha256", key + ".meta"):
            try:
                store.remove(node, side)
            except AgentError:
                pass
        run.note(f"backup: pruned {key}")


def _restored(node: NodeEnv, work: str) -> str:
    """The key in backups/restored (the backup the swarm came from), or ""."""
    path = os.path.join(work, "restored")
    try:
        if not store.fetch(node, "backups/restored", path):
            return ""
        with open(path) as handle:
            return handle.readline().strip()
    except (AgentError, OSError):
        return ""


def send(tarball: str) -> None:
    """--stdout: the tar.gz's bytes and nothing else on stdout."""
    sys.stdout.flush()
    with open(tarball, "rb") as handle:
        shutil.copyfileobj(handle, sys.stdout.buffer, 1 << 20)
    sys.stdout.buffer.flush()


def report(job: Job, sha: str, meta: dict[str, str], to_stdout: bool) -> None:
    line = contract.line("swarm-backup", key=job.key, sha256=sha, meta=meta)
    if to_stdout:
        # The Pulumi machine (scripts/swarm_backup_local.py) checks the sha256 against what
        # it received, and keeps the .meta.
        run.note(line)
        return
    print(f"backup: wrote {job.key} sha256 {sha}")
    print(line, flush=True)


def _utc() -> datetime.datetime:
    """Wall-clock UTC for names and created= (the tests fix it)."""
    return datetime.datetime.now(datetime.timezone.utc)
