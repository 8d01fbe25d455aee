"""probe, tokens, join (through Docker's API socket) and leave: what they print, what they
refuse, and that a join token never reaches an argv or a message."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys

import pytest
from node_fakes import write_env
from swarm_agent import contract, dockerd, membership, paths, run
from swarm_agent import env as node_env
from swarm_agent.run import AgentError

MANAGER_TOKEN = "SWMTKN-1-abcdef0123456789-manager0123"
WORKER_TOKEN = "SWMTKN-1-abcdef0123456789-worker01234"
UNLOCK_KEY = "SWMKEY-1-abcdefABCDEF0123+/xyz"


def ns(**kwargs) -> argparse.Namespace:
    return argparse.Namespace(**kwargs)


def docker_argvs_hold(fakes, text: str) -> bool:
    return any(text in " ".join(argv) for argv in fakes.argvs("docker"))


@pytest.fixture
def keys(monkeypatch):
    """The unlock key tokens reads (keys.read_unlock_key), scripted."""
    from swarm_agent import keys as module

    unlock = {"key": ""}
    monkeypatch.setattr(module, "read_unlock_key", lambda: unlock["key"])
    return unlock


@pytest.fixture
def posts(monkeypatch):
    """Docker's API socket: answers scripted per call, bodies recorded."""
    record = {"answers": [], "bodies": [], "paths": []}

    def api_post(path, body, timeout):
        record["paths"].append(path)
        record["bodies"].append(body)
        answers = record["answers"]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(dockerd, "api_post", api_post)
    return record


@pytest.fixture
def long_pauses(fakes, monkeypatch):
    """Each pause moves the fake clock ten times as far: a bound is reached with fewer
    fake docker calls (each one is a process)."""
    monkeypatch.setattr(run, "pause", lambda seconds: fakes.clock.sleep(seconds * 10))


def stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


# -- probe -----------------------------------------------------------------------------
def test_probe_of_a_manager_with_quorum_prints_one_line_with_the_manager_token(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="active", manager=True)
    fakes.on("docker", "node", "ls", "-q", stdout="node0\n")
    fakes.on("docker", "swarm", "join-token", "-q", "manager", stdout=MANAGER_TOKEN + "\n")
    membership.probe(ns())
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    record = contract.read("swarm-probe", out)
    assert record == {
        "kind": "swarm-probe",
        "addr": "10.42.0.10:2377",
        "state": "active",
        "manager": True,
        "quorum": True,
        "token": MANAGER_TOKEN,
    }


def test_probe_when_dockerd_does_not_answer_says_down_and_asks_nothing_more(fakes, capsys):
    fakes.on("docker", "info", rc=1, stderr="Cannot connect to the Docker daemon\n")
    membership.probe(ns())
    record = contract.read("swarm-probe", capsys.readouterr().out)
    assert (record["state"], record["manager"], record["quorum"]) == ("down", False, False)
    assert "token" not in record and record["raft_on_disk"] is False  # a fresh machine
    assert not docker_argvs_hold(fakes, "join-token")


def test_probe_when_dockerd_does_not_answer_says_whether_a_swarm_is_on_its_disk(fakes, capsys):
    fakes.on("docker", "info", rc=1, stderr="Cannot connect to the Docker daemon\n")
    os.makedirs(os.path.join(paths.SWARM_DIR, "raft"))
    membership.probe(ns())
    assert contract.read("swarm-probe", capsys.readouterr().out)["raft_on_disk"] is True


def test_probe_of_a_node_that_answers_says_nothing_of_its_disk(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False)
    membership.probe(ns())
    assert "raft_on_disk" not in contract.read("swarm-probe", capsys.readouterr().out)


def test_probe_of_a_manager_without_quorum_carries_no_token(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="active", manager=True)
    fakes.on("docker", "node", "ls", "-q", rc=1, stderr="The swarm does not have a leader.\n")
    membership.probe(ns())
    record = contract.read("swarm-probe", capsys.readouterr().out)
    assert (record["manager"], record["quorum"]) == (True, False)
    assert "token" not in record
    assert not docker_argvs_hold(fakes, "join-token")


def test_probe_of_a_worker_or_an_inactive_node_is_no_manager(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False)
    write_env(SWARM_ADVERTISE_ADDR="")
    membership.probe(ns())
    record = contract.read("swarm-probe", capsys.readouterr().out)
    assert record == {
        "kind": "swarm-probe",
        "addr": "unknown:2377",
        "state": "inactive",
        "manager": False,
        "quorum": False,
    }


