"""swarm:ecrRefresh: where the nodes hold AWS rights, manager 0 refreshes the services'
ECR credentials at the end of each formation (and the leader's timer every 4 hours), and the
managers' role holds the pull rights; switched off, neither the step nor a right is there."""

from __future__ import annotations

import json

import pytest
from harness import run_program
from test_formation import user_data_of
from test_hosts import SECRETS, config_problems, hosts_config, run_hosts

ECR_ACTIONS = {"ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
               "ecr:BatchCheckLayerAvailability"}  # fmt: skip


def ecr_actions(run) -> set[str]:
    (policy,) = [p for p in run.of_type("aws:iam/rolePolicy:RolePolicy") if p.name.endswith("-node-state-access")]
    return {a for s in json.loads(policy.inputs["policy"])["Statement"] for a in s["Action"] if a.startswith("ecr:")}


def refresh_step(run):
    return [c for c in run.commands() if c.name.endswith("-registry-auth")]


def test_on_by_default_on_ec2_on_manager_0_once_the_swarm_and_tonight_s_hooks_are_there():
    run = run_program()
    (step,) = refresh_step(run)
    assert step.inputs["create"].endswith("swarm-node registry-auth --now")
    # Last: a failing ECR fails the `up` with the formation and the backup hook done.
    for before in ("-bootstrap", "-reconcile", "-teardown", "-backup"):
        assert run.depends_on(step, run.command(before)), before
    # On manager 0, the bootstrap's node: each new manager 0 (each morning) runs it again.
    assert step.inputs["connection"]["host"] == run.command("-bootstrap").inputs["connection"]["host"]
    assert step.inputs["triggers"] == run.command("-bootstrap").inputs["triggers"]
    assert ecr_actions(run) == ECR_ACTIONS
    assert "SWARM_ECR_REFRESH=true" in user_data_of(run, "manager-0")
    assert "SWARM_ECR_ENDPOINT=''" in user_data_of(run, "manager-0")


def test_switched_off_there_is_no_step_and_no_ecr_right():
    run = run_program({"ecrRefresh": "false"})
    assert refresh_step(run) == [] and ecr_actions(run) == set()
    assert "SWARM_ECR_REFRESH=false" in user_data_of(run, "worker-0")


def test_the_endpoint_reaches_the_nodes_and_a_bad_one_is_refused():
    run = run_program({"ecrEndpoint": "http://10.200.255.254:8170"})
    assert "SWARM_ECR_ENDPOINT=http://10.200.255.254:8170" in user_data_of(run, "manager-0")
    problems = config_problems({"ecrEndpoint": "api.ecr.local", "sshAllowedCidrs": ["203.0.113.0/24"]})
    assert any(p.startswith("swarm:ecrEndpoint must be an http(s) URL") for p in problems), problems


def test_own_hosts_refresh_with_their_s3_keys_and_not_without_keys():
    assert len(refresh_step(run_hosts())) == 1
    keyless = hosts_config(backupTarget="none", s3AccessKeyId=None, s3SecretAccessKey=None)
    assert refresh_step(run_program(keyless, secret_keys=SECRETS)) == []
    problems = config_problems({**keyless, "ecrRefresh": "true"})
    line = next(p for p in problems if p.startswith("swarm:ecrRefresh "))
    assert "backupTarget none" in line and "fix: pulumi config set swarm:ecrRefresh false" in line


@pytest.mark.parametrize("value", ["yes", "1"])
def test_a_value_that_is_not_a_boolean_is_refused(value):
    problems = config_problems({"ecrRefresh": value, "sshAllowedCidrs": ["203.0.113.0/24"]})
    assert any(p.startswith("swarm:ecrRefresh must be true or false") for p in problems), problems
