"""Backups you can trust, on the bed: only from a manager that knows today's Raft state,
with what a restore must check recorded beside them, and a morning that refuses what it
cannot trust instead of starting (or restoring) the wrong swarm.

One stack (3 managers + 1 worker) through a partitioned manager 0, a night, a morning
fed a hollow backup, a backup from a newer engine, one from another address and a
missing `latest`, then the real morning; pruning with a pin; a wedged Docker; and a
teardown with `backupOnDestroy` false.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import hmac
import io
import json
import re
import tarfile
import time

import pytest
from swarm_agent import contract
from testbed.bed import BED_REGION, LOCAL_BUSYBOX, S3_CREDENTIALS, BedError, wait_until
from testbed.engine import EngineError, scenario_engine
from testbed.verify import backups_script, bucket_of, fp, nodes, read, signing_key_of

pytestmark = pytest.mark.e2e

STACK = "trust"
PREFIX = f"swarm/{STACK}/"


@pytest.fixture(scope="module")
def engine(bed, log_dir):
    # Its own part of the bed's /16 (third octets 160-191).
    yield from scenario_engine(bed, log_dir, STACK, (3, 1), (160, 19))


@pytest.fixture(scope="module")
def first(engine):
    result = engine.up()
    leader = engine.host_of("manager-0")
    leader.run(["docker", "secret", "create", "kept-secret", "-"], input=b"kept")
    # A task on every node, manager 0 included, with a secret: what a drill must not start.
    leader.docker("service", "create", "--detach", "--quiet", "--name", "drill-canary", "--mode", "global",
                  "--secret", "kept-secret", "--restart-delay", "1s", "--no-resolve-image",
                  LOCAL_BUSYBOX, "sleep", "86400")  # fmt: skip
    return result


def put(bed, bucket: str, key: str, body: bytes) -> None:
    bed.s3().put_object(Bucket=bucket, Key=f"{PREFIX}{key}", Body=body)


def latest(bed, bucket: str) -> tuple[str, str]:
    key, sha = read(bed, bucket, f"{PREFIX}backups/latest").decode().split()
    return key, sha


def refused(engine, *fragments: str) -> str:
    with pytest.raises(EngineError) as failure:
        engine.up()
    message = str(failure.value)
    assert "-bootstrap" in message, message[-2000:]
    for fragment in fragments:
        assert fragment in message, message[-2000:]
    return message


def test_a_manager_cut_off_from_the_others_backs_up_nothing(engine, first, bed):
    leader = engine.host_of("manager-0")
    others = [engine.host_of(f"manager-{i}").ip for i in (1, 2)]
    rules = [["INPUT", "-s", ip, "-j", "DROP"] for ip in others] + [["OUTPUT", "-d", ip, "-j", "DROP"] for ip in others]
    for rule in rules:
        leader.run(["iptables", "-w", "10", "-I", *rule])
    try:
        wait_until(
            "manager 0 to lose the leader",
            lambda: leader.run(["docker", "node", "ls"], check=False, timeout=60).returncode != 0,
            120,
            interval=2,
        )
        hosts_before = sorted(bed.hosts)
        with pytest.raises(EngineError) as failure:
            engine.destroy()
        assert "backup: this manager sees no leader" in str(failure.value)
        assert sorted(bed.hosts) == hosts_before, "destroy went on without a backup"
    finally:
        for rule in rules:
            leader.run(["iptables", "-w", "10", "-D", *rule], check=False)
    wait_until(
        "manager 0 to see a leader again",
        lambda: leader.run(["docker", "node", "ls"], check=False, timeout=60).returncode == 0,
        120,
        interval=2,
    )


TOKEN_REQUEST = "printf 'PUT /latest/api/token HTTP/1.0\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n\\r\\n'"


def token_from_a_container(host, *network: str) -> str:
    """What a container on `host` gets back when it asks the metadata service for a token."""
    probe = f"{TOKEN_REQUEST} | timeout 8 nc 169.254.169.254 80 | tail -n 1"
    return host.docker("run", "--rm", *network, LOCAL_BUSYBOX, "sh", "-c", probe, timeout=60).strip()


def test_no_container_reaches_a_role_and_workers_hold_only_their_logs_role(engine, first, bed):
    bucket, endpoint = bucket_of(engine), bed.s3_endpoint
    manager, worker = engine.host_of("manager-1"), engine.host_of("worker-0")
    # The control: on the host's own network the token comes back (where the mirror ran
    # before it moved behind the bridge).
    assert len(token_from_a_container(manager, "--network", "host")) > 20
    # Behind Docker's bridge the answer dies at the host (hop limit 1): no token, on any node.
    for host in (manager, worker):
        assert token_from_a_container(host) == "", f"a container on {host.name} got a metadata token"
    # Without a token, the credentials are refused outright (IMDSv2 required).
    credentials = "wget -q -O- http://169.254.169.254/latest/meta-data/iam/security-credentials/ 2>&1 || true"
    assert "401" in worker.docker("run", "--rm", LOCAL_BUSYBOX, "sh", "-c", credentials, timeout=60)
    # A worker's own role (swarm:logs cloudwatch, the default) writes its logs and metrics and
    # nothing else: its machine boots with the workers' profile, whose one policy holds no S3
    # right. moto does not enforce IAM, so the refusal itself is AWS's (tests/unit/test_rights.py).
    states = list(engine.state.values())
    instance = next(s for s in states if s.type == "aws:ec2/instance:Instance" and s.name.endswith("-worker-0"))
    kind = "aws:iam/instanceProfile:InstanceProfile"
    profile = next(s for s in states if s.type == kind and s.name == f"swarm-{STACK}-worker-profile")
    assert instance.inputs["iamInstanceProfile"] == profile.outputs["name"]  # IAM's name carries a suffix
    policy = next(s for s in states if s.type == "aws:iam/rolePolicy:RolePolicy" and s.name.endswith("-worker-rights"))
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert sorted(s["Sid"] for s in statements) == ["PublishMetrics", "ShipLogs"]
    assert not [a for s in statements for a in s["Action"] if not a.startswith(("logs:", "cloudwatch:"))]
    listing = ["aws", "--endpoint-url", endpoint, "--region", "eu-west-1", "s3api", "list-objects-v2",
               "--bucket", bucket, "--prefix", f"{PREFIX}backups/"]  # fmt: skip
    assert manager.run(listing, timeout=120).returncode == 0


def mirror_container(engine) -> tuple[object, str] | None:
    """(host, container id) of the running mirror task, if one runs."""
    for i in range(3):
        host = engine.host_of(f"manager-{i}")
        found = host.docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=swarm-mirror_mirror").split()
        if found:
            return host, found[0]
    return None


def test_the_mirror_holds_its_own_key_and_cannot_reach_the_role(engine, first, bed):
    """The registry answers anyone on the managers' port: it must hold neither the
    managers' role nor anything beyond its cache."""
    host, container = wait_until("a running mirror", lambda: mirror_container(engine), 60, interval=2)
    probe = f"{TOKEN_REQUEST} | busybox timeout 8 busybox nc 169.254.169.254 80 | busybox tail -n 1"
    token = host.docker("exec", container, "busybox", "sh", "-c", probe, timeout=60).strip()
    assert token == "", "the mirror got a metadata token: it could reach the managers' role"
    # It still answers on the manager's address (host-mode publishing), for every node's dockerd.
    assert host.run(["curl", "-fsS", "-o", "/dev/null", f"http://{host.ip}:5000/v2/"], timeout=30).returncode == 0
    # Its key is the stack's mirror key (an IAM user of its own), not the role's.
    (key,) = [s for s in engine.state.values() if s.type == "aws:iam/accessKey:AccessKey"]
    credentials = host.docker("exec", container, "busybox", "cat", "/run/secrets/aws-credentials")
    assert f"aws_access_key_id = {key.id}\n" in credentials and key.id.startswith("AKIA")
    (user,) = [s for s in engine.state.values() if s.type == "aws:iam/userPolicy:UserPolicy"]
    statements = json.loads(user.outputs["policy"])["Statement"]
    assert {r for st in statements for r in st["Resource"]} >= {f"arn:aws:s3:::{bucket_of(engine)}/{PREFIX}mirror/*"}
    # And the key is nowhere on the manager's disk (it came on stdin, into Raft only).
    found = host.run(["grep", "-rlF", "-f", "-", "/etc/swarm"], input=key.outputs["secret"].encode(), check=False)
    assert found.returncode == 1 and not found.stdout, found.stdout


