"""The bed's engine itself: the semantics the scenarios rely on, checked on one real host.

A tiny program (a CopyToRemote and a Command) runs through create, no-op, update,
replace, a failing update and destroy, and each step is checked on the machine.
"""

from __future__ import annotations

import textwrap

import pytest
from testbed.engine import Engine, EngineError, files_under, generate_key, scan_for

pytestmark = pytest.mark.e2e

PROGRAM = textwrap.dedent(
    """
    import pulumi
    from pulumi_command import remote

    cfg = pulumi.Config("t")
    conn = remote.ConnectionArgs(host=cfg.require("host"), user="ec2-user", private_key=cfg.require_secret("key"),
                                 dial_error_limit=1, per_dial_timeout=5)
    copy = remote.CopyToRemote("copy", connection=conn, source=pulumi.FileAsset(cfg.require("file")),
                               remote_path="/tmp/copied.txt")
    cmd = remote.Command("cat", connection=conn, create=cfg.get("create") or "cat /tmp/copied.txt",
                         delete="echo bye >>/tmp/deleted.log", triggers=[cfg.get("trigger") or "1"],
                         opts=pulumi.ResourceOptions(depends_on=[copy]))
    pulumi.export("out", cmd.stdout)
    """
)


@pytest.fixture
def host_and_key(bed):
    key = generate_key("ED25519")
    host = bed.create_host("engine-check", str(bed.network[200 * 256 + 10]))
    host.authorize(bed.ssh_user, key["publicKeyOpenssh"])
    try:
        yield host, key["privateKeyOpenssh"]
    finally:
        bed.wipe_host(host.name)


def test_engine_create_noop_update_replace_fail_destroy(bed, host_and_key, tmp_path):
    host, key = host_and_key
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    payload = tmp_path / "payload.txt"
    payload.write_text("copied over sftp\n")
    config = {"t:host": host.ip, "t:key": key, "t:file": str(payload)}
    engine = Engine(bed, config, stack="engine", secret_keys=("t:key",), log_dir=tmp_path / "logs", program=program)

    def deleted() -> str:
        return host.run("cat /tmp/deleted.log 2>/dev/null || true").stdout.decode()

    first = engine.up()
    assert first.outputs["out"] == "copied over sftp"
    assert set(first.changes.values()) == {"create"}

    assert engine.up().changed() == {}

    engine.config["t:create"] = "cat /tmp/copied.txt; echo again"
    updated = engine.up()
    assert list(updated.changed().values()) == ["update"]
    assert updated.outputs["out"] == "copied over sftp\nagain"
    assert deleted() == "", "an update must not run the delete hook"

    engine.config["t:trigger"] = "2"
    replaced = engine.up()
    assert list(replaced.changed().values()) == ["replace"]
    assert deleted() == "bye\n", "a replacement runs the old command's delete hook"

    engine.config["t:create"] = "echo oops >&2; exit 3"
    with pytest.raises(EngineError) as failure:
        engine.up()
    assert "Process exited with status 3" in str(failure.value) and "oops" in str(failure.value)
    assert any(s.name == "cat" for s in engine.state.values()), "a failed update keeps the last good state"

    engine.destroy()
    assert deleted() == "bye\nbye\n"
    assert engine.state == {}
    body = [line for line in key.splitlines() if "PRIVATE KEY" not in line]
    assert scan_for(body, files_under(tmp_path / "logs")) == []
