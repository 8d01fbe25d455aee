"""mirror-deploy: the stack files from stdin, the registry config rendered as the bash agent
rendered it, the deploy's files and environment, and the bounded wait for a running task."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from node_fakes import make_tar, write_env
from swarm_agent import cli, mirror, paths, run
from swarm_agent.run import AgentError

STACKS = Path(__file__).resolve().parents[3] / "scripts" / "stacks"
RUNNING = ("docker", "service", "ps", "swarm-mirror_mirror", "--filter", "desired-state=running")
FAILED = ("docker", "service", "ps", "swarm-mirror_mirror", "--no-trunc")
# The bash agent's rendering, run as the oracle: its sed and its ${tpl//...} substitution.
BASH_RENDER = r"""
. "$1"
tpl=$(sed -E -e "/#@(s3|filesystem)\$/{/#@$SWARM_MIRROR_STORAGE\$/!d}" -e 's/[[:space:]]*#@[a-z0-9]+$//' "$2")
for var in SWARM_MIRROR_UPSTREAM SWARM_REGION SWARM_BUCKET SWARM_PREFIX SWARM_S3_ENDPOINT SWARM_MIRROR_PORT; do
  val=${!var:-}
  tpl=${tpl//"\${$var}"/$val}
done
printf '%s\n' "$tpl"
"""


def archive(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    return make_tar(files, links=links)


def stack_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(STACKS.iterdir()) if p.is_file()}


# The mirror's own key, as components/payload.py adds it to the archive.
MIRROR_KEY = b"[default]\naws_access_key_id = AKIAMIRROREXAMPLE\naws_secret_access_key = mirror/secret\n"


def stdin(monkeypatch, payload: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))


@pytest.fixture
def deploys(fakes, monkeypatch):
    """A manager 0 whose deploy and task listing answer; the deploy's docker call recorded
    with its environment (the fake docker cannot see it)."""
    fakes.docker_up()
    fakes.swarm()
    seen = []
    real = run.docker

    def docker(*args, **kwargs):
        if args[:2] == ("stack", "deploy"):
            secret = Path(paths.STACK_DIR) / "aws-credentials"
            mode = stat.S_IMODE(secret.stat().st_mode) if secret.exists() else None
            seen.append({"args": list(args), "env": kwargs.get("env"), "timeout": kwargs["timeout"], "mode": mode})
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "docker", docker)
    stdin(monkeypatch, base64.encodebytes(archive({**stack_files(), "aws-credentials": MIRROR_KEY})))
    return seen


def answer(fakes, states: str = "swarm-dev-manager-0 Running 3 seconds ago\n", deploy_rc: int = 0) -> None:
    fakes.on("docker", "stack", "deploy", stdout="Creating service swarm-mirror_mirror\n", rc=deploy_rc,
             stderr="failed to create service\n" if deploy_rc else "")  # fmt: skip
    fakes.on(*RUNNING, stdout=states)


def deploy(image: str = "registry:2", timeout: int = 180) -> int:
    return cli.main(["mirror-deploy", "--image", image, "--timeout", str(timeout)])


def bash_render(storage: str) -> str:
    env_file = Path(paths.ENV_FILE)
    script = f"SWARM_MIRROR_STORAGE={storage}\n" + BASH_RENDER
    template = str(STACKS / "mirror-config.yml")
    return subprocess.run(["bash", "-c", script, "render", str(env_file), template],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


@pytest.mark.parametrize("storage", ["s3", "filesystem"])
def test_the_config_renders_byte_for_byte_as_bash_rendered_it(fakes, deploys, capsys, storage):
    write_env(SWARM_MIRROR_STORAGE=storage, SWARM_S3_ENDPOINT="http://10.42.0.1:9000")
    answer(fakes)
    assert deploy() == 0
    rendered = (Path(paths.STACK_DIR) / "mirror-config.rendered.yml").read_text()
    assert rendered == bash_render(storage)
    lines = rendered.splitlines()
    assert ('    bucket: "state-bucket"' in lines) == (storage == "s3")
    assert ("    rootdirectory: /var/lib/registry" in lines) == (storage == "filesystem")
    assert '  addr: ":5000"' in lines and not any(line.rstrip().endswith(("#@s3", "#@filesystem")) for line in lines)
    config_hash = hashlib.sha256(rendered.encode()).hexdigest()[:12]
    assert capsys.readouterr().out.splitlines() == [
        f"mirror-deploy: swarm-mirror_mirror running (config {config_hash})",
        "swarm-dev-manager-0 Running 3 seconds ago",
    ]


def test_the_deploy_gets_the_env_files_values_the_hash_port_and_image(fakes, deploys, capsys):
    Path(paths.STACK_DIR).mkdir(parents=True)
    (Path(paths.STACK_DIR) / "old.yml").write_text("gone")
    answer(fakes)
    assert deploy(image="registry:2.8.3") == 0
    [call] = deploys
    stack = paths.STACK_DIR
    assert call["args"][:5] == ["stack", "deploy", "--prune", "-c", f"{stack}/mirror.yml"]
    assert call["timeout"] == run.DOCKER_LONG_TIMEOUT
    rendered = (Path(stack) / "mirror-config.rendered.yml").read_bytes()
    assert call["env"]["SWARM_MIRROR_CONFIG_HASH"] == hashlib.sha256(rendered).hexdigest()[:12]
    assert call["env"]["SWARM_MIRROR_IMAGE"] == "registry:2.8.3"
    assert call["env"]["SWARM_MIRROR_PORT"] == "5000"
    assert call["env"]["SWARM_BUCKET"] == "state-bucket" and call["env"]["SWARM_NODE_NAME"] == "swarm-dev-manager-0"
    # The stack files as they came, and the mirror's key not among them.
    assert sorted(os.listdir(stack)) == sorted([*stack_files(), "mirror-config.rendered.yml"])
    assert "Creating service swarm-mirror_mirror" in capsys.readouterr().err  # docker's output: not on stdout


def test_an_empty_port_is_5000_for_compose(fakes, deploys):
    write_env(SWARM_MIRROR_PORT="")
    answer(fakes)
    assert deploy() == 0
    assert deploys[0]["env"]["SWARM_MIRROR_PORT"] == "5000"


def test_the_mirror_s_own_key_goes_as_a_secret_and_leaves_no_copy(fakes, deploys):
    # Own hosts' backup keys on the manager: the mirror is never handed them.
    Path(paths.CREDS_FILE).write_text("[default]\naws_access_key_id = AKIAHOSTSBACKUPS\n")
    answer(fakes)
    assert deploy() == 0
    [call] = deploys
    assert call["args"][-3:] == ["-c", f"{paths.STACK_DIR}/mirror-credentials.yml", "swarm-mirror"]
    assert call["env"]["SWARM_MIRROR_CREDENTIALS_HASH"] == hashlib.sha256(MIRROR_KEY).hexdigest()[:12]
    assert call["mode"] == 0o600
    assert not (Path(paths.STACK_DIR) / "aws-credentials").exists()
    assert all("AKIA" not in " ".join(c["args"]) + c["stdin"] for c in fakes.calls())


def test_a_mirror_caching_in_s3_without_its_key_is_refused_before_any_deploy(fakes, deploys, monkeypatch, capsys):
    stdin(monkeypatch, base64.encodebytes(archive(stack_files())))
    Path(paths.CREDS_FILE).write_text("[default]\naws_access_key_id = AKIAHOSTSBACKUPS\n")
    answer(fakes)
    assert deploy() == 1
    assert "the mirror caches in S3 but its key did not come with the stack files" in capsys.readouterr().err
    assert deploys == []


def test_a_mirror_caching_in_a_volume_holds_no_key(fakes, deploys):
    write_env(SWARM_MIRROR_STORAGE="filesystem")
    answer(fakes)
    assert deploy() == 0
    [call] = deploys
    assert call["args"] == ["stack", "deploy", "--prune", "-c", f"{paths.STACK_DIR}/mirror.yml", "swarm-mirror"]
    assert "SWARM_MIRROR_CREDENTIALS_HASH" not in call["env"]


def test_filesystem_storage_sends_no_keys(fakes, deploys):
    write_env(SWARM_MIRROR_STORAGE="filesystem")
    Path(paths.CREDS_FILE).write_text("[default]\n")
    answer(fakes)
    assert deploy() == 0
    assert "SWARM_MIRROR_CREDENTIALS_HASH" not in deploys[0]["env"]


def test_a_failed_deploy_fails_and_removes_the_keys_copy(fakes, deploys, capsys):
    Path(paths.CREDS_FILE).write_text("[default]\n")
    answer(fakes, deploy_rc=1)
    assert deploy() == 1
    err = capsys.readouterr().err
    assert "swarm-node: docker stack deploy --prune: exited 1: failed to create service" in err
    assert not (Path(paths.STACK_DIR) / "aws-credentials").exists()
    assert fakes.argvs("docker")[-1][:2] == ["stack", "deploy"]  # no wait for a task


def test_no_running_task_fails_at_its_bound_with_the_tasks_errors(fakes, deploys):
    fakes.on(*FAILED, stdout="m-1: task: non-zero exit (1)\nm-0: \nm-1: task: non-zero exit (1)\nm-0: bad config\n")
    answer(fakes, states="m-0 Preparing 2 minutes ago\n")
    with pytest.raises(AgentError) as raised:
        mirror.mirror_deploy(type("Args", (), {"image": "registry:2", "timeout": 30})())
    assert str(raised.value) == (
        "mirror-deploy: no running mirror task after 30s: m-0 Preparing 2 minutes ago; recent task errors: "
        "m-0: bad config;m-1: task: non-zero exit (1);; see 'docker service ps --no-trunc swarm-mirror_mirror'"
    )
    assert 30 <= fakes.clock.slept <= 32


def test_no_tasks_and_no_errors_say_so(fakes, deploys):
    fakes.on(*FAILED, stdout="")
    answer(fakes, states="")
    with pytest.raises(AgentError, match="after 5s: no tasks; recent task errors: none; see"):
        mirror.mirror_deploy(type("Args", (), {"image": "registry:2", "timeout": 5})())


def test_an_image_that_is_not_a_reference_is_refused_before_anything(fakes, capsys):
    assert deploy(image="registry:2 --detach") == 1
    assert "mirror-deploy: --image wants an image reference, got 'registry:2 --detach'" in capsys.readouterr().err
    assert fakes.calls() == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not base64 at all!", "stdin is not base64"),
        (base64.b64encode(b"plain text"), "stdin is not a tar.gz"),
        (base64.b64encode(archive({"mirror.yml": b"", "mirror-config.yml": b"", "sub/x.yml": b""})), "must be flat"),
        (base64.b64encode(archive({"mirror.yml": b"", "mirror-config.yml": b"", ".env": b""})), "must be flat"),
        (base64.b64encode(archive({"mirror.yml": b""})), "the archive lacks mirror.yml or mirror-config.yml"),
        (base64.b64encode(archive({"mirror.yml": b""}, links=("mirror-config.yml",))), "only hold regular files"),
    ],
)
def test_an_archive_that_is_not_the_stack_files_is_refused(fakes, deploys, monkeypatch, payload, message):
    stdin(monkeypatch, payload)
    Path(paths.STACK_DIR).mkdir(parents=True)
    (Path(paths.STACK_DIR) / "mirror.yml").write_text("as last deployed")
    with pytest.raises(AgentError, match=message):
        mirror.mirror_deploy(type("Args", (), {"image": "registry:2", "timeout": 5})())
    assert (Path(paths.STACK_DIR) / "mirror.yml").read_text() == "as last deployed"
    assert deploys == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"SWARM_MIRROR_UPSTREAM": 'https://hub"x'}, "SWARM_MIRROR_UPSTREAM must not contain quotes or backslashes"),
        ({"SWARM_PREFIX": "a\\b/"}, "SWARM_PREFIX must not contain quotes or backslashes"),
        ({"SWARM_MIRROR_STORAGE": "gcs"}, "SWARM_MIRROR_STORAGE must be s3 or filesystem"),
    ],
)
def test_values_the_config_cannot_hold_are_refused(fakes, deploys, overrides, message):
    write_env(**overrides)
    with pytest.raises(AgentError, match=message):
        mirror.mirror_deploy(type("Args", (), {"image": "registry:2", "timeout": 5})())
    assert deploys == []


def test_a_node_that_is_not_a_manager_is_refused(fakes, capsys):
    fakes.docker_up()
    fakes.swarm(state="active", manager=False)
    assert deploy() == 1
    assert "mirror-deploy: this node is not an active swarm manager (state: active)" in capsys.readouterr().err


def test_the_mirror_s_earlier_keys_and_configs_are_removed_after_the_deploy(fakes, deploys, capsys):
    """A new key every morning: yesterday's secret (restored with the Raft) goes once the
    service names today's, and so do configs of earlier renderings; today's stay."""
    answer(fakes)
    key_hash = hashlib.sha256(MIRROR_KEY).hexdigest()[:12]
    fakes.on("docker", "secret", "ls", stdout=f"swarm-mirror-aws-0123456789ab\nswarm-mirror-aws-{key_hash}\nteam\n")
    fakes.on("docker", "config", "ls", stdout="swarm-mirror-config-aaaaaaaaaaaa\n")
    fakes.on("docker", "config", "rm", stdout="swarm-mirror-config-aaaaaaaaaaaa\n")
    # Swarm refuses while a service's spec names it: a note, and the morning goes on.
    fakes.on("docker", "secret", "rm", rc=1, stderr="Error response from daemon: secret is in use by service x\n")
    assert deploy() == 0
    removals = [a for a in fakes.argvs("docker") if a[1:2] == ["rm"]]
    assert removals == [
        ["config", "rm", "swarm-mirror-config-aaaaaaaaaaaa"],
        ["secret", "rm", "swarm-mirror-aws-0123456789ab"],
    ]
    err = capsys.readouterr().err
    assert "removed 1 earlier mirror config(s)" in err
    assert "could not remove every earlier mirror secret: Error response from daemon: secret is in use" in err


def test_a_listing_that_fails_is_said_and_removes_nothing(fakes, deploys, capsys):
    """An unread list is not an empty one: the morning goes on, and the note says why
    yesterday's keys are still there."""
    answer(fakes)
    fakes.on("docker", "secret", "ls", rc=1, stderr="Error response from daemon: rpc error: context deadline\n")
    fakes.on("docker", "config", "ls", stdout="swarm-mirror-config-aaaaaaaaaaaa\n")
    fakes.on("docker", "config", "rm", stdout="swarm-mirror-config-aaaaaaaaaaaa\n")
    assert deploy() == 0
    removals = [a for a in fakes.argvs("docker") if a[1:2] == ["rm"]]
    assert removals == [["config", "rm", "swarm-mirror-config-aaaaaaaaaaaa"]]
    err = capsys.readouterr().err
    assert "could not list earlier mirror secrets, so none were removed: Error response from daemon: rpc error" in err
    assert "removed 1 earlier mirror config(s)" in err
