"""Worker groups (swarm:workerGroups) under mocks: each group an Auto Scaling group of spot
and on-demand workers from a launch template that holds no secret; the join token in SSM
only once the formation has read it; the groups formed before reconcile (so after the
night's backup when torn down); bad entries refused before anything is made."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json

import pytest
from harness import run_program
from test_hosts import hosts_config

from components.agent import agent_bundle
from components.settings import ConfigError

GROUP = "aws:autoscaling/group:Group"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
PARAMETER = "aws:ssm/parameter:Parameter"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
POLICY = "aws:iam/rolePolicy:RolePolicy"
SPOT = [{"name": "spot", "desired": 5, "max": 8, "onDemandBase": 2, "onDemandPercent": 0,
         "instanceTypes": ["t3.medium", "t3a.medium"], "labels": {"tier": "batch"}}]  # fmt: skip


def user_data(template) -> str:
    return gzip.decompress(base64.b64decode(template.inputs["userData"])).decode()


def test_a_group_is_an_auto_scaling_group_of_spot_and_on_demand_workers_with_a_drain_hook():
    run = run_program({"workerGroups": SPOT})
    (group,) = run.of_type(GROUP)
    (template,) = run.of_type(TEMPLATE)
    assert group.inputs["name"] == "swarm-dev-spot"
    assert (group.inputs["minSize"], group.inputs["desiredCapacity"], group.inputs["maxSize"]) == (0, 5, 8)
    mixed = group.inputs["mixedInstancesPolicy"]
    assert mixed["instancesDistribution"] == {
        "onDemandBaseCapacity": 2, "onDemandPercentageAboveBaseCapacity": 0,
        "spotAllocationStrategy": "price-capacity-optimized",
    }  # fmt: skip
    assert [o["instanceType"] for o in mixed["launchTemplate"]["overrides"]] == ["t3.medium", "t3a.medium"]
    assert mixed["launchTemplate"]["launchTemplateSpecification"]["launchTemplateId"] == f"{template.name}-id"
    assert group.inputs["capacityRebalance"] and group.inputs["forceDelete"]
    (hook,) = group.inputs["initialLifecycleHooks"]
    assert hook == {"name": "swarm-drain", "lifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                    "heartbeatTimeout": 300, "defaultResult": "CONTINUE"}  # fmt: skip
    assert len(group.inputs["vpcZoneIdentifiers"]) == 3
    assert "desiredCapacity" in group.ignore_changes, "an up during the day would undo a scale-out"
    # IMDSv2, one hop, an encrypted root volume, as every other machine.
    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    assert template.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert template.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


def test_the_template_pins_the_agent_s_sha256_and_holds_no_token_or_key():
    run = run_program({"workerGroups": SPOT})
    (template,) = run.of_type(TEMPLATE)
    (tarball,) = run.of_type(OBJECT)
    text = user_data(template)
    sha = hashlib.sha256(base64.b64decode(agent_bundle())).hexdigest()
    assert tarball.inputs["key"] == f"swarm/dev/agent/{sha}.tar.gz"
    assert tarball.inputs["contentBase64"] == agent_bundle()
    assert f"SWARM_AGENT_SHA256={sha}" in text and "sha256sum -c" in text
    assert "SWARM_GROUP=spot" in text and "SWARM_JOIN_TOKEN_PARAMETER=/swarm/swarm/dev/worker-join-token" in text
    assert "/usr/local/sbin/swarm-node group-join" in text
    assert "SWMTKN" not in text and "PRIVATE KEY" not in text
    # The managers' addresses it joins, pinned before boot.
    assert "SWARM_MANAGER_ADDRS=10.42.0.10,10.42.16.10,10.42.32.10" in text


def test_pinned_machines_user_data_never_calls_the_agent_even_with_groups():
    run = run_program({"workerGroups": SPOT})
    machine = run.named("swarm-dev-nodes-worker-0")
    text = gzip.decompress(base64.b64decode(machine.inputs["userDataBase64"])).decode()
    assert "swarm-node group-join" not in text and "sha256sum -c" not in text


def test_the_token_reaches_ssm_from_the_formation_s_tokens_and_the_groups_wait_for_it():
    run = run_program({"workerGroups": SPOT})
    (parameter,) = run.of_type(PARAMETER)
    (group,) = run.of_type(GROUP)
    assert parameter.inputs["type"] == "SecureString"
    assert parameter.inputs["name"] == "/swarm/swarm/dev/worker-join-token"
    assert run.depends_on(parameter, run.command("-tokens"))
    assert run.depends_on(group, parameter) and run.depends_on(group, run.of_type(OBJECT)[0])
    reconcile = run.command("-reconcile")
    assert run.depends_on(reconcile, group), "reconcile must count the group's nodes"
    assert reconcile.inputs["create"].endswith("--groups spot")
    # The night's backup runs before the groups go: it depends on them through reconcile.
    assert run.depends_on(run.command("-backup"), reconcile)


def test_every_manager_runs_the_watcher_told_the_groups_and_nothing_secret():
    run = run_program({"workerGroups": SPOT})
    watchers = [c for c in run.commands() if "-groups-watch-" in c.name]
    assert len(watchers) == 3
    create = watchers[0].inputs["create"]
    assert create.startswith("sudo /usr/local/sbin/swarm-node groups-watch --configure ")
    config = json.loads(create.split("--configure ", 1)[1].strip("'"))
    assert config == {"groups": [{"asg": "swarm-dev-spot", "hook": "swarm-drain", "labels": {"tier": "batch"},
                                  "name": "spot"}]}  # fmt: skip
    assert watchers[0].inputs["delete"] == "sudo /usr/local/sbin/swarm-node groups-watch --unconfigure"
    assert run.depends_on(run.command("-reconcile"), watchers[0])


def test_the_groups_role_reads_the_token_and_the_agent_only_and_the_managers_may_let_go():
    run = run_program({"workerGroups": SPOT})
    policies = {p.name: json.loads(p.inputs["policy"]) for p in run.of_type(POLICY)}
    groups = next(v for k, v in policies.items() if "groups" in k)
    # ... and, with swarm:logs cloudwatch (the default), its logs (test_rights.py).
    assert sorted(s["Sid"] for s in groups["Statement"]) == [
        "GroupAgentTarball", "GroupJoinToken", "PublishMetrics", "ShipLogs"
    ]  # fmt: skip
    managers = next(v for k, v in policies.items() if "state-access" in k)
    assert {"GroupsDescribed", "GroupWorkersLetGo"} <= {s["Sid"] for s in managers["Statement"]}
    plain = {p.name: json.loads(p.inputs["policy"]) for p in run_program().of_type(POLICY)}
    managers = next(v for k, v in plain.items() if "state-access" in k)
    assert not {"GroupsDescribed", "GroupWorkersLetGo"} & {s["Sid"] for s in managers["Statement"]}


def test_without_groups_nothing_of_them_is_made_and_reconcile_is_unchanged():
    run = run_program()
    assert not run.of_type(GROUP) and not run.of_type(PARAMETER) and not run.of_type(OBJECT)
    assert "--groups" not in run.command("-reconcile").inputs["create"]
    assert not [c for c in run.commands() if "-groups-watch-" in c.name]
    assert run.outputs["workerGroups"] == []


def test_the_output_names_each_group_and_how_to_pin_to_it():
    run = run_program({"workerGroups": SPOT})
    (out,) = run.outputs["workerGroups"]
    assert out["name"] == "spot" and out["placement"] == "node.labels.swarm.group==spot"
    assert out["autoScalingGroupName"] == "swarm-dev-spot"


def test_defaults_are_all_on_demand_of_the_stack_s_instance_type_and_as_large_as_desired():
    run = run_program({"workerGroups": [{"name": "web", "desired": 2}]})
    (group,) = run.of_type(GROUP)
    assert (group.inputs["minSize"], group.inputs["maxSize"]) == (0, 2)
    distribution = group.inputs["mixedInstancesPolicy"]["instancesDistribution"]
    assert distribution["onDemandPercentageAboveBaseCapacity"] == 100 and not group.inputs["capacityRebalance"]
    overrides = group.inputs["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    assert overrides == [{"instanceType": "t3.medium"}]


@pytest.mark.parametrize(
    ("groups", "says"),
    [
        ([{"name": "Batch", "desired": 1}], "workerGroups[0].name must be 1-21 lowercase"),
        ([{"name": "b", "desired": 3, "max": 2}], "workerGroups[0].desired must lie between min (0) and max (2)"),
        ([{"name": "b"}], "workerGroups[0].desired must be a whole number"),
        ([{"name": "b", "desired": 1, "onDemandPercent": 101}], "workerGroups[0].onDemandPercent must be"),
        ([{"name": "b", "desired": 1, "instanceTypes": ["t4g.medium"]}], "not an instance type of the stack's"),
        ([{"name": "b", "desired": 1, "labels": {"swarm.group": "x"}}], "workerGroups[0].labels has swarm.group"),
        ([{"name": "b", "desired": 1}, {"name": "b", "desired": 1}], "workerGroups[1].name repeats 'b'"),
        ("not json", "workerGroups must be a list of groups"),
    ],
)
def test_bad_groups_are_refused_naming_the_setting_and_the_fix(groups, says):
    with pytest.raises(ConfigError) as error:
        run_program({"workerGroups": groups})
    assert says in str(error.value) and "fix: pulumi config set --path 'swarm:workerGroups" in str(error.value)


def test_an_unknown_field_is_refused_with_the_command_that_removes_it():
    with pytest.raises(ConfigError) as error:
        run_program({"workerGroups": [{"name": "b", "desired": 1, "size": 3}]})
    assert "workerGroups[0] has unknown field(s) size" in str(error.value)
    assert "fix: pulumi config rm --path 'swarm:workerGroups[0].size'" in str(error.value)


def test_groups_are_for_ec2_only():
    with pytest.raises(ConfigError) as error:
        run_program(hosts_config(workerGroups=[{"name": "b", "desired": 1}]))
    assert "swarm:workerGroups applies only when the program creates EC2 machines" in str(error.value)


def test_endpoints_must_be_urls():
    with pytest.raises(ConfigError) as error:
        run_program({"ssmEndpoint": "moto:5000", "autoscalingEndpoint": "nope"})
    assert "swarm:ssmEndpoint must be an http(s) URL" in str(error.value)
    assert "swarm:autoscalingEndpoint must be an http(s) URL" in str(error.value)
