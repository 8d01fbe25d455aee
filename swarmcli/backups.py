"""`scripts/swarm backups`: list, verify and drill a stack's swarm backups in its state
bucket (works after the teardown: the bucket is protected and stays).

    scripts/swarm backups list   --stack dev            # newest first, * marks `latest`
    scripts/swarm backups verify --stack dev [KEY]      # download and check sha256 (default: latest)
                                                        # exit 0 ok, 3 nothing backed up yet, 1 anything else
    scripts/swarm backups drill  --stack dev [KEY] [--on bed | --on ssh://user@host[:port]] [--json]
                                                        # restore it into a throwaway single-node swarm
                                                        # and list its services, secrets, configs, networks
    scripts/swarm backups list   --bucket B --prefix swarm/dev/

The drill checks the backup as the morning would (sha256, the stack's signature, the
sealed unlock key of an autolocked swarm), then restores it on a machine of the test bed
(`--on bed`, the default: root and the bed's Debian packages, see README) or on a
machine you name (`--on ssh://...`: any with Docker's binaries, util-linux and iproute2).
There it runs a dockerd of its own, sealed from the network and holding no image, so no task
of the restored swarm can start (the engine's event log proves it: the drill fails if any
container was created); the machine's own Docker is not touched. With --stack the signing key is read from the
stack's state (`pulumi stack export --show-secrets`); or give --signing-key-file.

With --stack the bucket is read from the stack's state (`pulumi stack export`), which
still holds the protected bucket after `pulumi destroy --exclude-protected`. To restore
an older backup: `pulumi config set swarm:restoreFrom <KEY>` before the next `pulumi up`.

The layout is the one `swarm-node backup` writes: `<prefix>backups/<UTC>.tar.gz`, its
`.sha256` beside it, and `<prefix>backups/latest` holding `<key> <sha256>`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import shlex
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError

from swarmcli import ROOT
from swarmcli.errors import SwarmCliError, UsageError
from swarmcli.outputs import stack_resources
from swarmcli.progress import Progress

BUCKET_TYPE = "aws:s3/bucket:Bucket"
SIGNING_KEY_TYPE = "random:index/randomBytes:RandomBytes"
DRILL_SCRIPT = ROOT / "scripts" / "drill" / "restore-drill.sh"
KEYTOOL = ROOT / "agent" / "swarm_agent" / "keytool.py"
DRILL_TIMEOUT = 600  # seconds for the restore and listing on the drill machine


@dataclass
class Backup:
    key: str  # relative to the prefix, as swarm:restoreFrom takes it
    size: int
    last_modified: str
    latest: bool = False

    def as_json(self) -> dict:
        row = asdict(self)
        return {"key": row["key"], "size": row["size"], "lastModified": row["last_modified"], "latest": row["latest"]}


class BackupError(SwarmCliError):
    pass


class NothingBackedUp(BackupError):
    """No backup and no latest pointer: a first morning, a new swarm is right."""


def signing_key_of_stack(stack: str) -> bytes:
    """The key that signs the stack's backups (a protected resource, kept through the teardown)."""
    keys = [
        r
        for r in stack_resources(stack, show_secrets=True)
        # (The stack holds another RandomBytes: the seed of the nodes' host keys.)
        if r.get("type") == SIGNING_KEY_TYPE and str(r.get("urn", "")).endswith("-backup-signing-key")
    ]
    if not keys or not isinstance(keys[0].get("outputs", {}).get("hex"), str):
        raise BackupError(f"stack {stack} has no backup signing key in its state; pass --signing-key-file")
    return bytes.fromhex(keys[0]["outputs"]["hex"])


def bucket_of_stack(stack: str) -> tuple[str, str]:
    """(bucket, prefix) of a stack, from its state: the bucket survives the teardown."""
    resources = stack_resources(stack)
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
    return _verified(s3, bucket, prefix, key)[1]


def verify_named(s3, bucket: str, prefix: str, key: str | None = None) -> tuple[str, str]:
    """verify(), and which backup it was: (key, sha256); `latest` named by its target."""
    key, sha, _ = _verified(s3, bucket, prefix, key)
    return key, sha


def _expected(s3, bucket: str, prefix: str, key: str | None) -> tuple[str, str | None]:
    """The key to check and the sha256 `latest` promises for it (None: it promises nothing)."""
    pointer = latest_pointer(s3, bucket, prefix)
    if key is not None:
        return key, pointer[1] if pointer is not None and pointer[0] == key else None
    if pointer is not None:
        return pointer
    backups = list_backups(s3, bucket, prefix)
    if backups:
        raise BackupError(
            f"s3://{bucket}/{prefix}backups/ holds backups (the newest: {backups[0].key}) but no latest: "
            f"the morning would refuse to start. Pin one: pulumi config set swarm:restoreFrom {backups[0].key}"
        )
    raise NothingBackedUp(f"no s3://{bucket}/{prefix}backups/latest: nothing backed up yet")


