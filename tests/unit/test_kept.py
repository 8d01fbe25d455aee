"""The morning refuses a config that would drop what outlives the night (issue 19, item 17),
before `pulumi up --skip-preview` builds anything, with the steps that release it."""

from __future__ import annotations

import pytest

from swarmcli import cycle, kept, outputs, pulumicli
from swarmcli.errors import SwarmCliError
from swarmcli.progress import Progress

ROOT_URN = "urn:pulumi:dev::swarm::swarm:index:SwarmCluster"
STORE = f"{ROOT_URN}$swarm:index:StateStore::swarm-dev-state"
BUCKET = f"{ROOT_URN}$swarm:index:StateStore$aws:s3/bucket:Bucket::swarm-dev-state-bucket"
SSH_KEY = f"{ROOT_URN}$swarm:index:Nodes$tls:index/privateKey:PrivateKey::swarm-dev-nodes-ssh-key"
SEED = f"{ROOT_URN}$swarm:index:Nodes$random:index/randomBytes:RandomBytes::swarm-dev-nodes-host-key-seed"
ADDRESS = (
    f"{ROOT_URN}$swarm:index:Nodes$swarm:index:ManagerAddresses$aws:ec2/eip:Eip::swarm-dev-nodes-addresses-manager-0"
)
FORMATION = f"{ROOT_URN}$swarm:index:SwarmFormation"
SIGNING = f"{FORMATION}$random:index/randomBytes:RandomBytes::swarm-dev-swarm-backup-signing-key"


def resource(urn: str, protect: bool = True, **outputs) -> dict:
    return {"urn": urn, "type": urn.split("$")[-1].split("::")[0], "protect": protect, "outputs": outputs}


AFTER_A_NIGHT = [
    resource(STORE),
    resource(BUCKET, bucket="swarm-dev-state-bucket-0a1b2c3"),
    resource(f"{ROOT_URN}$swarm:index:StateStore$aws:s3/bucketVersioning:BucketVersioning::swarm-dev-state-versioning"),
    resource(SSH_KEY),
    resource(SEED),
    resource(ADDRESS, allocationId="eipalloc-0a1b2c3d4e5f60718"),
    resource(SIGNING),
]


@pytest.mark.parametrize(
    ("config", "setting"),
    [({"swarm:existingStateBucket": "team-backups"}, "swarm:existingStateBucket"),
     ({"swarm:backupTarget": "none"}, "swarm:backupTarget none")],
)  # fmt: skip
def test_moving_off_the_state_bucket_is_refused_with_the_steps(config, setting):
    [problem] = kept.dropped(AFTER_A_NIGHT, config)
    assert problem.setting == setting
    assert STORE in problem.urns and BUCKET in problem.urns and SIGNING not in problem.urns
    message = problem.message("dev")
    assert "aws s3 sync s3://swarm-dev-state-bucket-0a1b2c3/" in message
    assert "pulumi state delete --force --stack dev <urn>" in message and "Nothing was started" in message


def test_moving_to_your_own_machines_is_refused_with_the_steps():
    problems = kept.dropped(AFTER_A_NIGHT, {"swarm:hosts": '[{"name": "pi-0"}]', "swarm:backupTarget": "s3"})
    assert [p.setting for p in problems] == ["swarm:hosts"]
    assert problems[0].urns == [SSH_KEY, SEED, ADDRESS]
    # Forgotten by Pulumi, an address would go on costing: the steps release it too.
    assert "aws ec2 release-address --allocation-id eipalloc-0a1b2c3d4e5f60718" in problems[0].message("dev")


def test_moving_to_your_own_machines_names_the_data_volumes_and_their_snapshot_policy():
    volume = resource(f"{ROOT_URN}$aws:ebs/volume:Volume::swarm-dev-data-pg")
    volume["id"] = "vol-0123456789abcdef0"
    policy = resource(f"{ROOT_URN}$aws:dlm/lifecyclePolicy:LifecyclePolicy::swarm-dev-data-snapshots")
    node_role = resource(f"{ROOT_URN}$swarm:index:NodeRole$aws:iam/role:Role::swarm-dev-node-role", protect=False)
    problems = kept.dropped([*AFTER_A_NIGHT, volume, policy, node_role], {"swarm:hosts": "[]"})
    assert [p.setting for p in problems] == ["swarm:hosts", "swarm:hosts"]
    data = problems[1]
    assert data.urns == [volume["urn"], policy["urn"]]  # the night's role is not kept: not named
    assert "vol-0123456789abcdef0" in data.message("dev") and "create-snapshot" in data.message("dev")


def test_a_config_that_keeps_everything_passes():
    assert kept.dropped(AFTER_A_NIGHT, {"swarm:restoreFrom": "latest"}) == []
    # A first morning: nothing kept yet, nothing to drop.
    assert kept.dropped([], {"swarm:existingStateBucket": "team-backups", "swarm:hosts": "[]"}) == []


def test_the_morning_stops_before_pulumi_up(monkeypatch):
    calls = []
    monkeypatch.setattr(cycle, "preflight", lambda progress: None)
    monkeypatch.setattr(outputs, "config_values", lambda stack: {"swarm:existingStateBucket": "team-backups"})
    monkeypatch.setattr(outputs, "stack_resources", lambda stack: AFTER_A_NIGHT)
    monkeypatch.setattr(pulumicli, "run", lambda args, *rest, **kw: calls.append(args))
    with pytest.raises(SwarmCliError, match="swarm:existingStateBucket would drop the state bucket"):
        cycle.morning("dev", None, Progress("morning"), {})
    assert calls == []  # no `pulumi up`, nothing else either


