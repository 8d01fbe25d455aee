"""The morning and the night on the engines people run besides the default: Debian 12's
Docker 20.10 (their own machines run old engines) and Debian forky's Docker 28.5 with
containerd 2.1, cloud-init 26.2 and systemd 262 (what fresh machines get next).

The daily cycle runs on Debian 13's Docker 26.1 (the bed's default image). Here a stack of
its own per image (`testbed/image.py`) goes through a morning (form, mirror, a service
with a secret), a night (the backup hook stops Docker and its socket) and the next
morning (restore with the same tokens, the service and its secret back).
"""

from __future__ import annotations

import hashlib

import pytest
from testbed.engine import Engine
from testbed.verify import assert_one_healthy_swarm, bucket_of, fp, read, secret_in_task, ssh_strict, wait_service

pytestmark = pytest.mark.e2e

# image, the engine it brings, whether its nodes keep images in containerd's store (Docker
# 29's default, so it is tried on the newest engine here), and the third octet its stack's
# part of the bed starts at (third octets 64-127 are theirs: they meet no other stack's).
ENGINES = [("bookworm", "20.10.", False, 64), ("forky", "28.5.", True, 96)]


@pytest.mark.parametrize(("image", "engine_version", "containerd", "octet"), ENGINES, ids=[e[0] for e in ENGINES])
def test_morning_night_and_restore(bed, log_dir, tmp_path, image, engine_version, containerd, octet):
    stack = f"eng-{image}"
    prefix = f"swarm/{stack}/"
    vpc = next(n for n in bed.network.subnets(new_prefix=19) if n.network_address == bed.network[octet * 256])
    config = {**bed.program_config(3, 1, str(vpc)), "swarm:containerdImageStore": containerd}
    engine = Engine(bed, config, stack=stack, log_dir=log_dir, image=image)
    try:
        first = engine.up()
        assert first.outputs["bootstrapResult"] == "bootstrap: initialised a new swarm"
        leader = engine.host_of("manager-0")
        version = leader.docker("version", "--format", "{{.Server.Version}}")
        assert version.startswith(engine_version), f"{image} runs Docker {version}"
        for host in engine.hosts():
            store = host.docker("info", "--format", "{{json .DriverStatus}}")
            assert ("io.containerd.snapshotter.v1" in store) == containerd, f"{host.name}: {store}"
        assert_one_healthy_swarm(engine, stack, 3, 1)
        # cloud-init 22.4 took the host keys from the user-data's cloud-config part too.
        for node in first.outputs["nodes"]:
            opened = ssh_strict(first.outputs, node["privateIp"], first.outputs["sshKnownHosts"], tmp_path)
            assert opened.returncode == 0, f"{node['name']}: {opened.stderr}"
        worker = engine.host_of("worker-0")
        worker.docker("pull", "busybox", timeout=180)  # only the bed's upstream has it: through the mirror
        leader.run(["docker", "secret", "create", "eng-secret", "-"], input=b"engine-value")
        leader.docker(
            "service", "create", "--detach", "--quiet", "--name", "eng-svc", "--replicas", "2",
            "--endpoint-mode", "dnsrr", "--secret", "eng-secret", "--no-resolve-image",
            "swarm-bed/busybox:latest", "sleep", "86400",
        )  # fmt: skip
        wait_service(leader, "eng-svc", 2)

        engine.destroy()
        bucket = bucket_of(engine)
        key, want = read(bed, bucket, f"{prefix}backups/latest").decode().split()
        assert hashlib.sha256(read(bed, bucket, f"{prefix}{key}")).hexdigest() == want

        second = engine.up()
        assert second.outputs["bootstrapResult"].startswith(f"bootstrap: restored from {key}")
        for token in ("workerJoinToken", "managerJoinToken"):
            assert fp(second.outputs[token]) == fp(first.outputs[token]), token
        assert len(assert_one_healthy_swarm(engine, stack, 3, 1)) == 4  # no node of yesterday left
        wait_service(engine.host_of("manager-0"), "eng-svc", 2, timeout=180)
        assert secret_in_task(engine, stack, "eng-svc", "eng-secret") == "engine-value"
    finally:  # this stack's machines go, so the other scenarios see only their own
        for host in engine.hosts():
            bed.wipe_host(host.key)
