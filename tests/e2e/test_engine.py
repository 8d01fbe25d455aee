"""The bed's engine itself: the semantics the scenarios rely on, checked on one real host.

A tiny program (a CopyToRemote and a Command) runs through create, no-op, update,
replace, a failing update and destroy, and each step is checked on the machine. Then
each of the Pulumi engine's rules the bed follows, with the source it follows.
"""

from __future__ import annotations

import contextlib
import json
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


@pytest.fixture(scope="module")
def host_and_key(bed):
    """One machine for every engine check (each keeps to files of its own on it)."""
    key = generate_key("ED25519")
    host = bed.create_host("engine-check", str(bed.network[200 * 256 + 10]))
    host.authorize(bed.ssh_user, key["publicKeyOpenssh"])
    try:
        yield host, key["privateKeyOpenssh"]
    finally:
        bed.wipe_host(host.key)


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


# -- Pulumi's step order, rule by rule ------------------------------------------------------
# A program of commands on one host, each appending what it does to a log there, so the
# order of creates and deletes is read off the machine. `t:spec` lists the resources:
#   name, version (in its create), trigger (replaces it when changed), uses (names whose
#   stdout its triggers carry: a property dependency), after (depends_on only), dbr,
#   protect, ignore (ignore_changes).
RULES_PROGRAM = textwrap.dedent(
    """
    import json
    import pulumi
    from pulumi_command import remote

    cfg = pulumi.Config("t")
    conn = remote.ConnectionArgs(host=cfg.require("host"), user="ec2-user", private_key=cfg.require_secret("key"),
                                 dial_error_limit=1, per_dial_timeout=5)
    log, seen = cfg.require("log"), cfg.require("seen")
    made = {}
    for r in json.loads(cfg.require("spec")):
        name = r["name"]
        made[name] = remote.Command(
            name,
            connection=conn,
            create=f"echo create {name} {r.get('version', 1)} >>{log}; echo {name}-{r.get('version', 1)}",
            delete=f"echo delete {name} >>{log}",
            triggers=[r.get("trigger", 1), *[made[u].stdout for u in r.get("uses", [])]],
            opts=pulumi.ResourceOptions(
                depends_on=[made[a] for a in r.get("after", [])],
                delete_before_replace=r.get("dbr", False),
                protect=r.get("protect", False),
                ignore_changes=r.get("ignore", []),
            ),
        )

        # What the program sees of each stdout, in the preview and in the update: an
        # unknown output never reaches an apply.
        def note(out, name=name):
            with open(seen, "a") as handle:
                handle.write(f"{'preview' if pulumi.runtime.is_dry_run() else 'update'} {name} {out}\\n")

        made[name].stdout.apply(note)
    """
)


class Rules:
    """One stack of RULES_PROGRAM on the rules host, and what its log and notes say."""

    def __init__(self, bed, host, key, tmp_path, stack: str):
        self.host, self.log_path, self.seen = host, f"/tmp/steps-{stack}.log", tmp_path / "seen.txt"
        program = tmp_path / "program.py"
        program.write_text(RULES_PROGRAM)
        self.config = {"t:host": host.ip, "t:key": key, "t:log": self.log_path, "t:seen": str(self.seen)}
        self.engine = Engine(
            bed, self.config, stack=stack, secret_keys=("t:key",), log_dir=tmp_path / "logs", program=program
        )

    def up(self, spec: list[dict], replace: tuple[str, ...] = ()):
        self.engine.config["t:spec"] = json.dumps(spec)
        return self.engine.up(replace=[self.engine.urn(name) for name in replace])

    def steps(self) -> list[str]:
        """What ran on the host since the last call, in order."""
        out = self.host.run(f"cat {self.log_path} 2>/dev/null; rm -f {self.log_path}").stdout.decode()
        return out.splitlines()

    def notes(self) -> list[str]:
        lines = self.seen.read_text().splitlines() if self.seen.exists() else []
        self.seen.unlink(missing_ok=True)
        return lines


def test_a_replacement_is_created_first_and_the_old_one_deleted_after_every_other_step(bed, host_and_key, tmp_path):
    """pulumi/pulumi step_generator.go continueStepsFromDiff ("the delete step is generated
    later on, after all creates/updates finish") and deployment_executor.go performPostSteps."""
    rules = Rules(bed, *host_and_key, tmp_path, "rule-cbd")
    rules.up([{"name": "a"}, {"name": "b", "after": ["a"]}])
    assert rules.steps() == ["create a 1", "create b 1"]
    # a is replaced (new trigger); b, which depends on it, is updated (new version).
    result = rules.up([{"name": "a", "trigger": 2}, {"name": "b", "after": ["a"], "version": 2}])
    assert rules.steps() == ["create a 1", "create b 2", "delete a"]
    assert result.order() == [("replace", "a"), ("update", "b"), ("delete-replaced", "a")]
    rules.engine.destroy()
    assert rules.steps() == ["delete b", "delete a"]