def test_probe_refuses_a_join_token_that_is_not_one(fakes, capsys):
    fakes.docker_up()
    fakes.swarm()
    fakes.on("docker", "node", "ls", "-q", stdout="node0\n")
    fakes.on("docker", "swarm", "join-token", "-q", "manager", stdout="Error: something\n")
    with pytest.raises(AgentError, match="probe: docker returned something that is not a join token"):
        membership.probe(ns())
    assert capsys.readouterr().out == ""


# -- tokens ----------------------------------------------------------------------------
def tokens_answer(fakes, worker=WORKER_TOKEN, manager=MANAGER_TOKEN):
    fakes.docker_up()
    fakes.swarm()
    fakes.on("docker", "swarm", "join-token", "-q", "worker", stdout=worker + "\n")
    fakes.on("docker", "swarm", "join-token", "-q", "manager", stdout=manager + "\n")


def test_tokens_print_both_tokens_and_no_unlock_key_without_autolock(fakes, keys, capsys):
    tokens_answer(fakes)
    membership.tokens(ns())
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert contract.read("swarm-tokens", out) == {
        "kind": "swarm-tokens",
        "worker": WORKER_TOKEN,
        "manager": MANAGER_TOKEN,
    }


def test_tokens_carry_the_unlock_key_with_autolock(fakes, keys, capsys):
    tokens_answer(fakes)
    keys["key"] = UNLOCK_KEY
    membership.tokens(ns())
    assert contract.read("swarm-tokens", capsys.readouterr().out)["unlock"] == UNLOCK_KEY


def test_tokens_refuse_what_is_not_a_join_token(fakes, keys, capsys):
    tokens_answer(fakes, worker="This node is not a swarm manager.")
    with pytest.raises(AgentError, match="tokens: docker returned something that is not a join token"):
        membership.tokens(ns())
    assert capsys.readouterr().out == ""


def test_tokens_only_on_an_active_manager(fakes, keys):
    fakes.docker_up()
    fakes.swarm(state="active", manager=False)
    with pytest.raises(AgentError, match=r"tokens: this node is not an active swarm manager \(state: active\)"):
        membership.tokens(ns())
    assert not docker_argvs_hold(fakes, "join-token")


# -- join ------------------------------------------------------------------------------
def test_join_as_a_worker_posts_the_token_in_the_body_only(fakes, posts, monkeypatch, capsys):
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False, times=1)
    fakes.swarm(state="active", manager=False, node_id="w1node")
    posts["answers"] = [(200, "")]
    stdin(monkeypatch, WORKER_TOKEN + "\r\n")
    membership.join(ns(role="worker", leader="10.42.0.10:2377"))
    assert capsys.readouterr().out == "join: joined 10.42.0.10:2377 as worker (node w1node)\n"
    assert posts["paths"] == ["/swarm/join"]
    assert posts["bodies"][0] == {
        "ListenAddr": "0.0.0.0:2377",
        "AdvertiseAddr": "10.42.0.10",
        "RemoteAddrs": ["10.42.0.10:2377"],
        "JoinToken": WORKER_TOKEN,
    }
    assert not docker_argvs_hold(fakes, "SWMTKN")
    assert all("SWMTKN" not in call["stdin"] for call in fakes.calls())


def test_a_manager_listens_on_its_pinned_address(fakes, posts):
    fakes.swarm(state="active")
    posts["answers"] = [(200, "")]
    node = node_env.load()
    membership.join_swarm(node, "manager", "10.42.0.11:2377", MANAGER_TOKEN)
    assert posts["bodies"][0]["ListenAddr"] == "10.42.0.10:2377"


def test_a_manager_without_its_pinned_address_is_refused(fakes, posts):
    write_env(SWARM_ADVERTISE_ADDR="")
    with pytest.raises(AgentError, match="SWARM_ADVERTISE_ADDR is empty"):
        membership.join_swarm(node_env.load(), "manager", "10.42.0.11:2377", MANAGER_TOKEN)
    assert posts["bodies"] == []


ROOT_CA = b"-----BEGIN CERTIFICATE-----\nMIIBazCCARCgAwIBAgIUOurswarmroot\n-----END CERTIFICATE-----\n"