def _verified(s3, bucket: str, prefix: str, key: str | None, keep: bool = False) -> tuple[str, str, bytes]:
    """(key, sha256, and with `keep` the backup's bytes): one download serves both."""
    key, expected_by_pointer = _expected(s3, bucket, prefix, key)
    digest, kept = hashlib.sha256(), []
    try:
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}{key}")["Body"]
    except ClientError as error:
        raise BackupError(f"s3://{bucket}/{prefix}{key}: {error.response['Error']['Code']}") from error
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
        if keep:
            kept.append(chunk)
    got = digest.hexdigest()
    side = (read_text(s3, bucket, f"{prefix}{key}.sha256") or "").split()
    if not side:
        raise BackupError(f"s3://{bucket}/{prefix}{key}.sha256 is missing")
    if side[0] != got:
        raise BackupError(f"s3://{bucket}/{prefix}{key} has sha256 {got}, its .sha256 says {side[0]}")
    if expected_by_pointer and expected_by_pointer != got:
        raise BackupError(f"s3://{bucket}/{prefix}{key} has sha256 {got}, backups/latest says {expected_by_pointer}")
    return key, got, b"".join(kept)


# --- the restore drill ------------------------------------------------------------------


def _keytool():
    spec = importlib.util.spec_from_file_location("swarm_keytool", KEYTOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class DrillReport:
    key: str
    sha256: str
    checks: list[str]
    engine_then: str = "unknown"  # the engine that took the backup (its .meta)
    engine_here: str = "unknown"  # the drill machine's
    autolocked: bool = False
    sections: dict[str, list] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "key": self.key,
            "sha256": self.sha256,
            "checks": self.checks,
            "engineThen": self.engine_then,
            "engineHere": self.engine_here,
            "autolocked": self.autolocked,
            **{name: self.sections.get(name, []) for name in ("services", "secrets", "configs", "networks", "nodes")},
            "tasks": self.sections.get("tasks", []),  # those the restored swarm gave the drill's node
            "containerEvents": self.sections.get("container events", []),  # empty, or the drill failed
        }


def read_meta(s3, bucket: str, prefix: str, key: str) -> dict[str, str]:
    text = read_text(s3, bucket, f"{prefix}{key}.meta") or ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _checked_unlock(keytool, where: str, key: str, sha: str, meta: dict, signing_key: bytes | None, checks: list):
    """The signature checked (when there is a key) and an autolocked backup's unlock key
    unsealed (None: not autolocked). `where` is the backup's s3:// address."""
    if signing_key is None:
        checks.append("signature not checked (no signing key: give --stack or --signing-key-file)")
    elif meta.get("signature") != keytool.sign(key, sha, signing_key):
        why = "has no signature" if "signature" not in meta else "has a signature that does not match"
        raise BackupError(f"{where} {why}: the stack's managers did not write it (forged?)")
    else:
        checks.append("signature ok")
    if "unlock" not in meta:
        return None
    if signing_key is None:
        raise BackupError(
            f"{key} is autolocked: its unlock key is sealed with the stack's signing key; "
            "give --stack or --signing-key-file"
        )
    try:
        unlock = keytool.unwrap_unlock(key, meta["unlock"], signing_key)
    except keytool.KeytoolError as error:
        raise BackupError(str(error)) from error
    checks.append("unlock key unsealed")
    return unlock


def _bundle(files: list[tuple[str, bytes, int]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def prepare_drill(
    s3, bucket: str, prefix: str, key: str | None, signing_key: bytes | None
) -> tuple[bytes, DrillReport]:
    """Check a backup as the morning does and pack what the drill machine needs: the tar, the
    drill script and, for an autolocked backup, swarm-keytool and the unsealed unlock key."""
    if key is None:
        pointer = latest_pointer(s3, bucket, prefix)
        if pointer is None:
            raise BackupError(f"no s3://{bucket}/{prefix}backups/latest; name a backup (scripts/swarm backups list)")
        key = pointer[0]
    _, sha, body = _verified(s3, bucket, prefix, key, keep=True)
    checks = ["sha256 matches"]
    meta = read_meta(s3, bucket, prefix, key)
    unlock = _checked_unlock(_keytool(), f"s3://{bucket}/{prefix}{key}", key, sha, meta, signing_key, checks)
    files = [("backup.tar.gz", body, 0o600), ("restore-drill.sh", DRILL_SCRIPT.read_bytes(), 0o755)]
    if unlock is not None:
        files += [("swarm-keytool", KEYTOOL.read_bytes(), 0o755), ("unlock", f"{unlock}\n".encode(), 0o600)]
    report = DrillReport(key, sha, checks, engine_then=meta.get("engine", "unknown"), autolocked=unlock is not None)
    return _bundle(files), report


# Run as root on the drill machine: unpack the bundle from stdin into a root-only directory.
DRILL_COMMAND = 'umask 077; d=$(mktemp -d) && tar -x -C "$d" && bash "$d/restore-drill.sh" "$d"'


def parse_drill_output(text: str) -> dict[str, list]:
    """restore-drill.sh's sections: `== name` then one JSON value per line."""
    sections: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:].strip(), [])
        elif line.strip() and current is not None:
            current.append(json.loads(line))
    return sections