def test_one_mirror_writes_and_another_manager_serves_what_it_cached(engine, first, bed):
    leader, worker = engine.host_of("manager-0"), engine.host_of("worker-0")

    def mirror_node() -> str:
        tasks = leader.docker("service", "ps", "swarm-mirror_mirror", "--filter", "desired-state=running",
                              "--format", "{{.Node}} {{.CurrentState}}")  # fmt: skip
        running = [line.split()[0] for line in tasks.splitlines() if " Running" in line]
        return running[0] if len(running) == 1 else ""

    first = wait_until("one running mirror", mirror_node, 60)
    bed.push_upstream("library/one-writer", extra=b"cached once, served by another")
    worker.docker("pull", "one-writer", timeout=180)
    worker.docker("image", "rm", "one-writer")
    leader.docker("node", "update", "--availability", "drain", first)
    try:
        try:
            second = wait_until("the mirror on another manager", lambda: (n := mirror_node()) != first and n, 120)
        except BedError as error:
            tasks = leader.docker("service", "ps", "--no-trunc", "swarm-mirror_mirror")
            raise BedError(f"{error}:\n{tasks}") from None
        # (A proxy registry checks its upstream when it starts, so the upstream goes only now.)
        bed.stop_upstream()
        # Docker Hub's stand-in is gone: only the cache the first mirror filled can answer.
        worker.docker("pull", "one-writer", timeout=180)
        assert second != first
    finally:
        bed.start_upstream()
        leader.docker("node", "update", "--availability", "active", first)


