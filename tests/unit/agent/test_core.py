"""The agent's core: bounded calls that raise, the env file, the JSON contract."""

from __future__ import annotations

import json

import pytest
from node_fakes import write_env
from swarm_agent import contract, dockerd, env, run


def test_a_failing_call_raises_with_the_program_and_its_message(fakes):
    fakes.on("docker", "node", "ls", rc=1, stderr="Error: This node is not a swarm manager.\n")
    with pytest.raises(run.CallFailed, match="docker node ls: exited 1: Error: This node is not a swarm manager"):
        run.docker("node", "ls")


def test_a_call_that_does_not_answer_in_time_fails(fakes, monkeypatch):
    fakes.on("docker", "info")
    monkeypatch.setattr(run, "SEARCH_PATH", f"{fakes.bin}:/usr/bin:/bin")
    with pytest.raises(run.CallFailed, match="timed out"):
        run.call("sleep", "5", timeout=0.2)


def test_a_call_asked_for_its_outcome_reports_no_answer_instead_of_raising(fakes, monkeypatch):
    """A wedged dockerd (SIGSTOPped) must read as down to probe, not fail it."""
    result = run.call("sleep", "5", timeout=0.2, check=False)
    assert result.returncode == run.TIMED_OUT and "no answer within 0.2s" in result.stderr


def test_stdin_never_appears_in_a_failure(fakes):
    fakes.on("docker", "swarm", "join", rc=1, stderr="denied\n")
    with pytest.raises(run.CallFailed) as raised:
        run.docker("swarm", "join", input="SWMTKN-1-secret")
    assert "SWMTKN" not in str(raised.value)


def test_a_missing_program_is_named(fakes, monkeypatch):
    monkeypatch.setattr(run, "SEARCH_PATH", str(fakes.bin))
    with pytest.raises(run.AgentError, match="tar is not installed"):
        run.call("tar", "--version")


def test_the_env_file_reads_as_bash_wrote_it(fakes):
    write_env(SWARM_REGISTRY_MIRRORS="http://10.0.0.10:5000 http://10.0.0.11:5000", SWARM_S3_ENDPOINT="")
    node = env.load()
    assert node.get("SWARM_REGISTRY_MIRRORS") == "http://10.0.0.10:5000 http://10.0.0.11:5000"
    assert node.store == "s3://state-bucket/swarm/dev/"
    assert node.get("SWARM_S3_ENDPOINT") == ""


def test_an_env_file_without_the_bucket_is_refused(fakes):
    write_env(SWARM_BUCKET="")
    with pytest.raises(run.AgentError, match="SWARM_BUCKET is missing"):
        env.load()


def test_swarm_state_comes_from_dockers_json(fakes):
    fakes.swarm(state="active", manager=False)
    assert dockerd.local_state() == "active"
    assert not dockerd.is_active_manager()


def test_a_wait_gives_up_at_its_bound(fakes):
    fakes.on("docker", "info", "--format", "{{.ServerVersion}}", rc=1, stderr="Cannot connect\n")
    with pytest.raises(run.AgentError, match="did not answer 'docker info' within 5s"):
        dockerd.wait_up(5)
    assert 5 <= fakes.clock.slept <= 7


def test_contract_lines_round_trip_and_refuse_bad_tokens():
    text = contract.line("swarm-tokens", worker="SWMTKN-1-aaa-bbb", manager="SWMTKN-1-aaa-ccc", unlock=None)
    assert contract.read("swarm-tokens", "a note\n" + text + "\n")["worker"] == "SWMTKN-1-aaa-bbb"
    bad = json.dumps({"kind": "swarm-tokens", "worker": "nope", "manager": "SWMTKN-1-a"})
    with pytest.raises(contract.ContractError) as raised:
        contract.read("swarm-tokens", bad)
    assert "nope" not in str(raised.value)
    with pytest.raises(contract.ContractError):
        contract.line("swarm-probe", addr="10.0.0.1:2377", state="sideways", manager=False, quorum=False)