# -- the night without a backup (issue 19, item 12) ---------------------------------------
def command(name: str) -> dict:
    return {"urn": f"{FORMATION}$command:remote:Command::{name}", "type": "command:remote:Command"}


class FakeState:
    """`pulumi stack export` and `pulumi state delete --target-dependents`, as the CLI calls them."""

    def __init__(self, resources: list[dict], dependents: dict[str, list[str]]):
        self.resources, self.dependents, self.calls = resources, dependents, []

    def run(self, args, stack, **kw):
        self.calls.append(args)
        if args[:2] == ["state", "delete"]:
            urn = args[-1]
            gone = {urn, *self.dependents.get(urn, [])}
            assert urn in [r["urn"] for r in self.resources], f"{urn} is not in the state any more"
            self.resources = [r for r in self.resources if r["urn"] not in gone]


def test_without_backup_forgets_the_hooks_then_destroys_with_no_manager_needed(monkeypatch):
    backup, teardown = command("swarm-dev-swarm-backup"), command("swarm-dev-swarm-teardown")
    retires = [command(f"swarm-dev-swarm-retire-swarm-dev-{n}") for n in ("manager-0", "manager-1", "worker-0")]
    join, leave = command("swarm-dev-swarm-join-swarm-dev-worker-0"), command("swarm-dev-swarm-leave-pi-1")
    state = FakeState(
        # In dependency order, as `pulumi stack export` lists them.
        [leave, *retires, join, teardown, backup, resource(BUCKET)],
        # Every retire takes the teardown and the backup (and its join) with it.
        {r["urn"]: [teardown["urn"], backup["urn"], join["urn"]] for r in retires},
    )
    monkeypatch.setattr(cycle, "preflight", lambda progress: None)
    monkeypatch.setattr(outputs, "stack_resources", lambda stack: state.resources)
    monkeypatch.setattr(pulumicli, "run", state.run)
    monkeypatch.setattr(cycle.backups, "bucket_of_stack", lambda stack: ("b", "swarm/dev/"))
    monkeypatch.setattr(cycle.backups, "s3_client", lambda endpoint: None)
    monkeypatch.setattr(cycle.backups, "list_backups", lambda s3, bucket, prefix: [])
    summary: dict = {}
    cycle.night("dev", None, Progress("night"), summary, without_backup=True)
    deletes = [c[-1] for c in state.calls if c[:2] == ["state", "delete"]]
    assert deletes == [r["urn"] for r in retires]  # the first took the teardown and backup along
    assert state.calls[-1][:2] == ["destroy", "--exclude-protected"]
    remaining = [r["urn"] for r in state.resources]
    assert leave["urn"] in remaining and BUCKET in remaining  # an own host still leaves; the bucket stays
    assert summary["forgotten"][0] == "swarm-dev-swarm-retire-swarm-dev-manager-0"


def test_the_steps_forget_children_before_their_parent():
    [problem] = kept.dropped(AFTER_A_NIGHT, {"swarm:backupTarget": "local"})
    message = problem.message("dev")
    assert message.index(f"'{BUCKET}'") < message.index(f"'{STORE}'")


LOG_STORE = "urn:pulumi:dev::swarm::swarm:index:LogStore::swarm-dev-logs"
LOG_GROUP = f"{LOG_STORE.rsplit('::', 1)[0]}$aws:cloudwatch/logGroup:LogGroup::swarm-dev-logs-group"
TOPIC = f"{LOG_STORE.rsplit('::', 1)[0]}$aws:sns/topic:Topic::swarm-dev-logs-alarms"
# A URN names its parent's type alone: an alarm's names the topic, not the LogStore.
ALARM = (
    "urn:pulumi:dev::swarm::aws:sns/topic:Topic$aws:cloudwatch/metricAlarm:MetricAlarm::swarm-dev-logs-morning-failed"
)
WITH_LOGS = [*AFTER_A_NIGHT, resource(LOG_STORE), resource(LOG_GROUP, name="/swarm/swarm/dev"), resource(TOPIC),
             resource(ALARM)]  # fmt: skip


@pytest.mark.parametrize("config", [{"swarm:logs": "none"}, {"swarm:hosts": "[...]", "swarm:s3AccessKeyId": "k"}])
def test_turning_logs_off_is_refused_with_the_steps_that_keep_them_in_aws(config):
    """swarm:logs none (the default with swarm:hosts) would drop the kept group, topic and
    alarms: every later `up` would fail. The steps forget them, alarms first; the events stay."""
    problems = {p.setting: p for p in kept.dropped(WITH_LOGS, config)}
    problem = problems["swarm:logs none"]
    assert problem.urns == [LOG_STORE, LOG_GROUP, TOPIC, ALARM]
    message = problem.message("dev")
    assert message.index(ALARM) < message.index(TOPIC) < message.index(LOG_STORE)
    assert "/swarm/swarm/dev keeps its events" in message and "pulumi config rm --stack dev swarm:logs" in message
    assert not [p for p in kept.dropped(WITH_LOGS, {"swarm:logs": "cloudwatch"}) if "logs" in p.setting]
    assert not [p for p in kept.dropped(WITH_LOGS, {}) if "logs" in p.setting]
