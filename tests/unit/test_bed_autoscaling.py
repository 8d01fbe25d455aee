"""The bed's Auto Scaling (testbed/autoscaling.py), its API as boto3 speaks it, the metadata
it hands IMDS, and the engine's answers for the worker groups' resource types. A fake
launcher stands in for the machines: no root, no bed, seconds."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time

import boto3
import botocore.exceptions
import pytest
from testbed import providers
from testbed.autoscaling import (
    IN_SERVICE,
    TERMINATED,
    WAITING,
    AutoScaling,
    AutoScalingError,
    GroupSpec,
    Instance,
    on_demand_wanted,
)
from testbed.host import BedError
from testbed.imds import serve as serve_imds

GROUP = "swarm-dev-batch"
ZONES = {"subnet-a": "eu-west-1a", "subnet-b": "eu-west-1b", "subnet-c": "eu-west-1c"}


class FakeLauncher:
    """Machines that boot in a moment; `fail` makes every launch fail."""

    def __init__(self):
        self.launched: list[str] = []
        self.terminated: list[str] = []
        self.fail = False
        self.lock = threading.Lock()

    def launch(self, instance: Instance) -> None:
        time.sleep(0.02)
        if self.fail:
            raise BedError("InsufficientInstanceCapacity")
        with self.lock:
            self.launched.append(instance.instance_id)
            instance.ip, instance.host = f"10.0.0.{len(self.launched)}", f"batch-{instance.instance_id}"

    def terminate(self, instance: Instance) -> None:
        with self.lock:
            self.terminated.append(instance.instance_id)


def group_inputs(desired: int = 4, *, base: int = 1, percentage: int = 0, heartbeat: int = 300, **extra) -> dict:
    """What pulumi-aws sends for the program's worker group (camelCase)."""
    return {
        "name": GROUP,
        "minSize": 0,
        "maxSize": 6,
        "desiredCapacity": desired,
        "vpcZoneIdentifiers": ["subnet-a", "subnet-b"],
        "capacityRebalance": True,
        "forceDelete": True,
        "mixedInstancesPolicy": {
            "instancesDistribution": {
                "onDemandBaseCapacity": base,
                "onDemandPercentageAboveBaseCapacity": percentage,
                "spotAllocationStrategy": "price-capacity-optimized",
            },
            "launchTemplate": {
                "launchTemplateSpecification": {"launchTemplateId": "lt-0bed", "version": "$Latest"},
                "overrides": [{"instanceType": "t3.small"}, {"instanceType": "t3a.small"}],
            },
        },
        "initialLifecycleHooks": [
            {
                "name": "swarm-drain",
                "lifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                "heartbeatTimeout": heartbeat,
                "defaultResult": "CONTINUE",
            }
        ],
        "tags": [
            {"key": "swarm:stack", "value": "swarm/dev", "propagateAtLaunch": True},
            {"key": "swarm:group", "value": "batch", "propagateAtLaunch": True},
        ],
        **extra,
    }


@pytest.fixture
def model():
    autoscaling = AutoScaling(linger=0.5)
    autoscaling.templates.put("lt-0bed", {"userData": base64.b64encode(b"#!/bin/sh\n").decode()})
    yield autoscaling
    autoscaling.close()


@pytest.fixture
def launcher():
    return FakeLauncher()


def start(model: AutoScaling, launcher: FakeLauncher, **inputs) -> None:
    model.create_group(GroupSpec.from_inputs(group_inputs(**inputs), ZONES.__getitem__), launcher)
    model.wait_for_capacity(GROUP, 10)


