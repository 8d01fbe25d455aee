"""registry-auth: the services on this account's ECR get fresh credentials, nothing else
changes, and the credentials never reach an argv, a log or a disk."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest
from node_fakes import write_env
from swarm_agent import paths, registry_auth
from swarm_agent.run import AgentError

OURS = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
PASSWORD = "eyJwYXlsb2FkIjoiZnJlc2gifQ"  # what ECR's token carries after "AWS:"
TOKEN = base64.b64encode(f"AWS:{PASSWORD}".encode()).decode()


def service(name: str, image: str, update: str = "") -> dict:
    spec = {"ID": f"id-{name}", "Spec": {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": image}}}}
    if update:
        spec["UpdateStatus"] = {"State": update}
    return spec


@pytest.fixture
def manager(fakes, tmp_path, monkeypatch):
    """A leader whose swarm runs `fakes.services` (set by each test), and ECR's answer."""
    monkeypatch.setattr(registry_auth, "SECRET_DIR", str(tmp_path))
    fakes.docker_up()
    fakes.swarm()
    fakes.on("docker", "node", "inspect", "self", stdout="true\n")
    answer = {"authorizationData": [{"authorizationToken": TOKEN, "proxyEndpoint": f"https://{OURS}",
                                     "expiresAt": 1_800_000_000}]}  # fmt: skip
    fakes.on("aws", "ecr", "get-authorization-token", stdout=json.dumps(answer))
    fakes.on("docker", "service", "update", stdout="")

    def services(*specs: dict) -> None:
        fakes.on("docker", "service", "ls", "-q", stdout="".join(s["ID"] + "\n" for s in specs))
        fakes.on("docker", "service", "inspect", stdout=json.dumps(list(specs)))

    fakes.services = services
    return fakes


def refresh(now: bool = False) -> None:
    registry_auth.registry_auth(argparse.Namespace(now=now, verb="registry-auth"))


def test_the_services_on_this_account_s_ecr_get_the_fresh_credentials_and_no_other(manager, tmp_path, capsys):
    manager.services(
        service("api", f"{OURS}/team/api:1.4@sha256:" + "a" * 64),
        service("web", "nginx:1.27"),
        service("mirror", "registry:2"),
        service("partner", "210987654321.dkr.ecr.eu-west-1.amazonaws.com/shared/base:3"),
        service("elsewhere", "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/api:1"),
    )
    refresh()
    updates = [c for c in manager.calls("docker") if c["args"][:2] == ["service", "update"]]
    assert [c["args"] for c in updates] == [["service", "update", "--detach", "--with-registry-auth", "--quiet", "api"]]
    # The CLI read the credentials from a root-only config in the secret directory...
    config = updates[0]["docker_config"]
    assert config["json"] == {"auths": {OURS: {"auth": TOKEN}}} and config["mode"] == "0o600"
    assert config["dir"].startswith(str(tmp_path))
    # ...which is gone afterwards, and the password was in no argv and no output.
    assert list(tmp_path.glob("swarm-registry-auth-*")) == []
    said = capsys.readouterr()
    everything = json.dumps([c["args"] for c in manager.calls()]) + said.out + said.err
    assert PASSWORD not in everything and TOKEN not in everything
    assert "1 of 1 services on " + OURS in said.out and "210987654321" in said.out
    assert manager.argvs("aws") == [["ecr", "get-authorization-token", "--region", "eu-west-1", "--output", "json"]]
    # What `scripts/swarm status` shows of it: when, and what it said; no credential.
    record = json.loads(Path(paths.REGISTRY_AUTH_RECORD).read_text())
    assert record["ok"] and record["said"].startswith("registry-auth: 1 of 1 services on") and record["at"]
    assert TOKEN not in json.dumps(record) and PASSWORD not in json.dumps(record)


