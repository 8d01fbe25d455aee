"""Data volumes (swarm:dataVolumes) and their snapshots, under mocks: kept through the night,
tied to each morning's machine, mounted before the node joins, never dropped by a config
change; bad entries refused before anything is made."""

from __future__ import annotations

import pytest
from harness import SwarmMocks, run_program
from test_hosts import hosts_config

from components.settings import ConfigError

VOLUME = "aws:ebs/volume:Volume"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
POLICY = "aws:dlm/lifecyclePolicy:LifecyclePolicy"
ROLE = "aws:iam/role:Role"
INSTANCE = "aws:ec2/instance:Instance"
LEDGER = [{"name": "ledger", "node": "worker-1", "size": 50}]


def kept(name: str, stack: str = "dev", zone: str = "eu-west-1b") -> dict:
    """A volume AWS holds for a stack, as DescribeVolumes describes it."""
    tags = {"swarm:data-of": f"swarm/{stack}", "swarm:data": name}
    return {"availabilityZone": zone, "size": 20, "volumeType": "gp3", "tags": tags, "encrypted": True}


def test_a_data_node_gets_a_kept_encrypted_volume_in_its_zone_tied_by_an_attachment():
    run = run_program({"dataVolumes": LEDGER})
    (volume,) = run.of_type(VOLUME)
    assert volume.protect and volume.inputs["encrypted"] and volume.inputs["type"] == "gp3"
    assert volume.inputs["size"] == 50 and volume.inputs["finalSnapshot"]
    assert volume.inputs["tags"]["swarm:data-of"] == "swarm/dev" and volume.inputs["tags"]["swarm:data"] == "ledger"
    # Worker 1 is in the second subnet: its zone comes from the plan, not from the machine.
    machine = run.named("swarm-dev-nodes-worker-1")
    subnet = next(r for r in run.of_type("aws:ec2/subnet:Subnet") if r.urn.endswith("subnet-1"))
    assert volume.inputs["availabilityZone"] == subnet.inputs["availabilityZone"]
    assert volume.dependencies == [] and "snapshotId" in volume.ignore_changes
    (attachment,) = run.of_type(ATTACHMENT)
    assert attachment.inputs["instanceId"] == "swarm-dev-nodes-worker-1-id" and not attachment.protect
    assert attachment.inputs["volumeId"] == f"{volume.name}-id" and attachment.delete_before_replace
    # EC2 refuses a second attachment: the data node's machine goes before its replacement.
    assert machine.delete_before_replace
    assert not run.named("swarm-dev-nodes-worker-0").delete_before_replace


def test_the_volume_is_mounted_before_the_node_joins_and_released_before_it_is_detached():
    run = run_program({"dataVolumes": LEDGER})
    mount = run.command("-data-swarm-dev-worker-1")
    (attachment,) = run.of_type(ATTACHMENT)
    assert mount.inputs["create"] == (
        "sudo /usr/local/sbin/swarm-node data-mount --name ledger --volume swarm-dev-data-ledger-id"
    )
    assert mount.inputs["delete"] == "sudo /usr/local/sbin/swarm-node data-release"
    assert mount.inputs["triggers"] == [f"{attachment.name}-id"] and mount.delete_before_replace
    assert run.depends_on(mount, attachment) and run.depends_on(mount, run.command("-ready-swarm-dev-worker-1"))
    join = run.command("-join-swarm-dev-worker-1")
    assert run.depends_on(join, mount), "the node could join (and run tasks) before its data is mounted"
    assert run.depends_on(run.command("-retire-swarm-dev-worker-1"), mount), "released before the node is drained"
    assert not [c for c in run.commands() if "-data-swarm-dev-worker-0" in c.name]
    assert run.command("-reconcile").inputs["create"].endswith("--data swarm-dev-worker-1=ledger")


def test_retires_run_on_manager_0_before_it_releases_its_own_volume():
    """data-release stops dockerd: a retire after it on the same manager would find no swarm."""
    run = run_program({"dataVolumes": [{"name": "raft-side", "node": "manager-0"}]})
    release = run.command("-data-swarm-dev-manager-0")
    for node in ("manager-1", "manager-2", "worker-0", "worker-1"):
        assert run.depends_on(run.command(f"-retire-swarm-dev-{node}"), release), node
    plain = run_program()
    assert not [c for c in plain.commands() if "-data-" in c.name]


def test_a_volume_whose_node_is_scaled_away_is_kept_unattached_and_said(caplog):
    run = run_program({"dataVolumes": LEDGER, "workerCount": 1})
    (volume,) = run.of_type(VOLUME)
    assert volume.protect and run.of_type(ATTACHMENT) == []
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "data volume ledger is kept, unattached: its node worker-1 is not in" in said


def test_a_volume_dropped_from_the_config_stays_registered_and_another_stacks_is_not_ours(caplog):
    mocks = SwarmMocks(volumes={"vol-0kept": kept("uploads"), "vol-0other": kept("pg", stack="prod")})
    run = run_program({"dataVolumes": LEDGER}, mocks=mocks)
    names = sorted(v.name for v in run.of_type(VOLUME))
    assert names == ["swarm-dev-data-ledger", "swarm-dev-data-uploads"]
    uploads = run.named("swarm-dev-data-uploads")
    assert uploads.protect and uploads.inputs["availabilityZone"] == "eu-west-1b" and uploads.inputs["size"] == 20
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "data volume uploads is kept, unattached, though no entry" in said