def client(endpoint: str):
    return boto3.client(
        "autoscaling", endpoint_url=endpoint, region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


def states(model: AutoScaling) -> dict[str, str]:
    return {i["InstanceId"]: i["LifecycleState"] for i in model.describe(GROUP)["Instances"]}


def waiting(model: AutoScaling) -> list[dict]:
    return [i for i in model.describe(GROUP)["Instances"] if i["LifecycleState"] == WAITING]


# -- the model ---------------------------------------------------------------------------
def test_on_demand_share_is_the_base_then_the_percentage_rounded_up():
    spec = GroupSpec.from_inputs(group_inputs(base=1, percentage=25), ZONES.__getitem__)
    assert [on_demand_wanted(spec, n) for n in range(7)] == [0, 1, 2, 2, 2, 2, 3]
    everything = GroupSpec.from_inputs({**group_inputs(), "mixedInstancesPolicy": None}, ZONES.__getitem__)
    assert on_demand_wanted(everything, 3) == 3  # no distribution: all on-demand, as AWS


def test_the_group_spec_reads_the_inputs_pulumi_aws_sends():
    spec = GroupSpec.from_inputs(group_inputs(), ZONES.__getitem__)
    assert spec.subnets == [("subnet-a", "eu-west-1a"), ("subnet-b", "eu-west-1b")]
    assert (spec.template_id, spec.template_version) == ("lt-0bed", "$Latest")
    assert spec.instance_types == ["t3.small", "t3a.small"]
    assert (spec.on_demand_base, spec.on_demand_percentage, spec.capacity_rebalance) == (1, 0, True)
    (hook,) = spec.hooks
    assert (hook.name, hook.heartbeat_timeout, hook.default_result) == ("swarm-drain", 300, "CONTINUE")


def test_create_launches_the_desired_capacity_balanced_over_zones_with_the_distribution(model, launcher):
    start(model, launcher, desired=4, base=1, percentage=0)
    instances = model.describe(GROUP)["Instances"]
    assert [i["LifecycleState"] for i in instances] == [IN_SERVICE] * 4
    assert sorted(i["AvailabilityZone"] for i in instances) == ["eu-west-1a"] * 2 + ["eu-west-1b"] * 2
    assert sorted(i["Lifecycle"] for i in instances) == ["on-demand", "spot", "spot", "spot"]
    assert sorted(launcher.launched) == sorted(i["InstanceId"] for i in instances)
    assert all(model.instance(i["InstanceId"]).tags["swarm:group"] == "batch" for i in instances)


def test_scale_in_drains_through_the_hook_the_instance_the_default_policy_picks(model, launcher):
    start(model, launcher, desired=3, base=1, percentage=0)  # a: on-demand, spot; b: spot
    spots_in_a = [i for i in model.in_service(GROUP) if i.zone == "eu-west-1a" and i.spot]
    model.set_desired(GROUP, 2)
    (victim,) = model.wait_for(lambda: waiting(model), 5)
    # The zone with the most instances, and a spot one: the on-demand base must stay.
    assert victim["InstanceId"] == spots_in_a[0].instance_id
    assert model.metadata(victim["InstanceId"])["autoscaling/target-lifecycle-state"] == "Terminated"
    time.sleep(0.2)
    assert launcher.terminated == [], "a hook holds the machine until its action completes"
    model.complete_lifecycle_action(GROUP, "swarm-drain", victim["InstanceId"], "CONTINUE")
    model.wait_for(lambda: launcher.terminated == [victim["InstanceId"]], 5)
    assert model.instance(victim["InstanceId"]).state == TERMINATED
    model.wait_for(lambda: victim["InstanceId"] not in states(model), 5, "the terminated instance to leave the list")
    assert len(model.in_service(GROUP)) == 2


def test_the_hook_times_out_into_its_default_result_and_a_heartbeat_restarts_it(model, launcher):
    start(model, launcher, desired=2, base=0, percentage=100, heartbeat=1)
    model.set_desired(GROUP, 1)
    (victim,) = model.wait_for(lambda: waiting(model), 5)
    time.sleep(0.6)
    model.record_heartbeat(GROUP, "swarm-drain", victim["InstanceId"])
    time.sleep(0.6)
    assert launcher.terminated == [], "the heartbeat gave it another second"
    model.wait_for(lambda: launcher.terminated, 5)
    assert model.instance(victim["InstanceId"]).result == "CONTINUE (timeout)"


def test_a_spot_reclaim_ends_at_its_notice_whatever_the_hook_and_is_replaced(model, launcher):
    start(model, launcher, desired=2, base=1, percentage=0)
    on_demand = next(i for i in model.in_service(GROUP) if not i.spot)
    spot = next(i for i in model.in_service(GROUP) if i.spot)
    with pytest.raises(AutoScalingError, match="on-demand"):
        model.reclaim(on_demand.instance_id)
    assert "spot/instance-action" not in model.metadata(spot.instance_id)
    model.reclaim(spot.instance_id, notice=0.5)
    action = json.loads(model.metadata(spot.instance_id)["spot/instance-action"])
    assert action["action"] == "terminate" and action["time"].endswith("Z")
    assert model.instance(spot.instance_id).state == WAITING
    model.wait_for(lambda: spot.instance_id in launcher.terminated, 5, "the reclaim")
    assert model.instance(spot.instance_id).result == "reclaimed"
    model.wait_for(lambda: len(model.in_service(GROUP)) == 2, 5, "the replacement")
    assert len(launcher.launched) == 3


def test_a_reclaim_completed_by_the_drain_goes_at_once(model, launcher):
    start(model, launcher, desired=1, base=0, percentage=0)
    (spot,) = model.in_service(GROUP)
    model.reclaim(spot.instance_id)  # AWS's two minutes: the completion ends it first
    model.complete_lifecycle_action(GROUP, "swarm-drain", spot.instance_id, "CONTINUE")
    model.wait_for(lambda: spot.instance_id in launcher.terminated, 5)


def test_a_rebalance_launches_the_replacement_before_draining_the_instance_at_risk(model, launcher):
    start(model, launcher, desired=1, base=0, percentage=0)
    (at_risk,) = model.in_service(GROUP)
    model.rebalance(at_risk.instance_id)
    assert "noticeTime" in json.loads(model.metadata(at_risk.instance_id)["events/recommendations/rebalance"])
    (drained,) = model.wait_for(lambda: waiting(model), 5)
    assert drained["InstanceId"] == at_risk.instance_id
    replacement = next(i for i in model.in_service(GROUP) if i.instance_id != at_risk.instance_id)
    assert replacement.spot and replacement.replaces == at_risk.instance_id
    model.complete_lifecycle_action(GROUP, "swarm-drain", at_risk.instance_id, "CONTINUE")
    model.wait_for(lambda: launcher.terminated == [at_risk.instance_id], 5)
    assert [i.instance_id for i in model.in_service(GROUP)] == [replacement.instance_id]


def test_a_killed_machine_goes_at_once_without_the_hook_and_is_replaced(model, launcher):
    start(model, launcher, desired=2)
    victim = model.in_service(GROUP)[0]
    model.kill(victim.instance_id)
    assert launcher.terminated == [victim.instance_id]
    assert model.instance(victim.instance_id).health == "Unhealthy"
    model.wait_for(lambda: len(model.in_service(GROUP)) == 2, 5, "the replacement")


def test_force_delete_terminates_everything_at_once_even_instances_held_by_the_hook(model, launcher):
    start(model, launcher, desired=3)
    model.set_desired(GROUP, 2)
    model.wait_for(lambda: waiting(model), 5)
    started = time.monotonic()
    model.delete_group(GROUP)
    assert time.monotonic() - started < 2
    assert sorted(launcher.terminated) == sorted(launcher.launched)
    assert GROUP not in model.groups


def test_a_group_whose_launches_fail_stops_trying_and_fails_the_wait(model, launcher):
    launcher.fail = True
    model.create_group(GroupSpec.from_inputs(group_inputs(desired=2), ZONES.__getitem__), launcher)
    with pytest.raises(AutoScalingError, match="InsufficientInstanceCapacity"):
        model.wait_for_capacity(GROUP, 10)


def test_a_new_template_version_reaches_only_new_instances(model, launcher):
    start(model, launcher, desired=1)
    (first,) = model.in_service(GROUP)
    latest, default = model.templates.put("lt-0bed", {"userData": base64.b64encode(b"#!/bin/sh\necho 2\n").decode()})
    assert (latest, default) == (2, 1)
    assert model.templates.put("lt-0bed", {"userData": base64.b64encode(b"#!/bin/sh\necho 2\n").decode()}) == (2, 1)
    model.set_desired(GROUP, 2)
    model.wait_for(lambda: len(model.in_service(GROUP)) == 2, 5)
    versions = {i.instance_id: i.template_version for i in model.in_service(GROUP)}
    assert versions.pop(first.instance_id) == 1 and list(versions.values()) == [2]
    # Scale-in takes the oldest template version first (after the zone and purchase option).
    model.update_group(GroupSpec.from_inputs(group_inputs(desired=1, base=0, percentage=100), ZONES.__getitem__))
    assert {i["InstanceId"] for i in waiting(model)} == {first.instance_id}


def test_update_clamps_and_keeps_the_desired_capacity_when_the_program_gives_none(model, launcher):
    start(model, launcher, desired=2)
    without = {k: v for k, v in group_inputs().items() if k != "desiredCapacity"}
    model.update_group(GroupSpec.from_inputs({**without, "maxSize": 3}, ZONES.__getitem__))
    assert model.describe(GROUP)["DesiredCapacity"] == 2
    with pytest.raises(AutoScalingError, match="must be between"):
        model.update_group(GroupSpec.from_inputs({**group_inputs(), "desiredCapacity": 9}, ZONES.__getitem__))


# -- the API, as boto3 (and the AWS CLI) speak it ----------------------------------------
def test_the_api_answers_botocore_and_counts_each_action(model, launcher):
    start(model, launcher, desired=2, base=0, percentage=100)
    api = client(model.serve("127.0.0.1", 0))
    groups = api.describe_auto_scaling_groups(Filters=[{"Name": "tag:swarm:stack", "Values": ["swarm/dev"]}])
    (group,) = groups["AutoScalingGroups"]
    assert (group["AutoScalingGroupName"], group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (
        GROUP,
        0,
        6,
        2,
    )
    assert {i["LifecycleState"] for i in group["Instances"]} == {IN_SERVICE}
    assert group["Instances"][0]["ProtectedFromScaleIn"] is False
    assert {t["Key"]: t["Value"] for t in group["Tags"]}["swarm:group"] == "batch"
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    other = api.describe_auto_scaling_groups(Filters=[{"Name": "tag:swarm:stack", "Values": ["swarm/prod"]}])
    assert other["AutoScalingGroups"] == []
    assert len(api.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]) == 1
    (hook,) = api.describe_lifecycle_hooks(AutoScalingGroupName=GROUP)["LifecycleHooks"]
    assert (hook["LifecycleHookName"], hook["HeartbeatTimeout"], hook["DefaultResult"]) == (
        "swarm-drain",
        300,
        "CONTINUE",
    )

    api.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=1)
    (victim,) = model.wait_for(lambda: waiting(model), 5)
    api.record_lifecycle_action_heartbeat(
        AutoScalingGroupName=GROUP, LifecycleHookName="swarm-drain", InstanceId=victim["InstanceId"]
    )
    api.complete_lifecycle_action(
        AutoScalingGroupName=GROUP,
        LifecycleHookName="swarm-drain",
        InstanceId=victim["InstanceId"],
        LifecycleActionResult="CONTINUE",
    )
    model.wait_for(lambda: launcher.terminated == [victim["InstanceId"]], 5)
    assert model.requests == {
        "DescribeAutoScalingGroups": 3,
        "DescribeLifecycleHooks": 1,
        "SetDesiredCapacity": 1,
        "RecordLifecycleActionHeartbeat": 1,
        "CompleteLifecycleAction": 1,
    }