def test_a_night_records_the_engine_and_the_address_beside_its_backup(engine, bed):
    address = engine.host_of("manager-0").ip
    version = engine.host_of("manager-0").docker("version", "--format", "{{.Server.Version}}").strip()
    engine.destroy()
    bucket = bucket_of(engine)
    key, sha = latest(bed, bucket)
    tarball = read(bed, bucket, f"{PREFIX}{key}")
    assert hashlib.sha256(tarball).hexdigest() == sha
    names = tarfile.open(fileobj=io.BytesIO(tarball)).getnames()
    assert any(n.startswith("swarm/raft/") for n in names) and any(n.startswith("swarm/certificates/") for n in names)
    meta = dict(line.split("=", 1) for line in read(bed, bucket, f"{PREFIX}{key}.meta").decode().split())
    assert meta["engine"] == version and meta["addr"] == address


def test_a_drill_restores_last_night_into_a_throwaway_swarm_and_lists_it(engine, bed, capsys, monkeypatch):
    """`scripts/swarm backups drill`, as a team runs it: on a bed of its own (a second one), from
    the bucket, checked with the stack's signing key; this stack's machines are gone."""
    backups = backups_script()
    # As a team's shell has them: credentials for the bucket (moto's) in the environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", BED_REGION)
    bucket = bucket_of(engine)
    key, _ = latest(bed, bucket)
    key_file = engine.log_dir / "signing.key"
    key_file.write_text(signing_key_of(engine).hex())
    key_file.chmod(0o600)
    argv = ["drill", "--bucket", bucket, "--prefix", PREFIX, "--endpoint-url", bed.s3_endpoint,
            "--signing-key-file", str(key_file), "--json"]  # fmt: skip
    try:
        assert backups.main(argv) == 0, capsys.readouterr().err
    finally:
        key_file.unlink()
    report = json.loads(capsys.readouterr().out)
    assert report["key"] == key and report["checks"] == ["sha256 matches", "signature ok"]
    assert "kept-secret" in [s["Name"] for s in report["secrets"]]
    assert "swarm-mirror_mirror" in [s["Name"] for s in report["services"]]
    assert "ingress" in [n["Name"] for n in report["networks"]]
    # The restored swarm gave the drill's node manager 0's canary (its image is on every bed
    # host, the drill's too), and the drill's sealed Docker refused it before any container:
    # its event log, read to the end of the drill, holds no container at all.
    canaries = [t for t in report["tasks"] if t["Name"].startswith("drill-canary.")]
    assert any(t["CurrentState"].startswith("Rejected") and "No such image" in t["Error"] for t in canaries), canaries
    assert report["containerEvents"] == []
    names = {n["Hostname"]: n["Status"] for n in report["nodes"]}
    # Yesterday's other nodes, not (yet) heard from; manager 0's identity is the drill machine's.
    yesterday = {f"swarm-{STACK}-manager-1", f"swarm-{STACK}-manager-2", f"swarm-{STACK}-worker-0"}
    assert yesterday <= set(names) and {names[n] for n in yesterday} <= {"Unknown", "Down"}, names
    # The drill's machine is gone, and so is its bed.
    assert not [h for h in bed.hosts.values() if h.name == "drill"]

    # Checked with another stack's key, it is refused before any machine is made.
    with pytest.raises(backups.BackupError, match="does not match"):
        backups.run_drill(bed.s3(), bucket, PREFIX, key, bytes(32), backups.BedTarget(bed))