def test_no_service_on_ecr_means_no_aws_call(manager, capsys):
    manager.services(service("web", "nginx:1.27"), service("local", "registry.example.com:5000/web:2"))
    refresh()
    assert manager.calls("aws") == [] and "no service pulls from ECR in eu-west-1" in capsys.readouterr().out


def test_a_paused_rollout_is_left_alone_and_said(manager, capsys):
    """A new spec would start the failed rollout again; the next run tries again."""
    manager.services(service("api", f"{OURS}/team/api:2", update="paused"), service("jobs", f"{OURS}/team/jobs:1"))
    refresh()
    assert [a[-1] for a in manager.argvs("docker") if a[:2] == ["service", "update"]] == ["jobs"]
    assert "left alone, their update is paused: api" in capsys.readouterr().out


def test_only_the_leader_acts_on_the_timer_and_pulumi_s_step_acts_anywhere(manager, capsys):
    manager.rules[:] = [r for r in manager.rules if r["args"][:2] != ["node", "inspect"]]
    manager.on("docker", "node", "inspect", "self", stdout="false\n")
    manager.services(service("api", f"{OURS}/team/api:2"))
    refresh()
    assert manager.calls("aws") == [] and "not the leader" in capsys.readouterr().out
    refresh(now=True)
    assert [a[-1] for a in manager.argvs("docker") if a[:2] == ["service", "update"]] == ["api"]


def test_without_the_right_the_message_names_it_and_the_setting(manager):
    manager.rules[:] = [r for r in manager.rules if r["tool"] != "aws"]
    manager.on("aws", "ecr", rc=254, stderr="An error occurred (AccessDeniedException) when calling ...\n")
    manager.services(service("api", f"{OURS}/team/api:2"))
    with pytest.raises(AgentError, match=r"ecr:GetAuthorizationToken.*swarm:ecrRefresh false"):
        refresh(now=True)
    record = json.loads(Path(paths.REGISTRY_AUTH_RECORD).read_text())
    assert not record["ok"] and "AccessDeniedException" in record["said"]


def test_a_failed_update_fails_the_verb_after_the_others_are_done(manager):
    manager.rules.insert(0, {"tool": "docker", "args": ["service", "update", "--detach", "--with-registry-auth",
                              "--quiet", "api"], "stdout": "", "stderr": "update out of sequence\n", "rc": 1,
                              "times": None, "writes": []})  # fmt: skip
    manager._save()
    manager.services(service("api", f"{OURS}/team/api:2"), service("jobs", f"{OURS}/team/jobs:1"))
    with pytest.raises(AgentError, match="could not update api"):
        refresh()
    assert [a[-1] for a in manager.argvs("docker") if a[:2] == ["service", "update"]] == ["api", "jobs"]


def test_the_bed_s_endpoint_is_used_and_a_switched_off_stack_asks_nothing(manager, capsys):
    write_env(SWARM_ECR_ENDPOINT="http://10.200.255.254:8170")
    manager.services(service("api", f"{OURS}/team/api:2"))
    refresh()
    assert manager.argvs("aws")[0][-4:] == ["--endpoint-url", "http://10.200.255.254:8170", "--output", "json"]
    write_env(SWARM_ECR_REFRESH="false")
    refresh()
    assert len(manager.argvs("aws")) == 1 and "off (swarm:ecrRefresh is false)" in capsys.readouterr().out


def test_a_worker_does_nothing(manager, capsys):
    write_env(SWARM_ROLE="worker")
    refresh()
    assert manager.calls() == [] and "a worker" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("image", "registry"),
    [("nginx", ""), ("library/nginx:1", ""), ("localhost/x", "localhost"),
     ("r.example.com:5000/a/b", "r.example.com:5000"), (f"{OURS}/a:1", OURS),
     ("10.0.0.1:5000/x@sha256:" + "0" * 64, "10.0.0.1:5000")],
)  # fmt: skip
def test_registry_of(image, registry):
    assert registry_auth.registry_of(image) == registry