def test_the_api_refuses_as_aws_does(model, launcher):
    start(model, launcher, desired=1)
    api = client(model.serve("127.0.0.1", 0))
    (instance,) = model.in_service(GROUP)
    with pytest.raises(botocore.exceptions.ClientError) as error:
        api.complete_lifecycle_action(
            AutoScalingGroupName=GROUP,
            LifecycleHookName="swarm-drain",
            InstanceId=instance.instance_id,
            LifecycleActionResult="CONTINUE",
        )
    assert error.value.response["Error"]["Code"] == "ValidationError"
    assert error.value.response["Error"]["Message"] == (
        f"No active Lifecycle Action found with instance ID {instance.instance_id}"
    )
    with pytest.raises(botocore.exceptions.ClientError, match="above max value 6"):
        api.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=7)
    with pytest.raises(botocore.exceptions.ClientError, match="AutoScalingGroup name not found"):
        api.set_desired_capacity(AutoScalingGroupName="nope", DesiredCapacity=1)
    assert model.describe(GROUP)["DesiredCapacity"] == 1


# -- IMDS ----------------------------------------------------------------------------------
def imds_get(port: int, source: str, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_imds_tells_each_instance_about_itself_and_what_the_group_does_to_it(model, launcher):
    server = serve_imds("127.0.0.1", 0, "eu-west-1", {"aws_access_key_id": "k", "aws_secret_access_key": "s"})
    port = server.server_address[1]
    try:
        start(model, launcher, desired=1, base=0, percentage=0)
        (spot,) = model.in_service(GROUP)
        static = {"instance-id": spot.instance_id, "local-ipv4": "127.0.0.2", "placement/availability-zone": spot.zone}
        server.register(
            "127.0.0.2",
            hop_limit=2,
            tokens_required=False,
            role=False,
            meta_data=static,
            dynamic=lambda: model.metadata(spot.instance_id),
        )
        server.register(
            "127.0.0.3",
            hop_limit=2,
            tokens_required=False,
            role=True,
            meta_data={"instance-id": "i-0manager", "instance-life-cycle": "on-demand"},
        )
        assert imds_get(port, "127.0.0.2", "/latest/meta-data/instance-id") == (200, spot.instance_id)
        assert imds_get(port, "127.0.0.3", "/latest/meta-data/instance-id") == (200, "i-0manager")
        assert imds_get(port, "127.0.0.2", "/latest/meta-data/instance-life-cycle") == (200, "spot")
        assert imds_get(port, "127.0.0.2", "/latest/meta-data/placement/availability-zone") == (200, spot.zone)
        assert imds_get(port, "127.0.0.2", "/latest/meta-data/autoscaling/target-lifecycle-state") == (200, "InService")
        assert imds_get(port, "127.0.0.2", "/latest/meta-data/spot/instance-action")[0] == 404
        assert imds_get(port, "127.0.0.3", "/latest/meta-data/autoscaling/target-lifecycle-state")[0] == 404
        # The role rule stands: no profile, no credentials.
        assert imds_get(port, "127.0.0.2", "/latest/meta-data/iam/security-credentials/")[0] == 404
        assert imds_get(port, "127.0.0.3", "/latest/meta-data/iam/security-credentials/")[0] == 200
        model.reclaim(spot.instance_id)
        status, body = imds_get(port, "127.0.0.2", "/latest/meta-data/spot/instance-action")
        assert status == 200 and json.loads(body)["action"] == "terminate"
        assert imds_get(port, "127.0.0.2", "/latest/meta-data/autoscaling/target-lifecycle-state") == (
            200,
            "Terminated",
        )
    finally:
        server.shutdown()
        server.server_close()


# -- what the providers answer the engine ----------------------------------------------------
def test_the_worker_groups_types_replace_and_compute_as_their_providers_do():
    assert providers.replace_keys(providers.GROUP, {}) >= {"name"}
    assert "desiredCapacity" not in providers.replace_keys(providers.GROUP, {})
    assert providers.replace_keys(providers.LAUNCH_TEMPLATE, {}) >= {"name"}
    assert "userData" not in providers.replace_keys(providers.LAUNCH_TEMPLATE, {})
    assert providers.replace_keys(providers.PARAMETER, {}) == {"name"}
    assert providers.replace_keys(providers.OBJECT, {}) == {"bucket", "key"}
    assert "latestVersion" in providers.computed_keys(providers.LAUNCH_TEMPLATE, {"namePrefix": "w-"})
    assert "name" not in providers.computed_keys(providers.GROUP, {"name": GROUP, "desiredCapacity": 1})
    assert "latestVersion" in providers.recomputed_keys(providers.LAUNCH_TEMPLATE)
    assert providers.recomputed_keys(providers.OBJECT) == {"etag", "versionId"}
    assert {"name", "arn"} <= providers.computed_keys("aws:iam/instanceProfile:InstanceProfile", {})


# -- the engine's resources, against moto and the model (machines faked) ----------------------
class FakeBed:
    """What Resources needs of a bed for these types: moto on loopback, and the model."""

    def __init__(self, endpoint: str, autoscaling: AutoScaling):
        self.endpoint, self.autoscaling = endpoint, autoscaling

    def _client(self, service: str):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="eu-west-1",
            aws_access_key_id="t",
            aws_secret_access_key="t",
        )

    def s3(self):
        return self._client("s3")

    def ssm(self):
        return self._client("ssm")


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def resources(moto_endpoint, model, launcher, tmp_path):
    from testbed.records import State
    from testbed.resources import Resources

    subnets = [
        State(
            f"urn:{s}",
            "aws:ec2/subnet:Subnet",
            s,
            s,
            {"cidrBlock": "10.0.0.0/24", "availabilityZone": z},
            {},
            set(),
            [],
            "",
            False,
            False,
        )
        for s, z in ZONES.items()
    ]
    lines: list[str] = []
    made = Resources(
        FakeBed(moto_endpoint, model),
        lines.append,
        lambda predicate: next((s for s in subnets if predicate(s)), None),
        image=None,
        wait_for_boot=False,
        log_dir=tmp_path,
        project_dir=tmp_path,
    )
    made.launch, made.terminate = launcher.launch, launcher.terminate  # no machines here
    made.lines = lines
    return made


