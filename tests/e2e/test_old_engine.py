"""The morning and the night on Debian 12's Docker 20.10: people's own machines run old engines.

The daily cycle runs on Debian 13's Docker 26.1 (the bed's default image). Here a stack of
its own boots the Debian 12 image (`testbed/image.py`) and goes through a morning (form,
mirror, a service with a secret), a night (the backup hook stops Docker and its socket)
and the next morning (restore with the same tokens, the service and its secret back).
"""

from __future__ import annotations

import hashlib

import pytest
from testbed.engine import Engine
from testbed.verify import assert_one_healthy_swarm, bucket_of, fp, read, secret_in_task, ssh_strict, wait_service

pytestmark = pytest.mark.e2e

STACK = "old"
PREFIX = f"swarm/{STACK}/"


def test_morning_night_and_restore_on_docker_20_10(bed, log_dir, tmp_path):
    # Its own part of the bed's /16 (third octets 64-127), so it meets no other stack's addresses.
    vpc = next(n for n in bed.network.subnets(new_prefix=18) if n.network_address == bed.network[64 * 256])
    engine = Engine(bed, bed.program_config(3, 1, str(vpc)), stack=STACK, log_dir=log_dir, image="bookworm")
    try:
        first = engine.up()
        assert first.outputs["bootstrapResult"] == "bootstrap: initialised a new swarm"
        leader = engine.host_of("manager-0")
        assert leader.docker("version", "--format", "{{.Server.Version}}").startswith("20.10."), "not the old engine"
        assert_one_healthy_swarm(engine, STACK, 3, 1)
        # cloud-init 22.4 took the host keys from the user-data's cloud-config part too.
        for node in first.outputs["nodes"]:
            opened = ssh_strict(first.outputs, node["privateIp"], first.outputs["sshKnownHosts"], tmp_path)
            assert opened.returncode == 0, f"{node['name']}: {opened.stderr}"
        worker = engine.host_of("worker-0")
        worker.docker("pull", "busybox", timeout=180)  # only the bed's upstream has it: through the mirror
        leader.run(["docker", "secret", "create", "old-secret", "-"], input=b"old-engine-value")
        leader.docker(
            "service", "create", "--detach", "--quiet", "--name", "old-svc", "--replicas", "2",
            "--endpoint-mode", "dnsrr", "--secret", "old-secret", "--no-resolve-image",
            "swarm-bed/busybox:latest", "sleep", "86400",
        )  # fmt: skip
        wait_service(leader, "old-svc", 2)

        engine.destroy()
        bucket = bucket_of(engine)
        key, want = read(bed, bucket, f"{PREFIX}backups/latest").decode().split()
        assert hashlib.sha256(read(bed, bucket, f"{PREFIX}{key}")).hexdigest() == want

        second = engine.up()
        assert second.outputs["bootstrapResult"].startswith(f"bootstrap: restored from {key}")
        for token in ("workerJoinToken", "managerJoinToken"):
            assert fp(second.outputs[token]) == fp(first.outputs[token]), token
        assert len(assert_one_healthy_swarm(engine, STACK, 3, 1)) == 4  # no node of yesterday left
        wait_service(engine.host_of("manager-0"), "old-svc", 2, timeout=180)
        assert secret_in_task(engine, STACK, "old-svc", "old-secret") == "old-engine-value"
    finally:  # this stack's machines go, so the other scenarios see only their own
        for host in engine.hosts():
            bed.wipe_host(host.key)
