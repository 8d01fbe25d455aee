"""An autolocked week on the bed: `swarm:autolock true` through mornings and nights.

Docker cannot start a new cluster from an autolocked state (`swarm init
--force-new-cluster` fails with "Swarm is encrypted and needs to be unlocked", moby/moby
#36852), so a restore that worked for a plain swarm fails here unless the morning opens
the backup with the unlock key. One stack (3 managers + 1 worker): a morning that turns
autolock on, a manager restarted locked and unlocked with the exported key, the key
rotated during the day, two nights and mornings with the same (rotated) key, and autolock
switched off again. The key is never in the engine's log or, unsealed, in the bucket.
"""

from __future__ import annotations

import pytest
from testbed.bed import wait_until
from testbed.engine import scenario_engine
from testbed.verify import assert_one_healthy_swarm, backups_script, bucket_of, fp, read, signing_key_of

pytestmark = pytest.mark.e2e

STACK = "locked"
PREFIX = f"swarm/{STACK}/"


@pytest.fixture(scope="module")
def engine(bed, log_dir):
    # The third octets 160-191, as test_backups (which runs after this module wipes its machines).
    yield from scenario_engine(bed, log_dir, STACK, (3, 1), (160, 19), **{"swarm:autolock": True})


def swarm_state(host) -> str:
    return host.docker("info", "--format", "{{.Swarm.LocalNodeState}}", check=False).strip()


def restart_locked_and_unlock(host, unlock_key: str) -> None:
    """A manager whose dockerd restarts comes back locked; the exported key opens it."""
    host.run(["systemctl", "restart", "docker.service"])
    wait_until(f"{host.name} locked", lambda: swarm_state(host) == "locked", 90, interval=1)
    wrong = host.run(["docker", "swarm", "unlock"], input=b"SWMKEY-1-" + b"A" * 43 + b"\n", check=False)
    assert wrong.returncode != 0 and swarm_state(host) == "locked"
    host.run(["docker", "swarm", "unlock"], input=f"{unlock_key}\n".encode())
    wait_until(f"{host.name} active", lambda: swarm_state(host) == "active", 90, interval=1)


def assert_key_kept_secret(engine, bed, key: str) -> None:
    assert key not in engine.log_path.read_text(), "the unlock key is in the engine's log"
    listing = bed.s3().list_objects_v2(Bucket=bucket_of(engine), Prefix=PREFIX).get("Contents", [])
    for obj in listing:
        if not obj["Key"].endswith(".tar.gz"):
            assert key.encode() not in read(bed, bucket_of(engine), obj["Key"]), obj["Key"]


def test_an_autolocked_week(engine, bed):
    first = engine.up()
    key = first.outputs["unlockKey"]
    assert key.startswith("SWMKEY-1-") and "unlockKey" in first.secret_outputs
    leader = engine.host_of("manager-0")
    assert leader.docker("info", "--format", "{{.Swarm.Cluster.Spec.EncryptionConfig.AutoLockManagers}}").strip() == (
        "true"
    )
    leader.run(["docker", "secret", "create", "locked-secret", "-"], input=b"kept under lock")
    restart_locked_and_unlock(engine.host_of("manager-1"), key)

    # Rotated during the day: the night must seal the key as it is then, not this morning's.
    rotated = leader.docker("swarm", "unlock-key", "--rotate", "-q").strip()
    assert rotated.startswith("SWMKEY-1-") and rotated != key

    for night in (1, 2):
        engine.destroy()
        log = engine.log_path.read_text()
        assert "backup: unlocked manager 0 again (autolock)" in log, f"night {night}: manager 0 left locked"
        latest, _ = read(bed, bucket_of(engine), f"{PREFIX}backups/latest").decode().split()
        meta = read(bed, bucket_of(engine), f"{PREFIX}{latest}.meta").decode()
        assert "\nunlock=" in meta, meta
        assert_key_kept_secret(engine, bed, rotated)
        if night == 1:  # the drill opens it as the morning will, on a machine of its own
            backups = backups_script()
            report = backups.run_drill(
                bed.s3(), bucket_of(engine), PREFIX, None, signing_key_of(engine), backups.BedTarget(bed)
            )
            assert report.key == latest and report.autolocked, report.checks
            assert "locked-secret" in [s["Name"] for s in report.sections["secrets"]]

        morning = engine.up()
        assert morning.outputs["bootstrapResult"] == f"bootstrap: restored from {latest}", f"night {night}"
        assert morning.outputs["unlockKey"] == rotated, f"morning {night}: not the key the swarm had"
        for token in ("workerJoinToken", "managerJoinToken"):
            assert fp(morning.outputs[token]) == fp(first.outputs[token]), token
        assert_one_healthy_swarm(engine, STACK, 3, 1)
        leader = engine.host_of("manager-0")
        assert "locked-secret" in leader.docker("secret", "ls", "--format", "{{.Name}}").split()
        # Still autolocked, with the same key: manager 0 itself restarts locked.
        restart_locked_and_unlock(leader, rotated)

    engine.config["swarm:autolock"] = False
    off = engine.up()
    assert off.outputs["unlockKey"] == ""
    assert (
        engine.host_of("manager-0")
        .docker("info", "--format", "{{.Swarm.Cluster.Spec.EncryptionConfig.AutoLockManagers}}")
        .strip()
        == "false"
    )
    engine.host_of("manager-2").run(["systemctl", "restart", "docker.service"])
    wait_until("manager 2 active without a key", lambda: swarm_state(engine.host_of("manager-2")) == "active", 90)
    assert_key_kept_secret(engine, bed, rotated)