def state(type_: str, name: str, inputs: dict):
    from testbed.records import State

    return State(f"urn:{name}", type_, name, "", inputs, {}, set(), [], "", False, False)


def test_a_launch_template_and_its_group_come_up_and_a_destroy_force_deletes(resources, launcher, model):
    model.templates.delete("lt-0bed")
    template = state(providers.LAUNCH_TEMPLATE, "batch-template", {"namePrefix": "batch-", "userData": "eA=="})
    resources.create(template)
    assert template.id.startswith("lt-") and template.outputs["latestVersion"] == 1
    inputs = group_inputs(desired=2)
    inputs["mixedInstancesPolicy"]["launchTemplate"]["launchTemplateSpecification"]["launchTemplateId"] = template.id
    group = state(providers.GROUP, "batch", inputs)
    resources.create(group)
    assert group.id == GROUP and group.outputs["arn"].startswith("arn:aws:autoscaling:")
    assert len(model.in_service(GROUP)) == 2, "create returns with the desired capacity InService"
    updated = state(providers.LAUNCH_TEMPLATE, "batch-template", {"namePrefix": "batch-", "userData": "eQ=="})
    resources.update(template, updated)
    assert (updated.id, updated.outputs["latestVersion"], updated.outputs["name"]) == (
        template.id,
        2,
        template.outputs["name"],
    )
    resources.delete(group)
    assert sorted(launcher.terminated) == sorted(launcher.launched) and GROUP not in model.groups


