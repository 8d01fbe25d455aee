"""Machines the user brings (swarm:hosts), on the bed: form, destroy, form again, restore.

The bed makes the machines first, as a user would own them (sshd, a sudo user with a
key, no Docker swarm, and no EC2 metadata service, so S3 works only with the keys the
program hands the hosts). They are given to the program as `swarm:hosts`. `destroy`
must back up and leave them clean (`docker info`: swarm inactive) but standing; the next
`up` must bring back the same join tokens and yesterday's service.

Two stacks: one backs up to an existing S3 bucket with keys from config (and its mirror
caches there with a key of its own, from config too), the other to a directory on this
machine (its mirror caches in a volume on the manager).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from testbed.bed import BED_REGION, LOCAL_BUSYBOX, wait_until
from testbed.engine import Engine, files_under, generate_key, scan_for

pytestmark = pytest.mark.e2e

ACCESS_KEY = "AKIABEDHOSTKEY000001"
SECRET_KEY = "bed/host/secret/0000000000000000000000"
MIRROR = "swarm-mirror_mirror"
MIRROR_ACCESS_KEY = "AKIABEDMIRRORKEY0001"
MIRROR_SECRET_KEY = "bed/mirror/secret/00000000000000000000"
SECRETS = ("swarm:sshPrivateKey", "swarm:s3AccessKeyId", "swarm:s3SecretAccessKey",
           "swarm:mirrorS3AccessKeyId", "swarm:mirrorS3SecretAccessKey")  # fmt: skip


def fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def own_machines(bed, names: list[str], third_octet: int) -> tuple[list[dict], str]:
    """Machines made before any Pulumi, as a user owns them: the key is theirs."""
    key = generate_key("ED25519")
    hosts = []
    for i, name in enumerate(names):
        ip = str(bed.network[third_octet * 256 + 10 + i])
        host = bed.create_host(name, ip, imds=False)
        host.authorize(bed.ssh_user, key["publicKeyOpenssh"])
        hosts.append({"name": name, "address": ip, "role": "manager" if i == 0 else "worker"})
    return hosts, key["privateKeyOpenssh"]


def config(bed, hosts: list[dict], private_key: str, **extra) -> dict:
    return {
        "aws:region": BED_REGION,
        "swarm:hosts": hosts,
        "swarm:sshUser": bed.ssh_user,
        "swarm:sshPrivateKey": private_key,
        "swarm:s3Endpoint": bed.s3_endpoint,
        "swarm:mirrorUpstream": bed.upstream_url,
        "swarm:mirrorImage": "registry:2",
        **{f"swarm:{k}": v for k, v in extra.items()},
    }


def swarm_state(host) -> str:
    return host.docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def swarm_tasks(host) -> str:
    return host.docker("ps", "-aq", "--filter", "label=com.docker.swarm.task.id").strip()


def ready_nodes(host) -> list[str]:
    lines = host.docker("node", "ls", "--format", "{{json .}}").splitlines()
    return sorted(n["Hostname"] for n in map(json.loads, lines) if n["Status"] == "Ready")


def data_labels(leader) -> dict[str, str | None]:
    """Each node's swarm.data label, as a stack's placement constraint reads it."""
    labels = {}
    for name in ready_nodes(leader):
        spec = json.loads(leader.docker("node", "inspect", "--format", "{{json .Spec.Labels}}", name)) or {}
        labels[name] = spec.get("swarm.data")
    return labels


def leave_yesterdays_service(leader) -> None:
    leader.run(["sh", "-c", "printf day1 | docker secret create own-secret -"])
    leader.docker("service", "create", "--detach", "--name", "own-yesterday", "--replicas", "2",
                  "--secret", "own-secret", LOCAL_BUSYBOX, "sleep", "86400")  # fmt: skip


def check_restored(bed, hosts, first, second) -> None:
    leader = bed.hosts[hosts[0]["name"]]
    assert second.outputs["bootstrapResult"].startswith("bootstrap: restored from backups/"), second.outputs
    for key in ("workerJoinToken", "managerJoinToken"):
        assert fp(second.outputs[key]) == fp(first.outputs[key]), key
    assert ready_nodes(leader) == sorted(h["name"] for h in hosts)  # no stale twin
    services = leader.docker("service", "ls", "--format", "{{.Name}}").split()
    assert "own-yesterday" in services, services
    assert "own-secret" in leader.docker("secret", "ls", "--format", "{{.Name}}").split()


def check_left_clean(bed, hosts) -> None:
    for h in hosts:
        host = bed.hosts[h["name"]]  # the machine is still there ...
        assert swarm_state(host) == "inactive", h["name"]  # ... and out of the swarm
        # No task of the swarm (the mirror, yesterday's service) is left running.
        wait_until(f"{h['name']}'s swarm tasks to stop", lambda host=host: not swarm_tasks(host), 60)
        leftovers = host.run(["sh", "-c", "ls /etc/swarm/aws-credentials /var/lib/swarm/restore 2>&1 || true"])
        assert b"No such file" in leftovers.stdout and leftovers.stdout.count(b"No such file") == 2


def wipe(bed, hosts) -> None:
    for h in hosts:
        if h["name"] in bed.hosts:
            bed.wipe_host(h["name"])


def test_own_hosts_back_up_to_an_existing_bucket_leave_and_come_back(bed, log_dir):
    hosts, key = own_machines(bed, ["own-s3-0", "own-s3-1"], 200)
    # The worker's own data, where the user keeps it: the program mounts nothing, only labels it.
    hosts[1]["data"] = "pg"
    bed.hosts["own-s3-1"].run(["mkdir", "-p", "/var/data"])
    bucket = "team-backups"
    bed.s3().create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": BED_REGION})
    engine = Engine(
        bed,
        config(
            bed,
            hosts,
            key,
            existingStateBucket=bucket,
            s3AccessKeyId=ACCESS_KEY,
            s3SecretAccessKey=SECRET_KEY,
            mirrorS3AccessKeyId=MIRROR_ACCESS_KEY,
            mirrorS3SecretAccessKey=MIRROR_SECRET_KEY,
        ),
        stack="own-s3",
        secret_keys=SECRETS,
        log_dir=log_dir,
    )
    try:
        first = engine.up()
        assert first.outputs["mode"] == "hosts" and first.outputs["stateBucket"] == bucket
        leader, worker = (bed.hosts[h["name"]] for h in hosts)
        assert ready_nodes(leader) == ["own-s3-0", "own-s3-1"]
        assert data_labels(leader) == {"own-s3-0": None, "own-s3-1": "pg"}
        assert first.outputs["dataVolumes"] == [
            {"name": "pg", "node": "own-s3-1", "volumeId": "", "availabilityZone": ""}
        ]
        # The hosts' keys: a root-only file, not the world-readable env file.
        mode = leader.run(["stat", "-c", "%a %U", "/etc/swarm/aws-credentials"]).stdout.decode().strip()
        assert mode == "600 root"
        assert ACCESS_KEY not in leader.run(["cat", "/etc/swarm/env"]).stdout.decode()
        # The mirror reaches the bucket with a key of its own, not the hosts' backup keys
        # (there is no metadata service): the worker pulls an image only the upstream has,
        # and its blobs land in S3.
        mirror = leader.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={MIRROR}").split()
        held = leader.docker("exec", mirror[0], "busybox", "cat", "/run/secrets/aws-credentials")
        assert MIRROR_ACCESS_KEY in held and ACCESS_KEY not in held and SECRET_KEY not in held
        worker.docker("pull", "busybox", timeout=180)
        cached = bed.s3().list_objects_v2(Bucket=bucket, Prefix="swarm/own-s3/mirror/").get("Contents", [])
        assert any("/blobs/" in o["Key"] for o in cached)
        leave_yesterdays_service(leader)

        engine.destroy()
        check_left_clean(bed, hosts)
        latest = bed.s3().get_object(Bucket=bucket, Key="swarm/own-s3/backups/latest")["Body"].read().decode()
        assert latest.startswith("backups/") and len(latest.split()) == 2

        second = engine.up()
        check_restored(bed, hosts, first, second)
        assert data_labels(leader) == {"own-s3-0": None, "own-s3-1": "pg"}  # the rejoined node, labelled again

        engine.destroy()
        check_left_clean(bed, hosts)
        # The keys given as config never reached a log or the recorded state.
        logs = files_under(log_dir)
        assert scan_for([SECRET_KEY, *key.strip().splitlines()[1:-1]], logs) == []
    finally:
        wipe(bed, hosts)


def test_own_hosts_back_up_to_this_machine_and_restore_from_it(bed, log_dir, tmp_path):
    hosts, key = own_machines(bed, ["own-local-0"], 201)
    backups = tmp_path / "backups"
    engine = Engine(
        bed,
        config(bed, hosts, key, backupTarget="local", backupDirectory=str(backups)),
        stack="own-local",
        secret_keys=SECRETS,
        log_dir=log_dir,
    )
    try:
        first = engine.up()
        leader = bed.hosts["own-local-0"]
        assert first.outputs["backupTarget"] == "local" and first.outputs["stateBucket"] == ""
        # Without S3 the mirror keeps its cache in a volume on the manager.
        leader.docker("pull", "busybox", timeout=180)
        volumes = leader.docker("volume", "ls", "--format", "{{.Name}}").split()
        assert "swarm-mirror_cache" in volumes, volumes
        leave_yesterdays_service(leader)

        engine.destroy()
        check_left_clean(bed, hosts)
        store = backups / "swarm" / "own-local" / "backups"
        name, sha = (store / "latest").read_text().split()
        tarball = backups / "swarm" / "own-local" / name
        assert hashlib.sha256(tarball.read_bytes()).hexdigest() == sha
        assert oct(tarball.stat().st_mode & 0o777) == "0o600"

        second = engine.up()
        check_restored(bed, hosts, first, second)

        engine.destroy()
        check_left_clean(bed, hosts)
        assert len([p for p in store.iterdir() if p.name.endswith(".tar.gz")]) == 2
    finally:
        wipe(bed, hosts)


def test_own_hosts_a_new_ssh_address_changes_nothing_a_new_private_address_rejoins_cleanly(bed, log_dir):
    hosts, key = own_machines(bed, ["own-addr-0", "own-addr-1"], 202)
    worker = bed.hosts["own-addr-1"]
    first_ip, second_ip = worker.ip, str(bed.network[202 * 256 + 50])
    worker.run(["ip", "addr", "add", f"{second_ip}/{bed.prefixlen}", "dev", "eth0"])
    hosts[1]["privateAddress"] = first_ip
    engine = Engine(
        bed, config(bed, hosts, key, backupTarget="none"), stack="own-addr", secret_keys=SECRETS, log_dir=log_dir
    )
    try:
        engine.up()
        leader = bed.hosts["own-addr-0"]

        def worker_node() -> dict:
            listing = [json.loads(line) for line in leader.docker("node", "ls", "--format", "{{json .}}").splitlines()]
            [node] = [n for n in listing if n["Hostname"] == "own-addr-1"]
            return node

        before = worker_node()["ID"]

        # Pulumi reaches the worker at another address: its commands are updated, the node stays.
        hosts[1]["address"] = second_ip
        engine.config["swarm:hosts"] = hosts
        moved = engine.up()
        assert not [urn for urn, op in moved.changed().items() if op in ("replace", "delete")], moved.changed()
        assert worker_node()["ID"] == before and ready_nodes(leader) == ["own-addr-0", "own-addr-1"]

        # It advertises another address: retired (drained, removed), left, joined afresh.
        hosts[1]["privateAddress"] = second_ip
        engine.config["swarm:hosts"] = hosts
        rejoined = engine.up()
        order = rejoined.order("delete-replaced")
        assert order.index(("delete-replaced", "swarm-own-addr-swarm-retire-own-addr-1")) < order.index(
            ("delete-replaced", "swarm-own-addr-swarm-leave-own-addr-1")
        )
        after = worker_node()
        assert after["ID"] != before and after["Status"] == "Ready"
        assert worker.docker("info", "--format", "{{.Swarm.NodeAddr}}").strip() == second_ip
        assert ready_nodes(leader) == ["own-addr-0", "own-addr-1"]  # the old entry is gone, not Down
        engine.destroy()
        check_left_clean(bed, hosts)
    finally:
        wipe(bed, hosts)