def test_the_morning_refuses_what_it_cannot_trust_and_then_restores_the_real_backup(engine, first, bed):
    bucket = bucket_of(engine)
    key, sha = latest(bed, bucket)
    original = read(bed, bucket, f"{PREFIX}{key}")
    meta = read(bed, bucket, f"{PREFIX}{key}.meta")

    def plant(body: bytes) -> None:
        """A backup in the store with every checksum that matches it."""
        digest = hashlib.sha256(body).hexdigest()
        put(bed, bucket, key, body)
        put(bed, bucket, f"{key}.sha256", f"{digest}  {key.removeprefix('backups/')}\n".encode())
        put(bed, bucket, "backups/latest", f"{key} {digest}\n".encode())

    # Hollow: a tar of swarm/ alone restores as a new cluster (a new CA, new tokens).
    hollow = io.BytesIO()
    with tarfile.open(fileobj=hollow, mode="w") as tar:
        info = tarfile.TarInfo("swarm")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    plant(gzip.compress(hollow.getvalue()))
    refused(engine, f"refusing to restore s3://{bucket}/{PREFIX}{key}", "hollow")

    # Forged: a real-looking backup with matching checksums, planted by something that can
    # write to the bucket but does not hold the stack's signing key.
    forged = gzip.compress(gzip.decompress(original) + b"\0" * 1024)
    plant(forged)
    forged_sha = hashlib.sha256(forged).hexdigest()
    put(bed, bucket, f"{key}.meta", re.sub(rb"signature=\w+", b"signature=" + b"0" * 64, meta))
    refused(engine, "its signature does not match", "forged or altered")
    bed.s3().delete_object(Bucket=bucket, Key=f"{PREFIX}{key}.meta")
    refused(engine, "it has no .meta, so no signature")
    # Naming it, as a refusal once advised on-call to, does not restore it either (item 1).
    engine.config["swarm:restoreFrom"] = key
    refused(engine, "it has no .meta, so no signature", "swarm:restoreUnsigned true")
    del engine.config["swarm:restoreFrom"]
    assert forged_sha != sha

    # Signed by the stack's own key (so only the checks after the signature speak): a
    # backup from a newer engine, and one from another address.
    plant(original)
    fields = dict(line.split("=", 1) for line in meta.decode().split())
    signing_key = bytes.fromhex(
        engine.host_of("manager-0").run(["cat", "/etc/swarm/backup-signing.key"]).stdout.decode()
    )

    def signed(name: str = key, **changes: str) -> bytes:
        """A .meta as the managers sign it: the name and sha256, then every other field."""
        values = {k: v for k, v in {**fields, **changes}.items() if k != "fields"}
        values["signature"] = hmac.new(signing_key, f"{name} {sha}".encode(), hashlib.sha256).hexdigest()
        canonical = "".join(f"{k}={values[k]}\n" for k in sorted(values) if k != "signature")
        text = f"meta {name} {sha}\n{canonical}".encode()
        values["fields"] = hmac.new(signing_key, text, hashlib.sha256).hexdigest()
        return "".join(f"{k}={v}\n" for k, v in values.items()).encode()

    assert signed() == meta, "the test's signature differs from the node's"
    # The fields are signed as well: an engine changed under the name's signature is forged.
    put(bed, bucket, f"{key}.meta", meta.replace(f"engine={fields['engine']}".encode(), b"engine=20.10.0"))
    refused(engine, "its signature does not match")
    put(bed, bucket, f"{key}.meta", signed(engine="99.0.0"))
    refused(engine, "it was taken with Docker 99.0.0", "this node runs Docker", "older engine")
    address = engine.host_of("manager-0").ip
    put(bed, bucket, f"{key}.meta", signed(addr="10.9.9.9"))
    refused(engine, "taken on a manager at 10.9.9.9", f"this one is at {address}")

    put(bed, bucket, f"{key}.meta", meta)
    bed.s3().delete_object(Bucket=bucket, Key=f"{PREFIX}backups/latest")
    refused(engine, "refusing to start a new swarm", f"signature checks: {key}", f"swarm:restoreFrom {key}")

    # Emptied: `aws s3 rm --recursive` on the backups leaves delete markers in the versioned
    # bucket. Nothing is current, yet the morning must not start a new swarm (item 3).
    put(bed, bucket, "backups/latest", f"{key} {sha}\n".encode())
    s3 = bed.s3()
    for listed in s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}backups/")["Contents"]:
        s3.delete_object(Bucket=bucket, Key=listed["Key"])
    refused(engine, "refusing to start a new swarm: nothing is current under", f"(the newest: {key})")
    # The way back the message gives: each object's newest version made current again.
    # (S3 lists a key's versions newest first.)
    answer = s3.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}backups/")
    for wanted in (key, f"{key}.sha256", f"{key}.meta", "backups/latest"):
        newest = next(v for v in answer["Versions"] if v["Key"] == f"{PREFIX}{wanted}")
        source = {"Bucket": bucket, "Key": newest["Key"], "VersionId": newest["VersionId"]}
        s3.copy_object(Bucket=bucket, Key=newest["Key"], CopySource=source)
    assert latest(bed, bucket) == (key, sha)

    # Rolled back: a newer backup the managers signed, and latest left on the older one (as
    # a bucket writer moving latest back, or copying an old version of it, leaves it).
    stamp = datetime.datetime.strptime(key, "backups/%Y%m%dT%H%M%SZ.tar.gz") + datetime.timedelta(seconds=1)
    newer = stamp.strftime("backups/%Y%m%dT%H%M%SZ.tar.gz")
    put(bed, bucket, newer, original)
    put(bed, bucket, f"{newer}.sha256", f"{sha}  {newer.removeprefix('backups/')}\n".encode())
    put(bed, bucket, f"{newer}.meta", signed(newer))
    refused(engine, f"a newer backup signed by this stack's managers exists, {newer}")
    for suffix in ("", ".sha256", ".meta"):
        s3.delete_object(Bucket=bucket, Key=f"{PREFIX}{newer}{suffix}")
    refused(engine, f"newer backups were deleted from the bucket ({newer})")
    # The way on, once someone has looked: the backup named on purpose.
    engine.config["swarm:restoreFrom"] = key
    second = engine.up()
    del engine.config["swarm:restoreFrom"]
    assert second.outputs["bootstrapResult"] == f"bootstrap: restored from {key}"
    assert fp(second.outputs["workerJoinToken"]) == fp(first.outputs["workerJoinToken"])
    assert "kept-secret" in engine.host_of("manager-0").docker("secret", "ls", "--format", "{{.Name}}").split()
    assert read(bed, bucket, f"{PREFIX}backups/restored").decode().strip() == key