def token_for(ca_pem: bytes, tail: str = "w0rkertail") -> str:
    """A join token for the swarm whose root CA is `ca_pem`, as swarmkit's GenerateJoinToken
    writes it: the CA's sha256 in base 36, zero-padded to 50 digits, then the secret."""
    number, digits = int(hashlib.sha256(ca_pem).hexdigest(), 16), ""
    while number:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
    return f"SWMTKN-1-{digits.rjust(50, '0')}-{tail}"


def a_worker_of(fakes, ca_pem: bytes) -> None:
    certificates = os.path.join(paths.SWARM_DIR, "certificates")
    os.makedirs(certificates, exist_ok=True)
    with open(os.path.join(certificates, "swarm-root-ca.crt"), "wb") as handle:
        handle.write(ca_pem)
    fakes.docker_up()


def test_a_worker_already_in_this_swarm_stays(fakes, posts, monkeypatch, capsys):
    a_worker_of(fakes, ROOT_CA)
    fakes.swarm(state="active", manager=False)
    stdin(monkeypatch, token_for(ROOT_CA) + "\n")
    membership.join(ns(role="worker", leader="10.42.0.10:2377"))
    assert capsys.readouterr().out == "join: already a worker\n"
    assert posts["bodies"] == [] and not docker_argvs_hold(fakes, "leave")


def test_a_worker_in_another_swarm_leaves_it_and_joins_this_one(fakes, posts, monkeypatch, capsys):
    """A one-manager stack whose manager 0 was replaced and started a new swarm: its workers
    answered "already a worker" of the gone one (issue 19, item 11)."""
    a_worker_of(fakes, b"-----BEGIN CERTIFICATE-----\nyesterdays-other-ca\n-----END CERTIFICATE-----\n")
    fakes.swarm(state="active", manager=False, times=1)
    fakes.on("docker", "swarm", "leave", "--force")
    fakes.swarm(state="active", manager=False, node_id="w1new")
    posts["answers"] = [(200, "")]
    token = token_for(ROOT_CA)
    stdin(monkeypatch, token + "\n")
    membership.join(ns(role="worker", leader="10.42.0.10:2377"))
    captured = capsys.readouterr()
    assert "join: this worker is in another swarm than the token's (another root CA): leaving it" in captured.err
    assert captured.out == "join: joined 10.42.0.10:2377 as worker (node w1new)\n"
    assert ["swarm", "leave", "--force"] in fakes.argvs("docker") and posts["bodies"][0]["JoinToken"] == token


def test_a_manager_in_another_swarm_is_never_left_silently(fakes, posts, monkeypatch):
    a_worker_of(fakes, b"another CA")
    fakes.swarm(state="active", manager=True)
    stdin(monkeypatch, token_for(ROOT_CA) + "\n")
    with pytest.raises(AgentError, match="join: this node is a manager of another swarm"):
        membership.join(ns(role="manager", leader="10.42.0.10:2377"))
    assert posts["bodies"] == [] and not docker_argvs_hold(fakes, "leave")


def test_the_token_s_ca_digest_is_read_as_swarmkit_writes_it():
    assert membership.token_ca_digest(token_for(ROOT_CA)) == hashlib.sha256(ROOT_CA).hexdigest()
    fips = token_for(ROOT_CA).replace("SWMTKN-1-", "SWMTKN-2-1-")
    assert membership.token_ca_digest(fips) == hashlib.sha256(ROOT_CA).hexdigest()


def test_join_tries_ten_times_redacts_the_token_and_gives_up_at_its_bound(fakes, posts, capsys, monkeypatch):
    monkeypatch.setattr(dockerd, "local_state", lambda: "inactive")  # never joined
    posts["answers"] = [(503, f'{{"message":"rpc error: token {MANAGER_TOKEN} refused"}}')]
    with pytest.raises(AgentError, match=r"join: could not join 10.42.0.11:2377 as worker \(last HTTP 503\)") as raised:
        membership.join_swarm(node_env.load(), "worker", "10.42.0.11:2377", MANAGER_TOKEN)
    err = capsys.readouterr().err
    assert len(posts["bodies"]) == 10
    assert "join: try 1/10 got HTTP 503:" in err and "join: try 10/10 got HTTP 503:" in err
    assert "SWMTKN-<redacted>" in err
    assert MANAGER_TOKEN not in err and MANAGER_TOKEN not in str(raised.value)
    # Ten tries 3 s apart, then the 60 s wait for an active swarm.
    assert 90 <= fakes.clock.slept <= 92


