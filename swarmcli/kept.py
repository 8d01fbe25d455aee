"""What outlives the night must never be dropped by a config change (README: Security,
"What outlives the night"). The program cannot see its own state, so the morning looks
before `pulumi up --skip-preview` builds anything: a protected resource in the state that
the new config would stop registering fails that `up` at its very end ("cannot be
deleted because it is protected"), and every `up` after it. Each rule names the switch,
what it would drop, and the exact steps that release it first without losing it.
"""

from __future__ import annotations

from dataclasses import dataclass

BUCKET = "aws:s3/bucket:Bucket"
STATE_STORE = "swarm:index:StateStore"
LOG_STORE = "swarm:index:LogStore"
# What only the LogStore makes (components/logs.py), all of it protected.
LOG_TYPES = ("aws:cloudwatch/logGroup:LogGroup", "aws:sns/topic:Topic", "aws:cloudwatch/metricAlarm:MetricAlarm")
OPERATOR_KEY = "tls:index/privateKey:PrivateKey"
SEED = "random:index/randomBytes:RandomBytes"
ADDRESS = "aws:ec2/eip:Eip"
AMI_RECORD = "random:index/randomShuffle:RandomShuffle"
# swarm:dataVolumes and swarm:sharedFiles: EC2's data, its snapshot policy and their role.
DATA_TYPES = (
    "aws:ebs/volume:Volume",
    "aws:dlm/lifecyclePolicy:LifecyclePolicy",
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/role:Role",
    "aws:efs/fileSystem:FileSystem",
)


@dataclass(frozen=True)
class Dropped:
    setting: str
    what: str
    urns: list[str]
    keep: str  # how to keep what it holds

    def message(self, stack: str) -> str:
        # Children before their parent: Pulumi refuses to forget a resource something is parented to.
        forget = " ".join(f"'{urn}'" for urn in reversed(self.urns))
        return (
            f"{self.setting} would drop {self.what}, which is protected: this `up` and every later one would fail "
            f"at the end ('cannot be deleted because it is protected'). Nothing was started. {self.keep} Then "
            f"release it from the state (the resources stay in AWS), in this order: for each of {forget}: "
            f"pulumi state delete --force --stack {stack} <urn>; then run the morning again. "
            f"Or undo the change: pulumi config rm --stack {stack} {self.setting.split()[0]}."
        )


def dropped(resources: list[dict], config: dict[str, str]) -> list[Dropped]:
    """The kept resources in `resources` (a `pulumi stack export`) that `config` would drop."""
    protected = [r for r in resources if r.get("protect") and not r.get("delete")]
    found = []
    store = [r["urn"] for r in protected if STATE_STORE in r["urn"]]
    target = config.get("swarm:backupTarget") or "s3"
    switch = "swarm:existingStateBucket" if config.get("swarm:existingStateBucket") else None
    switch = switch or (f"swarm:backupTarget {target}" if target != "s3" else None)
    if store and switch:
        bucket = next((r.get("outputs", {}).get("bucket", "") for r in protected if r["type"] == BUCKET), "")
        found.append(Dropped(switch, f"the state bucket {bucket} and its settings", store,
                             f"Copy the backups you keep first: aws s3 sync s3://{bucket}/ <where>."))  # fmt: skip
    if config.get("swarm:hosts"):
        types = (OPERATOR_KEY, SEED, ADDRESS, AMI_RECORD)
        ec2 = [r for r in protected if r["type"] in types and "swarm:index:Nodes" in r["urn"]]
        if ec2:
            what = "the EC2 nodes' operator SSH key, host-key seed, AMI record and Elastic IPs"
            found.append(Dropped("swarm:hosts", what, [r["urn"] for r in ec2], _addresses_step(ec2)))
        data = [r for r in protected if r["type"] in DATA_TYPES]
        if data:
            what = "the EC2 stack's data volumes and shared files"
            found.append(Dropped("swarm:hosts", what, [r["urn"] for r in data], _data_step(data)))
    found.extend(_logs_dropped(protected, config))
    return found


def _logs_dropped(protected: list[dict], config: dict[str, str]) -> list[Dropped]:
    """swarm:logs none (also the default with swarm:hosts) would drop the kept log group,
    alarm topic and alarms: stopped with the steps that keep the logs in AWS."""
    target = config.get("swarm:logs") or ("none" if config.get("swarm:hosts") else "cloudwatch")
    # A URN names its parent's type alone: the alarms (children of the topic) are found by type.
    store = [r for r in protected if LOG_STORE in r["urn"] or r["type"] in LOG_TYPES]
    if target != "none" or not store:
        return []
    group = next((r.get("outputs", {}).get("name", "") for r in store if r["type"].endswith("logGroup:LogGroup")), "")
    keep = (
        f"The log group {group} keeps its events (and its retention) in AWS once forgotten; "
        f"delete it there when you no longer need them (aws logs delete-log-group --log-group-name {group})."
    )
    what = f"the log group {group}, the alarm topic and its alarms"
    return [Dropped("swarm:logs none", what, [r["urn"] for r in store], keep)]


def _data_step(resources: list[dict]) -> str:
    """The data stays in AWS once forgotten: copy it to the machines you bring first."""
    volumes = [r.get("id", "") for r in resources if r["type"] == "aws:ebs/volume:Volume"]
    systems = [r.get("id", "") for r in resources if r["type"] == "aws:efs/fileSystem:FileSystem"]
    held = ", ".join([*volumes, *systems])
    return (
        f"Copy the data your hosts need first (it stays in AWS, and billed, until you delete {held} there; "
        f"a last snapshot: aws ec2 create-snapshot --volume-id <id>)."
    )


def _addresses_step(resources: list[dict]) -> str:
    """Nothing in the keys is needed by machines you bring; addresses cost until released."""
    ids = [r.get("outputs", {}).get("allocationId", "") for r in resources if r["type"] == ADDRESS]
    if not ids:
        return "Nothing in them is needed by machines you bring."
    release = "; ".join(f"aws ec2 release-address --allocation-id {i}" for i in ids)
    return f"Nothing in them is needed by machines you bring; the addresses cost until released, after: {release}."
