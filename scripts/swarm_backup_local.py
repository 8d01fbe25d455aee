#!/usr/bin/env python3
"""Backups of a swarm on machines you bring, kept on the machine that runs Pulumi.

With `swarm:backupTarget local` the program runs this (as `local.Command`s):

  check  at `pulumi up`: the backup directory can be written and `ssh` is there, so a
         broken setup shows in the morning, not at the nightly teardown;
  push   before bootstrap: sends backups/latest and the backup it names (or the one
         `swarm:restoreFrom` pins) to manager 0, where `swarm-node bootstrap` verifies
         them exactly as it verifies S3 objects;
  fetch  at `pulumi destroy`, before the nodes leave: runs `swarm-node backup --stdout`
         on manager 0, checks the sha256 it reports, and keeps the last `--keep`.

Layout under the directory mirrors the S3 one: <dir>/<prefix>backups/<UTC time>.tar.gz,
its .sha256 and .meta (the engine version and address a restore checks), `latest`
("backups/<name> <sha256>") and `restored` (the backup the last push staged, which
pruning spares, as it spares the latest one and a pinned one). Files are 0600: a backup holds
the swarm's keys. The SSH key comes in the environment (SWARM_SSH_PRIVATE_KEY), never
in an argument, and is written to a 0600 file that is removed afterwards. Standard
library only: it runs with whichever python3 is on PATH.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agent.swarm_agent import contract, tarballs

NODE_CLI = "/usr/local/sbin/swarm-node"
BACKUP_NAME = re.compile(r"^\d{8}T\d{6}Z\.tar\.gz$")
REPORT = re.compile(r"^backup: sha256 ([0-9a-f]{64}) name (\d{8}T\d{6}Z\.tar\.gz)(?: meta (.*))?$")
KEY_ENV = "SWARM_SSH_PRIVATE_KEY"
# Bounded: a dead manager fails the teardown within about a minute (6 dials of 10 s).
SSH_OPTIONS = [
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
    "-o", "ConnectionAttempts=6",
    "-o", "ServerAliveInterval=15",
]  # fmt: skip
TIMEOUT = 1800


def fail(message: str) -> None:
    print(f"swarm_backup_local: {message}", file=sys.stderr)
    raise SystemExit(1)


@contextmanager
def ssh_command(args: argparse.Namespace):
    key = os.environ.get(KEY_ENV, "")
    if "PRIVATE KEY" not in key:
        fail(f"{KEY_ENV} does not hold an SSH private key (the program passes swarm:sshPrivateKey)")
    if shutil.which("ssh") is None:
        fail("no 'ssh' on PATH; install the OpenSSH client on the machine running Pulumi")
    with tempfile.TemporaryDirectory(prefix="swarm-ssh-") as scratch:
        key_file = Path(scratch) / "key"
        key_file.touch(mode=0o600)
        key_file.write_text(key if key.endswith("\n") else key + "\n")
        known = _known_hosts(args, Path(scratch) / "known_hosts")
        login = f"{args.user}@{args.host}"
        yield ["ssh", "-i", str(key_file), "-p", str(args.port), *SSH_OPTIONS, *known, login, "sudo"]


def _known_hosts(args: argparse.Namespace, path: Path) -> list[str]:
    """The node's host key as the program pins it (--host-key): nothing else gets the backup."""
    if not args.host_key:
        # Only a teardown whose command was frozen in the state before host keys were
        # pinned: the next `pulumi up` writes the key into it.
        print("swarm_backup_local: no --host-key (run 'pulumi up' once): the host key is not checked", file=sys.stderr)
        return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    fields = args.host_key.split()
    if len(fields) < 2:
        fail(f"--host-key must be '<type> <base64>' (got {args.host_key!r})")
    name = args.host if args.port == 22 else f"[{args.host}]:{args.port}"
    path.write_text(f"{name} {fields[0]} {fields[1]}\n")
    checked = ["StrictHostKeyChecking=yes", f"UserKnownHostsFile={path}", f"HostKeyAlgorithms={fields[0]}"]
    return [word for option in checked for word in ("-o", option)]


def store(args: argparse.Namespace) -> Path:
    return Path(args.dir).expanduser() / args.prefix / "backups"


def write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(text)
    os.replace(scratch, path)


def cmd_check(args: argparse.Namespace) -> None:
    directory = store(args)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = directory / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        fail(f"cannot write backups to {directory}: {error}; fix it or pulumi config set swarm:backupDirectory")
    if shutil.which("ssh") is None:
        fail("no 'ssh' on PATH; the nightly backup needs the OpenSSH client on the machine running Pulumi")
    print(f"backups go to {directory}")


def read_report(errors: str, host: str) -> tuple[str, str, str]:
    """(sha256, name, .meta text) from the agent's swarm-backup line on stderr (or, from a
    node that still runs the bash agent, its `backup: sha256 ... name ... meta ...` line)."""
    try:
        record = contract.read("swarm-backup", errors)
    except contract.ContractError:
        legacy = next((m for m in map(REPORT.match, reversed(errors.splitlines())) if m), None)
        if legacy is None:
            fail(f"backup on {host} did not report its sha256: {errors or 'no output'}")
        want, name, meta = legacy.groups()
        return want, name, "\n".join((meta or "").split()) + "\n" if meta else ""
    name = record["key"].removeprefix("backups/")
    if not BACKUP_NAME.match(name) or not re.fullmatch(r"[0-9a-f]{64}", record["sha256"]):
        fail(f"backup on {host} reported a name or sha256 that is not one: {name!r}")
    meta = "".join(f"{k}={v}\n" for k, v in record["meta"].items())
    return record["sha256"], name, meta


