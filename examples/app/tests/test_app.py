"""The example app under Pulumi's mocks, with the swarm stack played by a mocked StackReference."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pulumi
import pytest
from app import REQUIRED_OUTPUTS, WebService, compose
from mocked import run_program, unwrap

APP_MAIN = Path(__file__).resolve().parents[1] / "__main__.py"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nYXBwLXRlc3Qta2V5LW5vdC1yZWFs\n-----END OPENSSH PRIVATE KEY-----\n"
SWARM_OUTPUTS = {
    "outputsVersion": 1,
    "dockerHost": "ssh://ec2-user@198.51.100.10",
    "sshUser": "ec2-user",
    "sshPrivateKey": KEY,
    "workerJoinToken": "SWMTKN-1-mock",
    "sshKnownHosts": "198.51.100.10 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockHostKey\n",
    "nodes": [
        {"name": "swarm-dev-manager-0", "role": "manager", "privateIp": "10.42.0.10", "publicIp": "198.51.100.10"},
        {"name": "swarm-dev-worker-0", "role": "worker", "privateIp": "10.42.0.87", "publicIp": ""},
    ],
}
SECRET_NAMES = ["sshPrivateKey", "workerJoinToken", "managerJoinToken"]


class AppMocks(pulumi.runtime.Mocks):
    def __init__(self, outputs: dict, secret_names: list[str]):
        self.outputs, self.secret_names = outputs, secret_names
        self.references: list[str] = []

    def new_resource(self, args):
        if args.typ == "pulumi:pulumi:StackReference":
            self.references.append(args.inputs["name"])
            return args.name, {"outputs": self.outputs, "secretOutputNames": self.secret_names}
        state, _ = unwrap(dict(args.inputs))
        if args.typ == "docker:index/secret:Secret":
            state["name"] = state.get("name") or f"{args.name}-4f2a1c"
        return f"{args.name}-id", state

    def call(self, args):
        raise NotImplementedError(args.token)


def run_app(tmp_path, monkeypatch, outputs=None, secret_names=None, config=None, secret_keys=("app:greeting",)):
    monkeypatch.setenv("HOME", str(tmp_path))
    mocks = AppMocks(
        SWARM_OUTPUTS if outputs is None else outputs, SECRET_NAMES if secret_names is None else secret_names
    )
    full = {"app:swarmStack": "organization/swarm/dev", "app:greeting": "hello from the swarm", **(config or {})}
    run = run_program(APP_MAIN, full, secret_keys, mocks, project="swarm-app")
    resources = {r.type.split(":")[-1] if r.type.startswith("docker:") else r.type: r for r in run.resources}
    exported = {key: (value, key in run.secret_outputs) for key, value in run.outputs.items()}
    return resources, exported, mocks


def test_reads_the_swarm_stack_named_in_config(tmp_path, monkeypatch):
    _, _, mocks = run_app(tmp_path, monkeypatch)
    assert mocks.references == ["organization/swarm/dev"]


def test_provider_reaches_the_leader_over_ssh_with_the_stack_key(tmp_path, monkeypatch):
    resources, _, _ = run_app(tmp_path, monkeypatch)
    provider = resources["pulumi:providers:docker"]
    assert provider.inputs["host"] == "ssh://ec2-user@198.51.100.10"
    opts = provider.inputs["sshOpts"]
    opts = json.loads(opts) if isinstance(opts, str) else opts  # provider config travels as JSON
    key_file = Path(opts[opts.index("-i") + 1])
    assert key_file.read_text() == KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.parent == tmp_path / ".ssh"
    # Only the swarm's own host keys are accepted.
    assert "StrictHostKeyChecking=yes" in opts
    known = Path(next(o for o in opts if o.startswith("UserKnownHostsFile=")).split("=", 1)[1])
    assert known.read_text() == SWARM_OUTPUTS["sshKnownHosts"] and known.parent == tmp_path / ".ssh"
    # The key came from a secret output, so everything derived from it stays secret.
    assert "sshOpts" in provider.secret_inputs
    for kind in ("Service", "Network", "Secret"):
        assert resources[kind].provider.startswith(provider.urn), kind


def test_service_has_replicas_rolling_update_rollback_health_overlay_secret_host_port(tmp_path, monkeypatch):
    resources, _, _ = run_app(tmp_path, monkeypatch, config={"app:replicas": "3"})
    service = resources["Service"].inputs
    assert service["mode"]["replicated"]["replicas"] == 3
    assert service["updateConfig"]["failureAction"] == "rollback"
    assert service["updateConfig"]["order"] == "start-first"
    assert service["rollbackConfig"]["parallelism"] == 1
    spec = service["taskSpec"]["containerSpec"]
    assert spec["healthcheck"]["tests"] == WebService().healthcheck
    assert spec["secrets"][0]["fileName"] == "/run/secrets/greeting"
    assert service["taskSpec"]["networksAdvanceds"][0]["name"] == resources["Network"].name + "-id"
    assert service["taskSpec"]["placement"]["maxReplicas"] == 1
    assert service["endpointSpec"]["ports"] == [
        {"targetPort": 8080, "publishedPort": 8080, "publishMode": "host", "protocol": "tcp"}
    ]
    assert resources["Network"].inputs["driver"] == "overlay"


def test_secrets_stay_secret_and_urls_are_plain(tmp_path, monkeypatch):
    resources, exported, _ = run_app(tmp_path, monkeypatch)
    assert "data" in resources["Secret"].secret_inputs
    assert exported["urls"] == (["http://198.51.100.10:8080/", "http://10.42.0.87:8080/"], False)
    plain = repr({k: v for k, (v, secret) in exported.items() if not secret})
    plain += repr([r.inputs for r in resources.values() if not r.secret_inputs])
    assert "PRIVATE KEY" not in plain and "SWMTKN" not in plain and "hello from the swarm" not in plain


def test_stack_reference_secret_marker_reaches_the_program(tmp_path, monkeypatch):
    # Guard for the test itself: with the key *not* declared secret by the swarm stack, the
    # provider input would be plain, so the assertion above can fail.
    resources, _, _ = run_app(tmp_path, monkeypatch, secret_names=[])
    assert "sshOpts" not in resources["pulumi:providers:docker"].secret_inputs


@pytest.mark.parametrize("name", REQUIRED_OUTPUTS)
def test_a_missing_required_output_is_named(tmp_path, monkeypatch, name):
    outputs = {k: v for k, v in SWARM_OUTPUTS.items() if k != name}
    with pytest.raises(Exception, match=f"the swarm stack organization/swarm/dev has no output '{name}'"):
        run_app(tmp_path, monkeypatch, outputs=outputs)


def test_without_a_generated_key_it_asks_for_yours(tmp_path, monkeypatch):
    outputs = {k: v for k, v in SWARM_OUTPUTS.items() if k != "sshPrivateKey"}
    with pytest.raises(Exception, match=r"no output 'sshPrivateKey'.*app:sshPrivateKey"):
        run_app(tmp_path, monkeypatch, outputs=outputs)
    resources, _, _ = run_app(
        tmp_path,
        monkeypatch,
        outputs=outputs,
        config={"app:sshPrivateKey": KEY},
        secret_keys=("app:greeting", "app:sshPrivateKey"),
    )
    assert "sshOpts" in resources["pulumi:providers:docker"].secret_inputs


def test_a_newer_contract_is_refused(tmp_path, monkeypatch):
    with pytest.raises(Exception, match="exports outputsVersion 2; this app reads 1"):
        run_app(tmp_path, monkeypatch, outputs={**SWARM_OUTPUTS, "outputsVersion": 2})


def test_bad_replicas_names_the_setting(tmp_path, monkeypatch):
    with pytest.raises(Exception, match="app:replicas must be 1 to 100"):
        run_app(tmp_path, monkeypatch, config={"app:replicas": "0"})


def test_compose_file_is_the_same_service(tmp_path, monkeypatch):
    resources, _, _ = run_app(tmp_path, monkeypatch)
    service = resources["Service"].inputs
    rendered = compose(WebService(), "/dev/null")["services"]["web"]
    spec = service["taskSpec"]["containerSpec"]
    assert rendered["image"] == spec["image"] and rendered["command"] == spec["commands"]
    assert rendered["deploy"]["replicas"] == service["mode"]["replicated"]["replicas"]
    assert rendered["healthcheck"]["test"] == spec["healthcheck"]["tests"]
    assert rendered["ports"][0]["published"] == service["endpointSpec"]["ports"][0]["publishedPort"]
    assert rendered["deploy"]["update_config"]["failure_action"] == service["updateConfig"]["failureAction"]