class SshTarget:
    """A machine you name, over SSH (the ssh client, your agent or --identity); sudo there."""

    def __init__(self, url: str, identity: str | None = None):
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname or not parts.username:
            raise BackupError(f"--on wants bed or ssh://user@host[:port], got {url!r}")
        self.login, self.port = f"{parts.username}@{parts.hostname}", parts.port or 22
        self.identity = identity
        self.name = self.login

    def run(self, bundle: bytes) -> str:
        remote = "sudo bash -c " + shlex.quote(DRILL_COMMAND)
        command = [
            "ssh",
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            *(["-i", self.identity] if self.identity else []),
        ]
        try:
            done = subprocess.run(
                [*command, self.login, remote], input=bundle, capture_output=True, timeout=DRILL_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise BackupError(f"the drill on {self.login} took over {DRILL_TIMEOUT} s") from error
        if done.returncode != 0:
            raise BackupError(f"the drill on {self.login} failed: {_tail(done.stderr)}")
        return done.stdout.decode()


class BedTarget:
    """A throwaway host of the test bed (systemd, Docker from Debian), on a bed of its own
    unless one is given; the host is wiped afterwards, whatever happened."""

    name = "a throwaway host of the test bed"

    def __init__(self, bed=None, image: str | None = None, log=None):
        self.bed, self.image = bed, image
        # Its news on stderr: stdout is the report (--json).
        self.log = log or (lambda message: print(f"drill: {message}", file=sys.stderr))

    def _own_bed(self):
        sys.path.insert(0, str(ROOT / "tests"))
        from testbed.bed import Bed, missing_prerequisites

        problems = missing_prerequisites()
        if problems:
            raise BackupError("a drill on the bed needs: " + "; ".join(problems) + " (or use --on ssh://...)")
        bed = Bed(image=self.image, log=self.log)
        try:
            bed.start()
        except Exception:
            bed.close()
            raise
        return bed

    def run(self, bundle: bytes) -> str:
        own = self.bed is None
        if own:
            self.bed = self._own_bed()
        bed, host = self.bed, None
        try:
            taken = {h.ip for h in bed.hosts.values()}
            ip = next(
                str(bed.network[250 * 256 + i]) for i in range(10, 250) if str(bed.network[250 * 256 + i]) not in taken
            )
            # (The drill runs a dockerd of its own: the host's Docker need not be up.)
            host = bed.create_host("drill", ip, image=self.image)
            done = host.run(["bash", "-c", DRILL_COMMAND], input=bundle, check=False, timeout=DRILL_TIMEOUT)
            if done.returncode != 0:
                raise BackupError(f"the drill on the bed failed: {_tail(done.stderr)}")
            return done.stdout.decode()
        finally:
            if host is not None:
                bed.wipe_host(host.key)
            if own:
                bed.close()
                self.bed = None


def _tail(stderr: bytes) -> str:
    return stderr.decode(errors="replace").strip()[-800:]


def run_drill(
    s3, bucket: str, prefix: str, key: str | None, signing_key: bytes | None, target, progress: Progress | None = None
) -> DrillReport:
    progress = progress or Progress("drill", quiet=True)
    with progress.step(f"checking {key or 'the latest backup'}"):
        bundle, report = prepare_drill(s3, bucket, prefix, key, signing_key)
    with progress.step(f"restoring {report.key} on {getattr(target, 'name', 'the drill machine')}"):
        sections = parse_drill_output(target.run(bundle))
    report.engine_here = (sections.pop("engine", None) or ["unknown"])[0]
    report.sections = sections
    refuse_started_tasks(sections)
    return report


def refuse_started_tasks(sections: dict[str, list]) -> None:
    """The drill's promise, checked from the engine's own log rather than from a listing
    taken after the drain: no container was ever created there."""
    if "container events" not in sections:
        raise BackupError("the drill's output has no container events section, so it cannot show that no task started")
    events = sections["container events"]
    if events:
        names = {(e.get("Action", "?"), e.get("Actor", {}).get("Attributes", {}).get("name", "?")) for e in events}
        seen = sorted(f"{action} {name}" for action, name in names)
        raise BackupError(
            f"the drill's Docker logged {len(events)} container event(s) ({', '.join(seen[:5])}): a task of the "
            "restored swarm started there, which its seal (no network, no image) exists to prevent; "
            "treat that machine as having run the stack's services with their secrets"
        )


def print_drill(report: DrillReport) -> None:
    print(f"drill of {report.key} (sha256 {report.sha256[:12]}): " + ", ".join(report.checks))
    lock = "autolocked, opened with its sealed unlock key; " if report.autolocked else ""
    print(f"  {lock}taken with Docker {report.engine_then}, restored on Docker {report.engine_here}")
    services = report.sections.get("services", [])
    tasks = report.sections.get("tasks", [])
    print(
        f"services ({len(services)}): none of their tasks ran here (the engine logged no container; "
        f"the restored swarm gave the drill's node {len(tasks)} task(s))"
    )
    for svc in services:
        desired = str(svc.get("Replicas", "")).split("/")[-1].split()[0] if svc.get("Replicas") else "?"
        print(f"  {svc.get('Name')}  {svc.get('Mode')}  desired {desired}  {svc.get('Image')}")
    for name, label in (("secrets", "Name"), ("configs", "Name")):
        items = report.sections.get(name, [])
        print(f"{name} ({len(items)}): " + ", ".join(sorted(i.get(label, "?") for i in items)))
    networks = report.sections.get("networks", [])
    print(f"networks ({len(networks)}): " + ", ".join(sorted(f"{n.get('Name')} ({n.get('Driver')})" for n in networks)))
    nodes = report.sections.get("nodes", [])
    print(
        f"nodes in the backup ({len(nodes)}, this drill's included): "
        + ", ".join(f"{n.get('Hostname')} {n.get('Status')}" for n in nodes)
    )


# --- the verbs ----------------------------------------------------------------------------


def location(args: argparse.Namespace) -> tuple[str, str]:
    """(bucket, prefix) from --bucket and --prefix, else from the stack's state."""
    if args.bucket and args.prefix:
        return args.bucket, args.prefix if args.prefix.endswith("/") else args.prefix + "/"
    if args.stack:
        return bucket_of_stack(args.stack)
    raise UsageError("give --stack STACK (or set $PULUMI_STACK), or --bucket B and --prefix P")


def s3_client(endpoint_url: str | None):
    return boto3.client("s3", endpoint_url=endpoint_url)


def command_list(args: argparse.Namespace) -> int:
    bucket, prefix = location(args)
    backups = list_backups(s3_client(args.endpoint_url), bucket, prefix)
    if args.json:
        print(json.dumps({"bucket": bucket, "prefix": prefix, "backups": [b.as_json() for b in backups]}, indent=2))
        return 0
    if not backups:
        print(f"no backups under s3://{bucket}/{prefix}backups/")
    for b in backups:
        print(f"{'*' if b.latest else ' '} {b.key}  {b.size:>10}  {b.last_modified}")
    return 0


def command_verify(args: argparse.Namespace) -> int:
    bucket, prefix = location(args)
    key, sha = verify_named(s3_client(args.endpoint_url), bucket, prefix, args.key)
    if args.json:
        print(json.dumps({"bucket": bucket, "prefix": prefix, "key": key, "sha256": sha, "ok": True}, indent=2))
    else:
        print(f"ok {args.key or 'latest'} sha256 {sha}")
    return 0


def command_drill(args: argparse.Namespace) -> int:
    progress = Progress("drill")
    with progress.step("reading where the backup is and the key that signed it"):
        bucket, prefix = location(args)
        signing_key = None
        if args.signing_key_file:
            signing_key = bytes.fromhex(Path(args.signing_key_file).read_text().strip())
        elif args.stack:
            signing_key = signing_key_of_stack(args.stack)
    if args.on == "bed":
        target = BedTarget(log=progress.note)
    else:
        target = SshTarget(args.on, args.identity)
    report = run_drill(s3_client(args.endpoint_url), bucket, prefix, args.key, signing_key, target, progress)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_drill(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`scripts/swarm backups ARGV` (list|verify|drill ...), as the old scripts/backups.py took them."""
    from swarmcli.main import main as cli

    return cli(["backups", *(sys.argv[1:] if argv is None else argv)])
