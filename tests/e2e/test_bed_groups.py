"""The bed's Auto Scaling with real machines: a group's instance boots with its launch
template's user-data, learns its own identity from IMDS, reads the join token from SSM,
and completes its own lifecycle action over the bridge when the group scales in."""

from __future__ import annotations

import base64
import gzip
import ipaddress

import pytest
from testbed import providers
from testbed.bed import BED_REGION
from testbed.records import State
from testbed.resources import Resources

pytestmark = pytest.mark.e2e

GROUP = "swarm-bedtest-probe"
PARAMETER = "/swarm/swarm/bedtest/worker-join-token"
# What a group's node does at boot, in miniature: who am I (IMDSv2, hop limit 2), the token.
USER_DATA = """#!/bin/bash
set -euo pipefail
token=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
md() { curl -sf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"; }
md instance-id >/run/bed-instance-id
md instance-life-cycle >/run/bed-life-cycle
aws ssm get-parameter --region REGION --endpoint-url SSM --name PARAMETER --with-decryption \\
  --query Parameter.Value --output text >/run/bed-join-token
"""


def state(type_: str, name: str, inputs: dict) -> State:
    return State(f"urn:{name}", type_, name, "", inputs, {}, set(), [], "", False, False)


@pytest.fixture
def resources(bed, log_dir):
    subnet_net = ipaddress.ip_network(f"{bed.network[230 * 256]}/24")
    subnet = state("aws:ec2/subnet:Subnet", "probe-a", {"cidrBlock": str(subnet_net), "availabilityZone": "eu-west-1a"})
    subnet.id = "subnet-0bedprobe"
    lines: list[str] = []
    made = Resources(
        bed, lines.append, lambda p: subnet if p(subnet) else None,
        image=None, wait_for_boot=False, log_dir=log_dir, project_dir=log_dir,
    )  # fmt: skip
    made.lines = lines
    yield made
    if GROUP in bed.autoscaling.groups:
        bed.autoscaling.delete_group(GROUP)


def test_a_group_instance_boots_its_template_and_drains_itself_through_the_api(bed, resources):
    token = "SWMTKN-1-bedprobe-not-a-real-token"
    parameter = state(providers.PARAMETER, "token", {"name": PARAMETER, "type": "SecureString", "value": token})
    resources.create(parameter)
    script = USER_DATA.replace("REGION", BED_REGION).replace("SSM", bed.s3_endpoint).replace("PARAMETER", PARAMETER)
    template = state(
        providers.LAUNCH_TEMPLATE,
        "probe-template",
        {
            "namePrefix": "probe-",
            "userData": base64.b64encode(gzip.compress(script.encode())).decode(),
            "iamInstanceProfile": {"name": "swarm-bed-worker"},
            "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2, "httpEndpoint": "enabled"},
        },
    )
    resources.create(template)
    group = state(
        providers.GROUP,
        "probe",
        {
            "name": GROUP,
            "minSize": 0,
            "maxSize": 2,
            "desiredCapacity": 1,
            "vpcZoneIdentifiers": ["subnet-0bedprobe"],
            "mixedInstancesPolicy": {
                "instancesDistribution": {"onDemandBaseCapacity": 0, "onDemandPercentageAboveBaseCapacity": 0},
                "launchTemplate": {
                    "launchTemplateSpecification": {"launchTemplateId": template.id, "version": "$Latest"},
                    "overrides": [{"instanceType": "t3.small"}],
                },
            },
            "initialLifecycleHooks": [
                {
                    "name": "swarm-drain",
                    "lifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                    "heartbeatTimeout": 300,
                    "defaultResult": "CONTINUE",
                }
            ],
            "tags": [{"key": "swarm:group", "value": "probe", "propagateAtLaunch": True}],
        },
    )
    resources.create(group)
    (instance,) = bed.autoscaling.in_service(GROUP)
    host = bed.group_host(instance.instance_id)
    assert host.name == f"probe-{instance.instance_id}" and instance.ip.startswith(str(bed.network[230 * 256])[:-1])
    host.wait_cloud_init(120)
    read = lambda path: host.run(["cat", path]).stdout.decode().strip()  # noqa: E731
    assert read("/run/bed-instance-id") == instance.instance_id
    assert read("/run/bed-life-cycle") == "spot"
    assert read("/run/bed-join-token") == token
    assert not any(token in line for line in resources.lines)

    bed.autoscaling.set_desired(GROUP, 0)
    bed.autoscaling.wait_for(lambda: bed.autoscaling.instance(instance.instance_id).state == "Terminating:Wait", 10)
    target = host.run(
        "t=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60');"
        ' curl -sf -H "X-aws-ec2-metadata-token: $t"'
        " http://169.254.169.254/latest/meta-data/autoscaling/target-lifecycle-state"
    )
    assert target.stdout.decode() == "Terminated"
    # The machine may be wiped before the CLI exits (it is, at once): as on AWS, only the call counts.
    host.run(
        [
            "aws", "autoscaling", "complete-lifecycle-action", "--region", BED_REGION,
            "--endpoint-url", bed.autoscaling_endpoint, "--auto-scaling-group-name", GROUP,
            "--lifecycle-hook-name", "swarm-drain", "--instance-id", instance.instance_id,
            "--lifecycle-action-result", "CONTINUE",
        ],
        check=False,
    )  # fmt: skip
    assert bed.autoscaling.requests["CompleteLifecycleAction"] == 1
    assert bed.autoscaling.instance(instance.instance_id).result == "CONTINUE"
    bed.autoscaling.wait_for(lambda: bed.autoscaling.instance(instance.instance_id).state == "Terminated", 60)
    assert host.key not in bed.hosts
    resources.delete(group)
    assert GROUP not in bed.autoscaling.groups
    resources.delete(parameter)
