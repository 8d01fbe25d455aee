"""Manager 0 from a backup, or a new swarm when there is none to restore.

`bootstrap` runs this on manager 0 when no other manager of this environment is in a
swarm. It chooses the backup (the one backups/latest points to, one you named with
swarm:restoreFrom, or none), fetches it into a private directory, and refuses it,
untouched, unless its sha256, its .sha256 object, the pointer's sha256, its content and
its signed .meta all agree. Then it puts the backup in place of the swarm's state and
starts this node from it with `docker swarm init --force-new-cluster`.
"""

from __future__ import annotations

import datetime
import glob
import os
import re
import shutil
import tempfile

from swarm_agent import dockerd, keytool, paths, run, signed, store, tarballs
from swarm_agent.env import NodeEnv
from swarm_agent.run import AgentError, note

KEY_RE = re.compile(r"^backups/[A-Za-z0-9._-]+\.tar\.gz$")
PICK_OLDER = "then 'pulumi config set swarm:restoreFrom backups/<older>.tar.gz'"


def restore_or_init(node: NodeEnv, restore: str, allow_unsigned: bool = False) -> tuple[str, str, str | None]:
    """latest | none | KEY: restore a verified backup with --force-new-cluster, or start a
    new swarm when there is none (or none is wanted). (action, result, restored_from).
    `allow_unsigned` (swarm:restoreUnsigned) lets only a backup named in KEY lack a .meta."""
    work = tempfile.mkdtemp(dir=paths.WORK_DIR, prefix="swarm-restore.")
    try:
        key, want, pinned = choose_backup(node, restore, work)
        if not key:
            init_swarm(node)
            return "initialised", "bootstrap: initialised a new swarm", None
        tarball, unlock = verify_backup(node, key, want, pinned and allow_unsigned, work)
        return "restored", restore_backup(node, key, tarball, unlock), key
    finally:
        # A backup's tar (the swarm's keys) never outlives the verb.
        shutil.rmtree(work, ignore_errors=True)


def init_swarm(node: NodeEnv, *flags: str, check: bool = True) -> run.Result:
    addr = node.require_addr()
    return run.docker("swarm", "init", *flags, "--advertise-addr", addr, "--listen-addr", f"{addr}:2377", check=check)


def choose_backup(node: NodeEnv, restore: str, work: str) -> tuple[str, str, bool]:
    """(key, the sha256 backups/latest promises, pinned); key "" when there is nothing to restore."""
    if restore == "none":
        return "", "", False
    if restore != "latest":  # pinned: named with swarm:restoreFrom
        key = restore[1:] if restore.startswith("/") else restore
        if not KEY_RE.match(key):
            raise AgentError(f"bootstrap: --restore wants latest, none or backups/<name>.tar.gz, got '{restore}'")
        return key, "", True
    found = store.listing(node)
    if "backups/latest" in found.current:
        key, sha = _read_latest(node, work)
        refuse_a_rollback(node, found, key, work)
        return key, sha, False
    if found.backups:
        raise AgentError(
            f"bootstrap: refusing to start a new swarm: {node.store}backups/ holds {len(found.backups)} backup(s) "
            "but no backups/latest. A new swarm would become tonight's latest, and pruning would then remove the "
            f"real ones. {signed.hint(node, found.backups, work)} Or start a new swarm on purpose: "
            "'pulumi config set swarm:restoreFrom none'."
        )
    if found.gone:
        raise AgentError(_emptied_store(node, found.gone))
    return "", "", False


def refuse_a_rollback(node: NodeEnv, found: store.Listing, key: str, work: str) -> None:
    """backups/latest may only point to the newest backup this stack's managers signed. A
    night moves it last, to the backup it has just written; anything that can write the
    bucket could point it (or copy an old version of it back) at an older signed one, and
    the morning would bring back an older swarm: yesterday's secrets, services and nodes."""
    deleted = [k for k in found.gone if k > key]  # UTC names: newer sorts later
    if deleted:
        raise AgentError(
            f"bootstrap: refusing to restore {node.store}{key}, which backups/latest points to: newer backups were "
            f"deleted from the bucket ({', '.join(deleted[:3])}), as a rollback to an older swarm would look. Make "
            "the newest current again ('aws s3api list-object-versions' and 'copy-object', README: When something "
            f"goes wrong), or restore {key} on purpose: 'pulumi config set swarm:restoreFrom {key}', 'pulumi up'."
        )
    newer = [k for k in found.backups if k > key]
    newest = signed.newest_signed(node, newer, work) if newer else ""
    if newest:
        raise AgentError(
            f"bootstrap: refusing to restore {node.store}{key}, which backups/latest points to: a newer backup signed "
            f"by this stack's managers exists, {newest}. A night moves latest to its backup last, so latest was moved "
            f"back (or an old version of it copied back). Restore the newest: 'pulumi config set swarm:restoreFrom "
            f"{newest}', 'pulumi up'; or {key} on purpose: 'pulumi config set swarm:restoreFrom {key}'."
        )
    if newer:
        note(f"bootstrap: {len(newer)} backup(s) newer than {key} carry no signature that checks; ignored")