def test_delete_before_replace_deletes_the_dependents_it_must_first(bed, host_and_key, tmp_path):
    """pulumi/pulumi step_generator.go calculateDependentReplacements: dependents whose
    inputs depend on the resource, and whose provider replaces them with those inputs
    unknown, are deleted before it and created again after; a depends_on alone is not such."""
    rules = Rules(bed, *host_and_key, tmp_path, "rule-dbr")
    spec = [{"name": "a", "dbr": True}, {"name": "b", "uses": ["a"]}, {"name": "c", "after": ["a"]}]
    rules.up(spec)
    assert sorted(rules.steps()) == ["create a 1", "create b 1", "create c 1"]
    spec[0]["trigger"] = 2
    result = rules.up(spec)
    assert rules.steps() == ["delete b", "delete a", "create a 1", "create b 1"]
    assert result.preview == {
        rules.engine.urn("a"): "replace",
        rules.engine.urn("b"): "replace",
        rules.engine.urn("c"): "same",
    }
    rules.engine.destroy()


def test_a_protected_resource_is_never_deleted(bed, host_and_key, tmp_path):
    """pulumi/pulumi step_generator.go continueStepsFromDiff ("unable to replace resource ...
    marked for protection") and step.go deleteProtectedError; destroy --exclude-protected
    keeps what a protected resource depends on (destroy.go getProtectedExcludes)."""
    rules = Rules(bed, *host_and_key, tmp_path, "rule-protect")
    base = {"name": "base"}
    rules.up([base, {"name": "kept", "protect": True, "after": ["base"]}, {"name": "other"}])
    rules.steps()

    with pytest.raises(EngineError) as replacing:
        rules.up([base, {"name": "kept", "protect": True, "after": ["base"], "trigger": 2}, {"name": "other"}])
    assert "unable to replace resource" in str(replacing.value) and "marked for protection" in str(replacing.value)
    assert rules.steps() == [], "a failed preview ran something"

    with pytest.raises(EngineError) as dropping:
        rules.up([base, {"name": "other", "version": 2}])
    assert "cannot be deleted\nbecause it is protected" in str(dropping.value)
    assert "pulumi state unprotect" in str(dropping.value)
    assert rules.steps() == [], "dropping a protected resource is refused in the preview"

    rules.engine.destroy()
    assert rules.steps() == ["delete other"], "destroy deleted a protected resource or what it depends on"
    assert sorted(s.name for s in rules.engine.state.values()) == ["base", "kept"]


def test_replace_forces_a_replacement_and_ignore_changes_does_not_hold_across_it(bed, host_and_key, tmp_path):
    """pulumi/pulumi step_generator.go: a --replace target replaces whatever the diff
    (isTargetedReplace), and the replacement is checked with the goal's own properties,
    not the ones ignore_changes kept."""
    rules = Rules(bed, *host_and_key, tmp_path, "rule-replace")
    rules.up([{"name": "r", "ignore": ["create"]}])
    rules.steps()
    assert rules.up([{"name": "r", "ignore": ["create"], "version": 2}]).changed() == {}
    assert rules.steps() == [], "an ignored change ran something"
    assert rules.up([{"name": "r", "ignore": ["create"], "version": 2}], replace=("r",)).changed()
    assert rules.steps() == ["create r 2", "delete r"]
    rules.engine.destroy()


def test_every_up_previews_first_running_nothing_and_handing_out_unknowns(bed, host_and_key, tmp_path):
    """pulumi/pulumi: `pulumi up` previews (step_generator.go in preview mode); providers
    run nothing, and an output a step would compute is unknown to the program."""
    rules = Rules(bed, *host_and_key, tmp_path, "rule-preview")
    first = rules.up([{"name": "a"}, {"name": "b"}])
    assert set(first.preview.values()) == {"create"}
    assert sorted(rules.steps()) == ["create a 1", "create b 1"], "the preview ran a command"
    assert sorted(rules.notes()) == ["update a a-1", "update b b-1"], "a new output reached the program in preview"

    second = rules.up([{"name": "a", "trigger": 2}, {"name": "b"}])
    assert second.preview == {rules.engine.urn("a"): "replace", rules.engine.urn("b"): "same"}
    # b is unchanged: its old output is known in the preview; a's new one is not.
    assert sorted(rules.notes()) == ["preview b b-1", "update a a-1", "update b b-1"]
    rules.engine.destroy()


HOST_KEY_PROGRAM = textwrap.dedent(
    """
    import pulumi
    from pulumi_command import remote

    cfg = pulumi.Config("t")
    conn = remote.ConnectionArgs(host=cfg.require("host"), user="ec2-user", private_key=cfg.require_secret("key"),
                                 host_key=cfg.require("hostKey"), dial_error_limit=3, per_dial_timeout=5)
    cmd = remote.Command("hello", connection=conn, create="echo hello")
    pulumi.export("out", cmd.stdout)
    """
)


