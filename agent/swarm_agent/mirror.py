"""The registry mirror stack (Docker Hub pull-through cache), deployed from manager 0.

Pulumi runs `mirror-deploy` when a stack file or the mirror's key changes and on a new
manager 0; the files (scripts/stacks/) come on stdin as base64 of a flat tar.gz and are
kept in /etc/swarm/stacks as last deployed. The archive may also hold `aws-credentials`,
the mirror's own S3 key: it becomes a swarm secret and is never kept on disk. Swarm
configs are not interpolated, so the registry's config is rendered here (this node's
storage driver, the env file's values); its hash names the (immutable) swarm config, so
a changed config rolls the service. The verb waits, bounded, until a mirror task runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import tempfile

from swarm_agent import dockerd, env, paths, run
from swarm_agent.env import NodeEnv
from swarm_agent.run import AgentError, CallFailed

IMAGE_RE = re.compile(r"[A-Za-z0-9._/:@-]+")
SERVICE = "swarm-mirror_mirror"
CREDENTIALS = "aws-credentials"  # the mirror's key in the stack archive (components/payload.py)
# The names mirror.yml and mirror-credentials.yml give them, before their content's hash.
CONFIG_PREFIX, SECRET_PREFIX = "swarm-mirror-config-", "swarm-mirror-aws-"
# The ${VAR}s mirror-config.yml may hold, in the order bash substituted them.
RENDERED = ("SWARM_MIRROR_UPSTREAM", "SWARM_REGION", "SWARM_BUCKET", "SWARM_PREFIX", "SWARM_S3_ENDPOINT",
            "SWARM_MIRROR_PORT")  # fmt: skip
DRIVER_LINE = re.compile(r"#@(s3|filesystem)$")
TAG = re.compile(r"[ \t\n\r\f\v]*#@[a-z0-9]+$")  # sed's [[:space:]]*#@[a-z0-9]+$


def mirror_deploy(args) -> None:
    if not IMAGE_RE.fullmatch(args.image):
        raise AgentError(f"mirror-deploy: --image wants an image reference, got '{args.image}'")
    node = env.load()
    dockerd.require_manager("mirror-deploy")
    credentials = install_stack_files(sys.stdin.buffer.read())
    config_hash = render_config(node)
    current = deploy(node, args.image, config_hash, credentials)
    states = wait_running(args.timeout)
    prune_superseded(current)
    print(f"mirror-deploy: {SERVICE} running (config {config_hash})")
    print(states)


def install_stack_files(payload: bytes) -> bytes | None:
    """stdin's archive, checked, in place of /etc/swarm/stacks; the mirror's key, if it
    came with them (kept out of that directory)."""
    try:
        data = base64.b64decode(b"".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AgentError("mirror-deploy: stdin is not base64") from None
    files = stack_files(data)
    credentials = files.pop(CREDENTIALS, None)
    if "mirror.yml" not in files or "mirror-config.yml" not in files:
        raise AgentError("mirror-deploy: the archive lacks mirror.yml or mirror-config.yml")
    work = tempfile.mkdtemp(dir=paths.WORK_DIR, prefix="swarm-stacks.")
    try:
        staged = os.path.join(work, "stacks")
        os.mkdir(staged, 0o755)
        for name, content in files.items():
            with open(os.path.join(staged, name), "wb") as handle:
                handle.write(content)
        shutil.rmtree(paths.STACK_DIR, ignore_errors=True)
        shutil.move(staged, paths.STACK_DIR)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return credentials


def stack_files(data: bytes) -> dict[str, bytes]:
    """name -> content of a flat tar.gz of regular files."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            if any("/" in m.name or m.name.startswith(".") for m in members):
                raise AgentError("mirror-deploy: the stack archive must be flat")
            if not all(m.isfile() for m in members):
                raise AgentError("mirror-deploy: the stack archive may only hold regular files")
            return {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError):
        raise AgentError("mirror-deploy: stdin is not a tar.gz") from None


def render_config(node: NodeEnv) -> str:
    """mirror-config.rendered.yml beside the template; the first 12 hex of its sha256."""
    # Lines tagged #@s3 or #@filesystem belong to one storage driver: keep this node's.
    storage = node.mirror_storage
    if storage not in ("s3", "filesystem"):
        raise AgentError("mirror-deploy: SWARM_MIRROR_STORAGE must be s3 or filesystem")
    with open(os.path.join(paths.STACK_DIR, "mirror-config.yml")) as handle:
        template = handle.read()
    text = substitute(keep_driver(template, storage), node)
    rendered = os.path.join(paths.STACK_DIR, "mirror-config.rendered.yml")
    with open(rendered, "w") as handle:
        handle.write(text)
    return file_hash(rendered)


def keep_driver(template: str, storage: str) -> str:
    """As bash's sed: drop the other driver's lines, strip every line's #@tag, and (as
    `$(...)` then `printf '%s\\n'`) end with exactly one newline."""
    kept = []
    for line in template.split("\n"):
        found = DRIVER_LINE.search(line)
        if found and found.group(1) != storage:
            continue
        kept.append(TAG.sub("", line, count=1))
    return "\n".join(kept).rstrip("\n") + "\n"