def test_a_parameter_goes_into_ssm_and_its_value_into_no_log(resources, moto_endpoint):
    name = "/swarm/swarm/dev/worker-join-token"
    token = "SWMTKN-1-secretsecretsecret"
    parameter = state(providers.PARAMETER, "join-token", {"name": name, "type": "SecureString", "value": token})
    resources.create(parameter)
    ssm = resources.bed.ssm()
    answer = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert (answer["Value"], answer["Type"]) == (token, "SecureString")
    assert parameter.outputs["version"] == 1 and "value" in parameter.secret_outputs
    again = state(providers.PARAMETER, "join-token", {"name": name, "type": "SecureString", "value": token + "2"})
    resources.update(parameter, again)
    assert again.outputs["version"] == 2
    resources.delete(again)
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=name)
    assert not any(token in line for line in resources.lines)


def test_an_object_goes_into_the_bucket_and_every_version_of_it_goes_on_delete(resources):
    s3 = resources.bed.s3()
    s3.create_bucket(Bucket="state", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket="state", VersioningConfiguration={"Status": "Enabled"})
    key = "swarm/dev/agent/0123abcd.tar.gz"
    body = b"\x1f\x8b agent"
    inputs = {"bucket": "state", "key": key, "contentBase64": base64.b64encode(body).decode()}
    agent = state(providers.OBJECT, "agent", {**inputs, "contentType": "application/gzip"})
    resources.create(agent)
    assert agent.id == key and agent.outputs["versionId"]
    assert s3.get_object(Bucket="state", Key=key)["Body"].read() == body
    newer = state(providers.OBJECT, "agent", {**inputs, "content": "text"})
    newer.raw_inputs.pop("contentBase64")
    resources.update(agent, newer)
    assert newer.outputs["versionId"] != agent.outputs["versionId"]
    resources.delete(newer)
    assert "Versions" not in s3.list_object_versions(Bucket="state", Prefix=key)