def test_pruning_spares_latest_a_pinned_backup_and_the_last_restored(engine, bed):
    bucket = bucket_of(engine)
    restored = read(bed, bucket, f"{PREFIX}backups/restored").decode().strip()
    pinned = "backups/20000101T000000Z.tar.gz"  # older than any: first in line for pruning
    # (A copy under another name: its signature would not match, so it has no .meta, which
    # only a backup named in swarm:restoreFrom with swarm:restoreUnsigned true may lack.)
    for suffix in ("", ".sha256"):
        put(bed, bucket, f"{pinned}{suffix}", read(bed, bucket, f"{PREFIX}{restored}{suffix}"))

    def keep_only_one() -> None:
        engine.host_of("manager-0").run(["sed", "-i", "s/^SWARM_BACKUP_KEEP=.*/SWARM_BACKUP_KEEP=1/", "/etc/swarm/env"])

    def backups() -> set[str]:
        listing = bed.s3().list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}backups/")["Contents"]
        return {o["Key"].removeprefix(PREFIX) for o in listing if o["Key"].endswith(".tar.gz")}

    engine.config["swarm:restoreFrom"] = pinned
    engine.config["swarm:restoreUnsigned"] = "true"
    engine.up()  # a live swarm: only the backup hook learns of the pin
    keep_only_one()
    engine.destroy()
    second, _ = latest(bed, bucket)
    assert {second, restored, pinned} <= backups(), "the last restored or the pinned backup was pruned"

    assert engine.up().outputs["bootstrapResult"] == f"bootstrap: restored from {pinned}"
    keep_only_one()
    engine.destroy()
    third, _ = latest(bed, bucket)
    assert backups() == {third, pinned}, backups()  # the second night's and the once-restored one went
    del engine.config["swarm:restoreFrom"], engine.config["swarm:restoreUnsigned"]