@pytest.mark.parametrize(
    "answer",
    [
        '{"message":"rpc error: code = InvalidArgument desc = the token is malformed"}',
        '{"message":"rpc error: code = Unknown desc = invalid join token"}',
    ],
)
def test_join_stops_trying_on_an_invalid_token(fakes, posts, capsys, monkeypatch, answer):
    monkeypatch.setattr(dockerd, "local_state", lambda: "inactive")  # never joined
    posts["answers"] = [(400, answer)]
    with pytest.raises(AgentError, match=r"last HTTP 400"):
        membership.join_swarm(node_env.load(), "worker", "10.42.0.11:2377", MANAGER_TOKEN)
    assert len(posts["bodies"]) == 1
    assert "join: try 1/10 got HTTP 400" in capsys.readouterr().err


def test_a_refused_answer_from_a_join_that_did_succeed_is_not_a_failure(fakes, posts, capsys):
    fakes.swarm(state="active", manager=False)
    posts["answers"] = [(503, '{"message":"This node is already part of a swarm."}')]
    membership.join_swarm(node_env.load(), "worker", "10.42.0.11:2377", MANAGER_TOKEN)
    assert len(posts["bodies"]) == 1
    assert capsys.readouterr().err == ""


def test_no_answer_at_all_reads_as_http_000(fakes, posts, capsys, monkeypatch):
    monkeypatch.setattr(dockerd, "local_state", lambda: "inactive")  # never joined
    posts["answers"] = [(0, "")]
    with pytest.raises(AgentError, match=r"last HTTP 000"):
        membership.join_swarm(node_env.load(), "worker", "10.42.0.11:2377", MANAGER_TOKEN)
    assert "got HTTP 000: no response" in capsys.readouterr().err


def test_join_refuses_a_leader_that_is_not_host_port(fakes, posts, monkeypatch):
    stdin(monkeypatch, MANAGER_TOKEN + "\n")
    with pytest.raises(AgentError, match=re.escape("join: leader must be HOST:PORT, got '10.0.0.1;reboot'")):
        membership.join(ns(role="worker", leader="10.0.0.1;reboot"))
    assert fakes.calls() == [] and posts["bodies"] == []


def test_join_refuses_a_stdin_without_a_token(fakes, posts, monkeypatch):
    stdin(monkeypatch, "not a token\n")
    with pytest.raises(AgentError, match=r"join: stdin did not carry a swarm join token \(SWMTKN-...\)"):
        membership.join(ns(role="worker", leader="10.42.0.10:2377"))
    assert fakes.calls() == [] and posts["bodies"] == []


def test_join_on_a_node_already_in_that_role_does_nothing(fakes, posts, monkeypatch, capsys):
    fakes.docker_up()
    fakes.swarm(state="active", manager=False)
    stdin(monkeypatch, WORKER_TOKEN + "\n")
    membership.join(ns(role="worker", leader="10.42.0.10:2377"))
    assert capsys.readouterr().out == "join: already a worker\n"
    assert posts["bodies"] == []


def test_join_refuses_a_node_that_is_already_in_the_other_role(fakes, posts, monkeypatch):
    fakes.docker_up()
    fakes.swarm(state="active", manager=False)
    stdin(monkeypatch, MANAGER_TOKEN + "\n")
    with pytest.raises(
        AgentError,
        match=re.escape(
            "join: this node is already a worker; change it on a manager with 'docker node promote|demote "
        ),
    ):
        membership.join(ns(role="manager", leader="10.42.0.10:2377"))
    assert posts["bodies"] == []


def test_join_refuses_a_locked_swarm(fakes, posts, monkeypatch):
    fakes.docker_up()
    fakes.swarm(state="locked", manager=False)
    stdin(monkeypatch, WORKER_TOKEN + "\n")
    with pytest.raises(AgentError, match="join: the swarm on this node is locked; run 'docker swarm leave --force'"):
        membership.join(ns(role="worker", leader="10.42.0.10:2377"))
    assert posts["bodies"] == []