def _read_latest(node: NodeEnv, work: str) -> tuple[str, str]:
    """(key, sha256) from backups/latest, which the listing says exists."""
    pointer = os.path.join(work, "latest")
    if not store.fetch(node, "backups/latest", pointer):
        raise AgentError(f"bootstrap: {node.store}backups/latest went while it was being read; run 'pulumi up' again")
    with open(pointer, errors="replace") as handle:
        words = handle.readline().split(None, 1)  # as bash's `read -r KEY SHA`
    key, sha = (words[0] if words else ""), (words[1].strip() if len(words) > 1 else "")
    if not (KEY_RE.match(key) and sha):
        raise AgentError(f"bootstrap: {node.store}backups/latest is not '<key> <sha256>'; fix it or use --restore none")
    return key, sha


def _emptied_store(node: NodeEnv, gone: tuple) -> str:
    """The refusal for a prefix emptied by hand: only earlier versions of its backups are left."""
    newest = gone[0]
    return (
        f"bootstrap: refusing to start a new swarm: nothing is current under {node.store}backups/, but the bucket "
        f"keeps earlier versions of {len(gone)} backup(s) (the newest: {newest}): they were deleted, not never "
        "made, and a new swarm would let them expire. Bring the newest back: for the key, its .sha256 and its "
        f".meta, 'aws s3api list-object-versions --bucket {node.bucket} --prefix {node.prefix}{newest}' gives "
        f"the VersionId, and 'aws s3api copy-object --bucket {node.bucket} --key <key> --copy-source "
        f"{node.bucket}/<key>?versionId=<id>' makes it current; then 'pulumi config set swarm:restoreFrom "
        f"{newest}' and 'pulumi up'. Or start a new swarm on purpose: 'pulumi config set swarm:restoreFrom none'."
    )


def fetch_backup(node: NodeEnv, key: str, work: str) -> None:
    """The backup and its .sha256 and .meta (those that exist) into `work`, in one `aws`
    run (a listing of backups/ and the downloads) rather than one per object."""
    name = key[len("backups/") :]
    if node.target == "local":
        for suffix in ("", ".sha256", ".meta"):
            try:
                shutil.copyfile(store.local_path(node, key + suffix), os.path.join(work, name + suffix))
            except OSError:
                continue  # absent: the checks below say what is missing
        return
    # KEY_RE holds no glob character, so the includes match these three names alone.
    includes = ["--include", name, "--include", f"{name}.sha256", "--include", f"{name}.meta"]
    try:
        store.aws(node, "s3", "cp", store.url(node, "backups/"), work + "/", "--recursive", "--exclude", "*",
                  *includes, "--only-show-errors")  # fmt: skip
    except AgentError as error:
        raise AgentError(f"cannot read {node.store}{key}: {error}") from None


def verify_backup(node: NodeEnv, key: str, want: str, unsigned_ok: bool, work: str) -> tuple[str, str]:
    """Fetch the backup into `work`; refuse it, untouched, unless its sha256 matches its
    .sha256 object and the pointer's, and it is a tar.gz of swarm/; then check its .meta.
    (the tarball's path, the sealed unlock key its .meta carries or "")."""
    tarball = os.path.join(work, key[len("backups/") :])
    fetch_backup(node, key, work)
    if not os.path.isfile(tarball):
        raise AgentError(f"bootstrap: backup {node.store}{key} does not exist; list them with {node.list_hint}")
    got, side = tarballs.sha256_file(tarball), _first_fields(tarball + ".sha256")
    why = ""
    if not side:
        why = f"{node.store}{key}.sha256 is missing or empty"
    elif got != side:
        why = f"its sha256 {got} does not match {node.store}{key}.sha256 ({side})"
    elif want and got != want:
        why = f"its sha256 {got} does not match {node.store}backups/latest ({want})"
    elif problem := tarballs.content_problem(tarball):
        why = f"it is {problem}"
    if why:
        raise AgentError(
            f"bootstrap: refusing to restore {node.store}{key}: {why}. The object was left untouched. "
            + _another(node, key, work)
        )
    return tarball, check_backup_meta(node, key, tarball + ".meta", got, unsigned_ok, work)