def cmd_fetch(args: argparse.Namespace) -> None:
    directory = store(args)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    incoming = directory / f".incoming-{os.getpid()}"
    try:
        with ssh_command(args) as ssh, open(incoming, "wb") as out:
            proc = subprocess.run(
                [*ssh, NODE_CLI, "backup", "--stdout"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=TIMEOUT,
                check=False,
            )
        errors = proc.stderr.decode(errors="replace").strip()
        if proc.returncode != 0:
            fail(f"backup on {args.host} failed (exit {proc.returncode}): {errors or 'no output'}")
        want, name, meta = read_report(errors, args.host)
        got = tarballs.sha256_file(str(incoming))
        if got != want:
            fail(f"the backup from {args.host} arrived with sha256 {got}, not {want}; the latest pointer was not moved")
        os.replace(incoming, directory / name)
    finally:
        incoming.unlink(missing_ok=True)
    write_atomically(directory / f"{name}.sha256", f"{want}  {name}\n")
    if meta:
        write_atomically(directory / f"{name}.meta", meta)
    write_atomically(directory / "latest", f"backups/{name} {want}\n")
    prune(directory, args.keep, spare={name, *(n.removeprefix("backups/") for n in args.spare)})
    print(f"backup: wrote {directory / name} sha256 {want}")


def prune(directory: Path, keep: int, spare: set[str]) -> None:
    """The newest `keep` stay, and never the target of latest, a pinned backup or the last
    restored one. Best effort: latest has moved, the night's backup is safe."""
    restored = directory / "restored"
    if restored.is_file():
        spare.add(restored.read_text().strip().removeprefix("backups/"))
    for old in sorted((p for p in directory.iterdir() if BACKUP_NAME.match(p.name)), reverse=True)[keep:]:
        if old.name in spare:
            print(f"backup: kept {old.name} (latest, pinned or last restored)", file=sys.stderr)
            continue
        try:
            for path in (old, old.with_name(old.name + ".sha256"), old.with_name(old.name + ".meta")):
                path.unlink(missing_ok=True)
        except OSError as error:
            print(f"backup: could not prune {old.name}: {error}; the next backup tries again", file=sys.stderr)
            continue
        print(f"backup: pruned {old.name}", file=sys.stderr)


def newest(directory: Path) -> str | None:
    names = sorted((p.name for p in directory.iterdir() if BACKUP_NAME.match(p.name)), reverse=True)
    return f"backups/{names[0]}" if names else None


def cmd_push(args: argparse.Namespace) -> None:
    directory = store(args)
    names: list[str] = []
    if args.restore == "latest":
        latest = directory / "latest"
        if latest.is_file():
            names.append("backups/latest")
            key = (latest.read_text().split() or [""])[0]
        elif directory.is_dir() and (found := newest(directory)):
            fail(
                f"refusing to start a new swarm: {directory} holds backups (the newest: {found}) but no latest. "
                "A new swarm would become tonight's latest, and pruning would then remove the real ones. Restore "
                f"one: pulumi config set swarm:restoreFrom {found}; or start a new swarm on purpose: "
                "pulumi config set swarm:restoreFrom none"
            )
        else:
            key = ""
    else:
        key = args.restore
    names += [
        n
        for n in (key, key + ".sha256", key + ".meta")
        if key.startswith("backups/") and (directory.parent / n).is_file()
    ]
    # An empty archive is pushed too: it clears whatever an earlier morning left staged.
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(str(directory.parent / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(directory.parent / name, "rb") as handle:
                tar.addfile(info, handle)
    with ssh_command(args) as ssh:
        proc = subprocess.run(
            [*ssh, NODE_CLI, "stage-restore"],
            input=archive.getvalue(),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if proc.returncode != 0:
        fail(f"staging the backup on {args.host} failed (exit {proc.returncode}): {output or 'no output'}")
    if key:
        # Pruning spares the backup this swarm comes from.
        write_atomically(directory / "restored", f"{key}\n")
    what = ", ".join(names) if names else f"nothing (no backup in {directory}: a new swarm starts)"
    print(f"staged {what} on {args.host}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="swarm_backup_local.py", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb in ("check", "fetch", "push"):
        sub = verbs.add_parser(verb)
        sub.add_argument("--dir", required=True, help="swarm:backupDirectory")
        sub.add_argument("--prefix", required=True, help="the stack's prefix, swarm/<stack>/")
        if verb != "check":
            sub.add_argument("--host", required=True)
            sub.add_argument("--port", type=int, default=22)
            sub.add_argument("--user", required=True)
            sub.add_argument("--host-key", default="", help="the node's SSH host key, '<type> <base64>'")
        if verb == "fetch":
            sub.add_argument("--keep", type=int, default=14)
            sub.add_argument("--spare", action="append", default=[], help="a pinned backups/<name>.tar.gz")
        if verb == "push":
            sub.add_argument("--restore", default="latest", help="latest or backups/<name>.tar.gz")
    args = parser.parse_args(argv)
    if not re.match(r"^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+/$", args.prefix):
        fail(f"--prefix must look like swarm/<stack>/ (got {args.prefix!r})")
    if (
        args.verb == "push"
        and args.restore != "latest"
        and not re.match(r"^backups/[A-Za-z0-9._-]+\.tar\.gz$", args.restore)
    ):
        fail(f"--restore must be latest or backups/<name>.tar.gz (got {args.restore!r})")
    os.umask(0o077)
    {"check": cmd_check, "fetch": cmd_fetch, "push": cmd_push}[args.verb](args)


if __name__ == "__main__":
    main()