def substitute(text: str, node: NodeEnv) -> str:
    for name in RENDERED:
        value = node.values.get(name, "")
        if '"' in value or "\\" in value:
            raise AgentError(f"mirror-deploy: {name} must not contain quotes or backslashes")
        text = text.replace("${" + name + "}", value)
    return text


def deploy(node: NodeEnv, image: str, config_hash: str, credentials: bytes | None) -> set[str]:
    """docker stack deploy with what the compose files interpolate: the env file's values
    (as bash's `set -a; . /etc/swarm/env`) and the hashes, port and image; with the
    mirror's key as a secret when it caches in S3. The names of the config and secret
    the service now uses."""
    values = {name: value for name, value in node.values.items() if name.startswith("SWARM_")}
    values.update(
        SWARM_MIRROR_CONFIG_HASH=config_hash,
        SWARM_MIRROR_PORT=node.get("SWARM_MIRROR_PORT", "5000"),
        SWARM_MIRROR_IMAGE=image,
    )
    files = ["-c", os.path.join(paths.STACK_DIR, "mirror.yml")]
    if node.mirror_storage == "s3" and credentials is None:
        raise AgentError("mirror-deploy: the mirror caches in S3 but its key did not come with the stack files")
    secret = os.path.join(paths.STACK_DIR, CREDENTIALS)
    try:
        if node.mirror_storage == "s3":
            # The mirror's own key reaches the registry as a swarm secret, never as an
            # environment value, and never the managers' role or the hosts' backup keys.
            with open(_root_only(secret), "wb") as handle:
                handle.write(credentials)
            values["SWARM_MIRROR_CREDENTIALS_HASH"] = file_hash(secret)
            files += ["-c", os.path.join(paths.STACK_DIR, "mirror-credentials.yml")]
        argv = ["stack", "deploy", "--prune", *files, "swarm-mirror"]
        result = run.docker(*argv, timeout=run.DOCKER_LONG_TIMEOUT, env=values, check=False)
    finally:
        if os.path.exists(secret):
            os.remove(secret)
    for output in (result.stdout, result.stderr):  # docker's progress goes to stderr: stdout is ours
        if output.strip():
            run.note(output.rstrip("\n"))
    if result.returncode != 0:
        raise CallFailed("docker", argv, result.returncode, result.stderr or result.stdout)
    current = {CONFIG_PREFIX + config_hash}
    if "SWARM_MIRROR_CREDENTIALS_HASH" in values:
        current.add(SECRET_PREFIX + values["SWARM_MIRROR_CREDENTIALS_HASH"])
    return current


def prune_superseded(current: set[str]) -> None:
    """Remove the mirror's earlier configs and keys (a new key comes every morning), which
    the restored Raft would otherwise keep for ever. Swarm refuses to remove one a
    service's spec still names, and a task already running keeps its mounted copy."""
    for kind, prefix in (("config", CONFIG_PREFIX), ("secret", SECRET_PREFIX)):
        listed = run.docker(kind, "ls", "--filter", f"name={prefix}", "--format", "{{.Name}}", check=False)
        if listed.returncode != 0:
            # Housekeeping must not fail a mirror that runs, but an unread list is not "none".
            run.note(
                f"mirror-deploy: could not list earlier mirror {kind}s, so none were removed: "
                f"{listed.stderr.strip()[:300] or f'exited {listed.returncode}'}"
            )
            continue
        old = sorted(n for n in listed.stdout.split() if n.startswith(prefix) and n not in current)
        if not old:
            continue
        removed = run.docker(kind, "rm", *old, check=False)
        if removed.returncode != 0:
            run.note(f"mirror-deploy: could not remove every earlier mirror {kind}: {removed.stderr.strip()[:300]}")
        else:
            run.note(f"mirror-deploy: removed {len(old)} earlier mirror {kind}(s)")


def _root_only(path: str) -> str:
    """An empty file at `path`, mode 0600, before the keys are copied into it."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)
    return path


def wait_running(timeout: int) -> str:
    """Until a mirror task runs; its `NODE STATE` lines."""
    seen = {"states": ""}

    def running() -> str:
        running_tasks = ("--filter", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}")
        result = run.docker("service", "ps", SERVICE, *running_tasks, check=False)
        seen["states"] = result.stdout.rstrip("\n")
        return seen["states"] if " Running" in seen["states"] else ""

    def why() -> str:
        return (
            f"mirror-deploy: no running mirror task after {timeout}s: {seen['states'] or 'no tasks'}; "
            f"recent task errors: {task_errors() or 'none'}; see 'docker service ps --no-trunc {SERVICE}'"
        )

    return str(run.wait_until(running, timeout, why))


def task_errors() -> str:
    """A crash-looping registry shows only as "Preparing" above; its errors are on the
    failed tasks: up to three distinct ones, each followed by ';'."""
    failed_tasks = ("--no-trunc", "--filter", "desired-state=shutdown", "--format", "{{.Node}}: {{.Error}}")
    result = run.docker("service", "ps", SERVICE, *failed_tasks, check=False)
    lines = sorted({line for line in result.stdout.splitlines() if not line.endswith(": ")})
    return "".join(line + ";" for line in lines[:3])


def file_hash(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:12]
