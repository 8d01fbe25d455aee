"""The outputs contract app repos read: every output present, typed, documented, secret where it must be."""

from __future__ import annotations

import re

import pytest
from harness import ROOT, run_program

# DESIGN.md's contract; only ever added to.
CONTRACT = {
    "managerPrivateIps",
    "managerPublicIps",
    "workerPrivateIps",
    "leaderAddress",
    "dockerHost",
    "sshUser",
    "sshPrivateKey",
    "workerJoinToken",
    "managerJoinToken",
    "registryMirrors",
    "stateBucket",
    "vpcId",
    "subnetIds",
    "clusterSecurityGroupId",
    "nodes",
    "outputsVersion",
}
SECRET = {"sshPrivateKey", "workerJoinToken", "managerJoinToken", "unlockKey"}


@pytest.fixture(scope="module")
def run():
    return run_program()


def readme_outputs() -> dict[str, str]:
    """Rows of the README's outputs table: name -> secret column."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Outputs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`(\w+)`\s*\|\s*([^|]+?)\s*\|\s*(yes|no)\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


def test_every_contract_output_is_exported(run):
    assert CONTRACT <= set(run.outputs)


def test_secret_outputs_are_secret_and_nothing_else_is(run):
    assert run.secret_outputs == SECRET


def test_output_shapes(run):
    o = run.outputs
    assert o["outputsVersion"] == 1
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:2377", o["leaderAddress"])
    assert o["leaderAddress"].split(":")[0] == o["managerPrivateIps"][0]
    assert o["dockerHost"] == f"ssh://ec2-user@{o['managerPublicIps'][0]}"
    assert len(o["managerPrivateIps"]) == len(o["managerPublicIps"]) == 3 and len(o["workerPrivateIps"]) == 2
    assert o["registryMirrors"] == [f"http://{ip}:5000" for ip in o["managerPrivateIps"]]
    assert [n["role"] for n in o["nodes"]] == ["manager"] * 3 + ["worker"] * 2
    assert {"name", "role", "instanceId", "privateIp", "publicIp", "availabilityZone"} <= set(o["nodes"][0])
    assert o["sshUser"] == "ec2-user"
    assert o["bootstrapResult"] == "bootstrap: initialised a new swarm"


def test_private_connect_points_docker_host_at_the_private_address():
    run = run_program({"connectVia": "private"})
    assert run.outputs["dockerHost"] == f"ssh://ec2-user@{run.outputs['managerPrivateIps'][0]}"
    assert all(i.inputs["associatePublicIpAddress"] is False for i in run.of_type("aws:ec2/instance:Instance"))


def test_readme_documents_every_output_with_its_secrecy(run):
    documented = readme_outputs()
    assert set(documented) == set(run.outputs), "README outputs table and program differ"
    for name, secret in documented.items():
        assert (secret == "yes") == (name in run.secret_outputs), name