def test_a_wedged_docker_fails_a_verb_within_its_bound(engine, bed):
    engine.up()
    manager = engine.host_of("manager-2")
    pid = int(manager.run(["systemctl", "show", "-P", "MainPID", "docker.service"]).stdout.decode())
    manager.run(["kill", "-STOP", str(pid)])
    try:
        started = time.monotonic()
        probe = manager.run(["env", "SWARM_DOCKER_TIMEOUT=2", "swarm-node", "probe"], timeout=60)
        assert time.monotonic() - started < 20
        assert contract.read("swarm-probe", probe.stdout.decode())["state"] == "down"
    finally:
        manager.run(["kill", "-CONT", str(pid)])
    wait_until("manager 2's Docker", lambda: manager.run(["docker", "info"], check=False).returncode == 0, 60)
    assert len(nodes(engine.host_of("manager-0"))) == 4


def test_backup_on_destroy_false_skips_the_next_teardowns_backup(engine, bed):
    bucket = bucket_of(engine)
    engine.config["swarm:backupOnDestroy"] = False
    result = engine.up()
    assert not [u for u, op in result.changed().items() if op in ("delete", "replace") and u.endswith("-backup")]
    before = latest(bed, bucket)
    engine.destroy()
    assert latest(bed, bucket) == before
    assert "backup: skipped (swarm:backupOnDestroy is false)" in engine.log_path.read_text()