def test_join_leaves_a_pending_swarm_first(fakes, posts, monkeypatch, capsys):
    fakes.docker_up()
    fakes.swarm(state="pending", manager=False, times=1)
    fakes.swarm(state="active", manager=False)
    fakes.on("docker", "swarm", "leave", "--force", rc=1, stderr="not part of a swarm\n")
    posts["answers"] = [(200, "")]
    stdin(monkeypatch, WORKER_TOKEN + "\n")
    membership.join(ns(role="worker", leader="10.42.0.10:2377"))
    assert ["swarm", "leave", "--force"] in fakes.argvs("docker")
    assert capsys.readouterr().out.startswith("join: joined 10.42.0.10:2377 as worker")


# -- leave -----------------------------------------------------------------------------
def node_files() -> list:
    made = []
    for path in (paths.CREDS_FILE, paths.SIGNING_KEY, paths.READY):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write("x\n")
        made.append(path)
    for directory in (paths.RESTORE_DIR, paths.STACK_DIR):
        os.makedirs(os.path.join(directory, "inner"), exist_ok=True)
        made.append(directory)
    return made


def test_leave_leaves_removes_stray_task_containers_and_the_swarms_files(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="active", times=1)
    fakes.swarm(state="inactive", manager=False)
    fakes.on("docker", "swarm", "leave", "--force")
    fakes.on("docker", "ps", "-aq", stdout="0123456789ab\nba9876543210\n", times=1)
    fakes.on("docker", "ps", "-aq", stdout="")
    fakes.on("docker", "rm", "-f")
    made = node_files()
    membership.leave(ns())
    assert capsys.readouterr().out == "leave: left the swarm (was active); credentials and staged backups removed\n"
    assert ["rm", "-f", "0123456789ab", "ba9876543210"] in fakes.argvs("docker")
    assert [p for p in made if os.path.lexists(p)] == []
    assert os.path.exists(paths.ENV_FILE)


def test_leave_of_an_inactive_node_does_not_call_swarm_leave(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False)
    fakes.on("docker", "ps", "-aq", stdout="")
    membership.leave(ns())
    assert ["swarm", "leave", "--force"] not in fakes.argvs("docker")
    assert "(was inactive)" in capsys.readouterr().out


def test_leave_gives_up_when_task_containers_stay(fakes, long_pauses):
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False)
    fakes.on("docker", "ps", "-aq", stdout="0123456789ab\n")
    fakes.on("docker", "rm", "-f", rc=1, stderr="device busy\n")
    with pytest.raises(AgentError, match="leave: swarm task containers remain after 60s: 0123456789ab"):
        membership.leave(ns())
    assert 60 <= fakes.clock.slept <= 70
    assert len([argv for argv in fakes.argvs("docker") if argv[:2] == ["rm", "-f"]]) == 6


def test_leave_refuses_a_container_id_that_is_not_one(fakes):
    fakes.docker_up()
    fakes.swarm(state="inactive", manager=False)
    fakes.on("docker", "ps", "-aq", stdout="--all\n")
    with pytest.raises(AgentError, match="not a container id"):
        membership.leave(ns())
    assert not any(argv[:1] == ["rm"] for argv in fakes.argvs("docker"))


def test_leave_fails_when_the_node_stays_in_the_swarm(fakes, long_pauses):
    fakes.docker_up()
    fakes.swarm(state="active")
    fakes.on("docker", "swarm", "leave", "--force")
    with pytest.raises(AgentError, match="leave: still 'active' after 60s"):
        membership.leave(ns())


def test_the_probe_line_is_json_the_program_reads(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="error", manager=False)
    membership.probe(ns())
    out = capsys.readouterr().out
    assert json.loads(out)["state"] == "error"
    assert contract.read_all("swarm-probe", out)[0]["manager"] is False


def test_the_cli_runs_probe_and_join_with_their_arguments(fakes, capsys, monkeypatch):
    from swarm_agent import cli

    fakes.on("docker", "info", rc=1, stderr="Cannot connect to the Docker daemon\n")
    assert cli.main(["probe"]) == 0
    assert contract.read("swarm-probe", capsys.readouterr().out)["state"] == "down"
    stdin(monkeypatch, "\n")
    assert cli.main(["join", "worker", "10.42.0.10:2377"]) == 1
    assert capsys.readouterr().err == "swarm-node: join: stdin did not carry a swarm join token (SWMTKN-...)\n"