def _another(node: NodeEnv, refused: str, work: str) -> str:
    """Advice after a refusal: the newest other backup whose signature checks, if any."""
    try:
        keys = store.listing(node).backups
    except AgentError as error:
        return f"List the others with {node.list_hint} ({error})."
    return signed.hint(node, keys, work, skip=(refused,))


def _first_fields(path: str) -> str:
    """`cut -d' ' -f1 <path` (the .sha256 object is 'SHA256  NAME'), "" when absent."""
    try:
        with open(path, errors="replace") as handle:
            text = handle.read()
    except OSError:
        return ""
    return "\n".join(line.split(" ", 1)[0] for line in text.split("\n")).rstrip("\n")


def check_backup_meta(node: NodeEnv, key: str, meta: str, sha: str, unsigned_ok: bool, work: str) -> str:
    """A restore only of a backup this stack's managers signed, onto the address its manager
    had and an engine at least as new (swarmkit cannot read a newer Raft format back).
    Returns the sealed unlock key the .meta carries ("" when none)."""
    where = f"{node.store}{key}"
    if not os.path.isfile(meta) or os.path.getsize(meta) == 0:
        # Only a backup you name (swarm:restoreFrom) with a setting of its own that says so.
        if not unsigned_ok:
            raise AgentError(
                f"bootstrap: refusing to restore {where}: it has no .meta, so no signature: it was not written by "
                "this stack's managers (forged, or made before backups were signed). The object was left "
                f"untouched. {_another(node, key, work)} Only if you know where it came from: "
                "swarm:restoreFrom naming it and 'pulumi config set swarm:restoreUnsigned true'."
            )
        note(f"bootstrap: {where} has no .meta; restoring it unsigned (swarm:restoreUnsigned): "
             "signature, engine and address not checked")  # fmt: skip
        return ""
    with open(meta, errors="replace") as handle:
        text = handle.read()
    signing = signed.signing_key()
    fields = signed.fields_check(key, sha, text, signing)
    if not signed.signature_checks(key, sha, text, signing) or fields is False:
        raise AgentError(
            f"bootstrap: refusing to restore {where}: its signature does not match: it was not written by this "
            f"stack's managers (forged or altered). The object was left untouched. {_another(node, key, work)}"
        )
    if fields is None:
        note(f"bootstrap: {where} was written before .meta fields were signed: its address and engine are unsigned")
    engine, addr, mine = signed.meta_field(text, "engine"), signed.meta_field(text, "addr"), dockerd.server_version()
    if addr and addr != node.advertise_addr:
        raise AgentError(
            f"bootstrap: refusing to restore {where}: it was taken on a manager at {addr}, this one is at "
            f"{node.advertise_addr} (a restored manager must come back at its address). The object was left untouched."
        )
    if engine and engine != "unknown" and version_after(_release(engine), _release(mine)):
        raise AgentError(
            f"bootstrap: refusing to restore {where}: it was taken with Docker {engine}, this node runs Docker "
            f"{mine}, an older engine that cannot be trusted to read it. Use a newer AMI (swarm:amiId), or restore "
            f"it where Docker {engine} or newer runs. The object was left untouched."
        )
    return signed.meta_field(text, "unlock")


def _release(version: str) -> str:
    """The part of an engine version before its first + ~ or - (bash's ${v%%[+~-]*})."""
    return re.split(r"[+~-]", version, maxsplit=1)[0]


def version_after(a: str, b: str) -> bool:
    """Whether `sort -V` puts a after b: GNU filevercmp (a file suffix such as .tar.gz is
    compared last), ties broken byte by byte as sort does."""
    if a == b:
        return False
    if not a or not b:
        return bool(a)
    suffix = re.compile(r"(?:\.[A-Za-z~][A-Za-z0-9~]*)+$")
    a_cut, b_cut = suffix.sub("", a), suffix.sub("", b)
    if a_cut == b_cut:  # the suffixes decide
        a_cut, b_cut = a, b
    order = _verrevcmp(a_cut, b_cut) or (a > b) - (a < b)
    return order > 0


