"""registry-auth: fresh ECR credentials in every service that pulls from this account's ECR.

A service made with `--with-registry-auth` carries its registry credentials in its spec,
in Raft, and every node's dockerd pulls with those: never with a credential helper, and
workers hold no AWS rights at all. ECR's credentials last 12 hours, so the morning's
restored services, and any task scheduled half a day after its service was made, pull
with credentials that expired (moby#31063, for-aws#5). This verb asks ECR for new ones
with the managers' rights (components/rights.py: pull only, this region's repositories
of this account) and puts them in each such service's spec.

Who runs it: Pulumi, on manager 0 at the end of every formation (`--now`), and a timer on
every manager every 4 hours (units/swarm-registry-auth.timer), where only the leader
acts, so one refresh per period whatever the number of managers.

What it costs: no task restarts. swarmkit's IsTaskDirty ignores PullOptions for a task
that has already pulled its image (READY to RUNNING; moby/swarmkit#971), so a running
service only gets a new spec version. Tasks that have not pulled yet (the morning's,
failing on the expired credentials) are replaced by tasks with the fresh ones: that is
the point. A service whose update is paused (a failed rollout) is left alone: a new spec
would start that rollout again. Without a service on ECR, no AWS call is made.

The credentials never reach an argv or a log: they go into a docker config.json in a
root-only directory under /run (memory, not disk), given to the CLI as DOCKER_CONFIG and
removed when the verb ends.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import tempfile
import urllib.parse

from swarm_agent import dockerd, env, lock, paths, run
from swarm_agent.run import AgentError, CallFailed

# <account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn], ECR's registry host names.
ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
PAUSED = ("paused", "rollback_paused")  # UpdateStatus.State of a rollout that stopped on failure
SECRET_DIR = "/run"  # noqa: S105 - a directory: tmpfs: the credentials never touch a disk


def registry_of(image: str) -> str:
    """The registry host of an image reference ('' for Docker Hub's short names)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return ""


def registry_auth(args) -> None:
    node = env.load()
    if node.get("SWARM_ECR_REFRESH", "true") != "true":
        print("registry-auth: off (swarm:ecrRefresh is false)")
        return
    try:
        with lock.held("registry-auth", 0 if not args.now else 120):
            _refresh(node, args.now)
    except lock.Busy as busy:
        if args.now:
            raise
        print(f"registry-auth: not now: {busy}; the next timer refreshes")


def _refresh(node: env.NodeEnv, now: bool) -> None:
    if node.get("SWARM_ROLE") == "worker":
        print("registry-auth: a worker; the managers refresh")  # the timer is on every node
        return
    if not now and dockerd.has_systemd() and "docker.service" not in dockerd.active_units():
        # Calling docker would start it through its socket, under a backup that stopped it.
        print("registry-auth: docker.service is not running; nothing refreshed")
        return
    info = dockerd.require_manager("registry-auth")
    if not now and not _is_leader(info):
        print("registry-auth: not the leader; the leader refreshes")
        return
    services = [s for s in _services() if _ecr_region(s["image"]) == node.region]
    if not services:
        print(f"registry-auth: no service pulls from ECR in {node.region}; nothing to refresh")
        return
    try:
        host, token = _ecr_token(node)
    except AgentError as error:
        _record(False, str(error))
        raise
    ours = [s for s in services if registry_of(s["image"]) == host]
    for other in sorted({registry_of(s["image"]) for s in services} - {host}):
        print(f"registry-auth: {other} is another account's registry: its services keep their own credentials")
    paused = [s["name"] for s in ours if s["update"] in PAUSED]
    if paused:
        print(f"registry-auth: left alone, their update is paused: {', '.join(paused)}")
    ready = [s for s in ours if s["update"] not in PAUSED]
    failed = _update_all(ready, host, token)
    said = f"registry-auth: {len(ready) - len(failed)} of {len(ours)} services on {host} have fresh credentials"
    print(said)
    _record(not failed and not paused, said + (f"; paused, left alone: {', '.join(paused)}" if paused else ""))
    if failed:
        raise AgentError(f"registry-auth: could not update {', '.join(failed)}; 'docker service inspect' says why")


def _record(ok: bool, said: str) -> None:
    """This node's last refresh, for `scripts/swarm status` (no credential in it)."""
    at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    tmp = paths.REGISTRY_AUTH_RECORD + ".new"
    with open(tmp, "w") as handle:
        json.dump({"at": at, "ok": ok, "said": said}, handle)
    os.replace(tmp, paths.REGISTRY_AUTH_RECORD)


def _is_leader(info: dict) -> bool:
    found = run.docker("node", "inspect", "self", "--format", "{{.ManagerStatus.Leader}}", check=False)
    return found.returncode == 0 and found.stdout.strip() == "true" and bool(info.get("NodeID"))


def _services() -> list[dict]:
    """name, image and update state of every service, from one `docker service inspect`."""
    ids = run.docker("service", "ls", "-q").stdout.split()
    if not ids:
        return []
    specs = json.loads(run.docker("service", "inspect", *ids).stdout or "[]")
    return [
        {
            "name": s["Spec"]["Name"],
            "image": s["Spec"]["TaskTemplate"].get("ContainerSpec", {}).get("Image", ""),
            "update": (s.get("UpdateStatus") or {}).get("State", ""),
        }
        for s in specs
    ]


def _ecr_region(image: str) -> str:
    match = ECR_HOST.match(registry_of(image))
    return match.group(2) if match else ""


def _ecr_token(node: env.NodeEnv) -> tuple[str, str]:
    """(registry host, docker's `auth` value) for this account's registry in the region."""
    endpoint = ["--endpoint-url", node.get("SWARM_ECR_ENDPOINT")] if node.get("SWARM_ECR_ENDPOINT") else []
    try:
        answer = run.call(
            "aws", "ecr", "get-authorization-token", "--region", node.region, *endpoint, "--output", "json",
            timeout=run.AWS_TIMEOUT, env=node.aws_env(),
        )  # fmt: skip
    except CallFailed as error:
        raise AgentError(
            f"registry-auth: ECR gave no credentials ({error}). The managers need ecr:GetAuthorizationToken "
            "and the pull rights of the README's Rights table; swarm:ecrRefresh false turns this off"
        ) from None
    data = (json.loads(answer.stdout).get("authorizationData") or [{}])[0]
    host = urllib.parse.urlparse(data.get("proxyEndpoint", "")).netloc
    token = data.get("authorizationToken", "")
    if not host or not base64.b64decode(token or "=").startswith(b"AWS:"):
        raise AgentError("registry-auth: ECR's answer has no proxyEndpoint or authorizationToken")
    return host, token


def _update_all(services: list[dict], host: str, token: str) -> list[str]:
    """Update each service with the credentials; the names of those that failed."""
    config = tempfile.mkdtemp(prefix="swarm-registry-auth-", dir=SECRET_DIR if os.path.isdir(SECRET_DIR) else None)
    failed = []
    try:
        fd = os.open(os.path.join(config, "config.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"auths": {host: {"auth": token}}}, handle)
        for service in services:
            # --detach: the running tasks stay (see the module's docstring); nothing to wait for.
            done = run.docker(
                "service", "update", "--detach", "--with-registry-auth", "--quiet", service["name"],
                env={"DOCKER_CONFIG": config}, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                run.note(f"registry-auth: {service['name']}: {done.stderr.strip()[-300:]}")
                failed.append(service["name"])
    finally:
        shutil.rmtree(config, ignore_errors=True)
    return failed