def test_a_host_key_that_does_not_match_fails_the_dial_as_pulumi_command_does(bed, host_and_key, tmp_path):
    """pulumi-command checks `host_key` with x/crypto's FixedHostKey and retries a mismatch
    like any dial error, up to dialErrorLimit: the bed's engine must refuse it too."""
    import time

    host, key = host_and_key
    program = tmp_path / "program.py"
    program.write_text(HOST_KEY_PROGRAM)
    real = " ".join(host.run("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.decode().split()[:2])
    other = generate_key("ED25519")["publicKeyOpenssh"].strip()
    config = {"t:host": host.ip, "t:key": key, "t:hostKey": other}
    wrong = Engine(bed, config, stack="host-key-wrong", secret_keys=("t:key",), log_dir=tmp_path / "w", program=program)
    started = time.monotonic()
    mismatch = r"after 4 attempts \(dialErrorLimit 3\): ssh: handshake failed: ssh: host key mismatch"
    with pytest.raises(EngineError, match=mismatch):
        wrong.up()
    assert time.monotonic() - started < 60  # 3 retries: 0.1 + 0.15 + 0.225 s of waiting
    right = Engine(bed, {**config, "t:hostKey": real}, stack="host-key-right", secret_keys=("t:key",),
                   log_dir=tmp_path / "r", program=program)  # fmt: skip
    assert right.up().outputs["out"] == "hello"
    right.destroy()


VOLUME_PROGRAM = textwrap.dedent(
    """
    import pulumi
    import pulumi_aws as aws
    from pulumi_command import remote

    cfg = pulumi.Config("t")
    subnet = aws.ec2.Subnet("subnet", vpc_id="vpc-bed", cidr_block=cfg.require("cidr"), availability_zone="eu-west-1a")
    key = aws.ec2.KeyPair("key", public_key=cfg.require("public"))
    machine = aws.ec2.Instance("machine", ami="ami-0bed", instance_type="t3.micro", subnet_id=subnet.id,
                               key_name=key.key_name, private_ip=cfg.require("ip"), user_data="#!/bin/sh\\ntrue\\n")
    volume = aws.ebs.Volume("data", availability_zone="eu-west-1a", size=1, encrypted=True,
                            opts=pulumi.ResourceOptions(protect=True))
    attachment = aws.ec2.VolumeAttachment("data", device_name="/dev/sdf", instance_id=machine.id, volume_id=volume.id)
    link = volume.id.apply(lambda v: "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + v.replace("-", ""))
    conn = remote.ConnectionArgs(host=machine.private_ip, user="ec2-user", private_key=cfg.require_secret("key"),
                                 dial_error_limit=60)
    mounted = remote.Command(
        "mount", connection=conn,
        create=pulumi.Output.concat(
            "sudo sh -c 'blkid ", link, " >/dev/null || mkfs.ext4 -q ", link, "; mkdir -p /var/data && ",
            "{ mountpoint -q /var/data || mount ", link, " /var/data; } && date >>/var/data/mornings && ",
            "wc -l </var/data/mornings'"),
        delete=cfg.get("unmount") or "true", opts=pulumi.ResourceOptions(depends_on=[attachment]))
    pulumi.export("mornings", mounted.stdout)
    """
)


def test_an_ebs_volume_outlives_its_machine_and_a_mounted_one_is_not_detached(bed, tmp_path):
    """The engine attaches a volume as the instance's machine runs, refuses to detach it
    while the machine has it mounted (what a night that forgets to unmount gets), keeps a
    protected volume through destroy, and the next morning's machine finds its data."""
    key = generate_key("ED25519")
    program = tmp_path / "program.py"
    program.write_text(VOLUME_PROGRAM)
    config = {"t:cidr": str(bed.network), "t:ip": str(bed.network[200 * 256 + 41]), "t:key": key["privateKeyOpenssh"],
              "t:public": key["publicKeyOpenssh"]}  # fmt: skip
    engine = Engine(bed, config, stack="volumes", secret_keys=("t:key",), log_dir=tmp_path / "logs", program=program)
    volume_urn = ""  # known after the first up
    try:
        assert engine.up().outputs["mornings"].strip() == "1"
        (volume_urn,) = [u for u, s in engine.state.items() if s.type == "aws:ebs/volume:Volume"]
        with pytest.raises(EngineError, match="VolumeBusy"):
            engine.destroy()  # its unmount does nothing: the volume is still mounted
        engine.config["t:unmount"] = "sudo umount /var/data"
        assert engine.up().outputs["mornings"].strip() == "2"  # the mount made again, on the same machine
        engine.destroy()
        kinds = sorted(s.type for s in engine.state.values())
        assert kinds == ["aws:ebs/volume:Volume"], kinds  # the machine went, the volume stayed
        assert engine.up().outputs["mornings"].strip() == "3"  # a new machine, yesterday's data
    finally:
        engine.config["t:unmount"] = "sudo umount /var/data"
        with contextlib.suppress(EngineError):
            engine.destroy()
        if volume_urn:
            engine.unprotect(volume_urn)
            engine.destroy()
        assert bed.volumes.volumes == {}, "the volume was not deleted"