def _verrevcmp(a: str, b: str) -> int:
    """gnulib's verrevcmp: non-digit runs by character (~ before the end, letters before the
    rest), digit runs by number."""

    def order(text: str, i: int) -> int:
        c = text[i] if i < len(text) else ""
        if not c or c.isdigit():
            return 0
        if c.isascii() and c.isalpha():
            return ord(c)
        return -1 if c == "~" else ord(c) + 256

    def digit(text: str, i: int) -> bool:
        return i < len(text) and text[i] in "0123456789"

    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not digit(a, i)) or (j < len(b) and not digit(b, j)):
            if order(a, i) != order(b, j):
                return order(a, i) - order(b, j)
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while digit(a, i) and digit(b, j):
            first_diff = first_diff or ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if digit(a, i) or digit(b, j):
            return 1 if digit(a, i) else -1
        if first_diff:
            return first_diff
    return 0


def open_sealed_state(node: NodeEnv, key: str, unlock: str) -> None:
    """An autolocked backup's node key opens only with the swarm's unlock key, which its
    .meta carries sealed with the stack's signing key. dockerd cannot start a new cluster
    from a locked state (moby/moby#36852), so keytool opens the key; `init --autolock` then
    seals it again with the same unlock key, which the Raft state keeps."""
    where = f"{node.store}{key}"
    if not unlock:
        raise AgentError(
            f"bootstrap: {where} is autolocked and its .meta has no unlock key (made by hand?): restore it by hand, "
            "or pick another: 'pulumi config set swarm:restoreFrom backups/<name>.tar.gz'."
        )
    signing_key = signed.signing_key()
    try:
        if signing_key is None:
            raise keytool.KeytoolError("no signing key to open the unlock key with")
        keytool.unlock_state(paths.SWARM_DIR, keytool.unwrap_unlock(key, unlock, signing_key))
    except (keytool.KeytoolError, OSError, ValueError) as error:
        note(f"swarm-keytool: {error}")
        raise AgentError(
            f"bootstrap: the unlock key beside {where} does not open it; nothing was started from it. "
            f"Pick another: {node.list_hint}, {PICK_OLDER}."
        ) from None


def restore_backup(node: NodeEnv, key: str, tarball: str, unlock: str) -> str:
    """Start this node from the verified backup; the result line."""
    # The swarm is inactive here (checked above), so dockerd holds nothing in SWARM_DIR:
    # put the backup there and start the node from it with `init --force-new-cluster` (the
    # restored Raft state still lists yesterday's managers; only this one is alive).
    # Restarting dockerd on that state instead costs its 20 s wait for a quorum that is gone.
    _move_aside(paths.SWARM_DIR)
    run.call("tar", "-xzf", tarball, "-C", os.path.dirname(paths.SWARM_DIR))
    lock = []
    if tarballs.node_key_sealed(paths.SWARM_DIR):
        open_sealed_state(node, key, unlock)
        lock = ["--autolock"]
    first = init_swarm(node, "--force-new-cluster", *lock, check=False)
    if first.returncode != 0:
        note(f"bootstrap: init from the restored state failed ({first.stderr[:300]}); restarting dockerd on it")
        _restart_dockerd()
        init_swarm(node, "--force-new-cluster", *lock)
    dockerd.wait_active_manager(120)
    _record_restored(node, key)
    return f"bootstrap: restored from {key}"


def _move_aside(swarm_dir: str) -> None:
    """The old state to SWARM_DIR.bak-<UTC> (one kept: older ones are removed first)."""
    if not os.path.exists(swarm_dir):
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        for old in glob.glob(glob.escape(swarm_dir) + ".bak-*"):
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old)
            else:
                os.remove(old)
        os.rename(swarm_dir, f"{swarm_dir}.bak-{stamp}")
    except OSError as error:
        raise AgentError(f"bootstrap: cannot move {swarm_dir} aside: {error}") from None


def _restart_dockerd() -> None:
    """Stop dockerd and start it again; if it will not stop, it is still started again."""
    try:
        dockerd.stop()
    finally:
        dockerd.start(120)


def _record_restored(node: NodeEnv, key: str) -> None:
    # The staged copy (backup target local) has done its job; the original stays on the Pulumi machine.
    if node.target == "local":
        try:
            shutil.rmtree(paths.RESTORE_DIR)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise AgentError(
                f"bootstrap: restored from {key}, but cannot remove {paths.RESTORE_DIR}: {error}"
            ) from None
        return
    # Pruning spares the backup a swarm came from (best effort: the restore is done).
    try:
        store.put_text(node, key + "\n", "backups/restored")
    except AgentError:
        note(f"bootstrap: could not record {node.store}backups/restored; pruning may not spare {key}")