def test_snapshots_are_data_lifecycle_managers_kept_with_its_own_role():
    run = run_program({"dataVolumes": LEDGER, "dataSnapshotTime": "21:30", "dataSnapshotKeep": 5})
    (policy,) = run.of_type(POLICY)
    (role,) = [r for r in run.of_type(ROLE) if r.name == "swarm-dev-data-snapshots"]
    assert policy.protect and role.protect and policy.inputs["state"] == "ENABLED"
    assert '"Service": "dlm.amazonaws.com"' in role.inputs["assumeRolePolicy"]
    assert role.inputs["name"] == "swarm-dev-data-snapshots"
    details = policy.inputs["policyDetails"]
    assert details["targetTags"] == {"swarm:data-of": "swarm/dev"} and details["resourceTypes"] == ["VOLUME"]
    (schedule,) = details["schedules"]
    assert schedule["createRule"] == {"interval": 24, "intervalUnit": "HOURS", "times": "21:30"}
    assert schedule["retainRule"] == {"count": 5} and schedule["copyTags"]
    # Kept through the night: nothing it depends on may go at night.
    for urn in policy.dependencies + role.dependencies:
        assert run.by_urn(urn).protect, f"the kept policy depends on {urn}, which goes at night"


def test_keep_zero_disables_the_policy_and_a_stack_without_volumes_has_none():
    (policy,) = run_program({"dataVolumes": LEDGER, "dataSnapshotKeep": 0}).of_type(POLICY)
    assert policy.inputs["state"] == "DISABLED" and policy.protect
    assert run_program().of_type(POLICY) == []


def test_the_policy_stays_registered_after_the_last_volume_is_released():
    """A protected resource the program stops registering fails every later `up`."""
    run = run_program(mocks=SwarmMocks(roles=["swarm-dev-data-snapshots"]))
    assert len(run.of_type(POLICY)) == 1 and run.of_type(VOLUME) == []


BAD_VOLUMES = [
    ("not a list", '{"name":"a"}', "dataVolumes"),
    ("bad name", [{"name": "Ledger!", "node": "worker-0"}], "dataVolumes[0].name"),
    ("bad node", [{"name": "a", "node": "web-0"}], "dataVolumes[0].node"),
    ("bad type", [{"name": "a", "node": "worker-0", "type": "io2"}], "dataVolumes[0].type"),
    ("too small for st1", [{"name": "a", "node": "worker-0", "type": "st1", "size": 20}], "dataVolumes[0].size"),
    ("bad snapshot", [{"name": "a", "node": "worker-0", "snapshotId": "vol-1"}], "dataVolumes[0].snapshotId"),
    ("two on a node", [{"name": "a", "node": "worker-0"}, {"name": "b", "node": "worker-0"}], "dataVolumes[1].node"),
    ("a name twice", [{"name": "a", "node": "worker-0"}, {"name": "a", "node": "worker-1"}], "dataVolumes[1].name"),
]


@pytest.mark.parametrize(("case", "value", "key"), BAD_VOLUMES, ids=[c[0] for c in BAD_VOLUMES])
def test_a_bad_volume_entry_stops_before_anything_with_the_fix(case, value, key):
    with pytest.raises(ConfigError) as caught:
        run_program({"dataVolumes": value})
    assert caught.value.registered == []
    lines = [p for p in caught.value.problems if p.startswith(f"swarm:{key} ")]
    assert lines and all("fix: pulumi config set --path 'swarm:dataVolumes[" in line for line in lines), (
        caught.value.problems
    )


@pytest.mark.parametrize(("key", "value"), [("dataSnapshotTime", "8pm"), ("dataSnapshotKeep", 1001)])
def test_a_bad_snapshot_schedule_is_refused_with_the_fix(key, value):
    with pytest.raises(ConfigError) as caught:
        run_program({"dataVolumes": LEDGER, key: value})
    problems = caught.value.problems
    assert any(p.startswith(f"swarm:{key} ") and f"fix: pulumi config set swarm:{key}" in p for p in problems), problems


def test_own_hosts_label_their_own_data_and_the_program_mounts_nothing():
    hosts = hosts_config()
    hosts["hosts"] = [dict(h) for h in hosts["hosts"]]
    hosts["hosts"][2]["data"] = "pg"
    run = run_program(hosts)
    check = run.command("-data-nuc")
    assert check.inputs["create"] == "sudo /usr/local/sbin/swarm-node data-mount --existing --name pg"
    assert not check.inputs.get("delete") and run.of_type(VOLUME) == [] and run.of_type(POLICY) == []
    assert run.depends_on(run.command("-join-nuc"), check)
    assert run.command("-reconcile").inputs["create"].endswith("--data nuc=pg")


def test_own_hosts_refuse_data_volumes_and_a_bad_data_name():
    with pytest.raises(ConfigError) as caught:
        run_program({**hosts_config(), "dataVolumes": LEDGER})
    assert any(p.startswith("swarm:dataVolumes ") for p in caught.value.problems), caught.value.problems
    hosts = hosts_config()
    hosts["hosts"] = [{**h, "data": "PG"} if h["name"] == "nuc" else h for h in hosts["hosts"]]
    with pytest.raises(ConfigError) as caught:
        run_program(hosts)
    assert any(p.startswith("swarm:hosts[2].data ") for p in caught.value.problems), caught.value.problems
