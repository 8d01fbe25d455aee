"""group-join: a worker group's machine joins the swarm by itself, at boot.

An Auto Scaling group starts machines with no Pulumi run to join them, so user-data runs
this verb once the agent is installed (and it is safe to run again at a reboot). It asks
the instance metadata service (IMDSv2) which instance it is and whether it is spot, puts
that in dockerd's engine labels (`swarm.group`, `swarm.instance`, `swarm.capacity`),
reads the worker join token from its SSM parameter with the instance's role, and joins
through the first manager that takes it. The engine labels are only claims: the leader
labels the node for placement once AWS lists the instance in that group (groups.py).

The join token is a secret: it is read from the aws CLI's stdout into memory and goes to
dockerd in the body of an API request (membership.join_swarm); it is never printed,
never in an argv, never in a message.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from swarm_agent import contract, dockerd, env, groups, lock, membership, nodefs, paths, run
from swarm_agent.run import AgentError

IMDS_URL = "http://169.254.169.254"
IMDS_TIMEOUT = 2  # s per request: the service is on the instance's own link
IMDS_TRIES = 10
TOKEN_BOUND = 120  # s: at boot the role's credentials, or the parameter, may lag
TOKEN_POLL = 5
SSM_CALL_TIMEOUT = 30
JOIN_BOUND = 600  # s over all managers; each join_swarm is bounded itself
IPV4_RE = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")
PARAMETER_RE = re.compile(r"^/[A-Za-z0-9_./-]{1,1010}$")


@lock.exclusive(600)
def group_join(args) -> None:
    node = env.load_group()
    group, param = node.get("SWARM_GROUP"), node.get("SWARM_JOIN_TOKEN_PARAMETER")
    managers = [addr.strip() for addr in node.get("SWARM_MANAGER_ADDRS").split(",") if addr.strip()]
    if not groups.NAME_RE.match(group):
        raise AgentError(f"group-join: SWARM_GROUP '{group[:40]}' in {paths.ENV_FILE} is not a group name")
    if not managers or not all(IPV4_RE.match(addr) for addr in managers):
        raise AgentError(f"group-join: SWARM_MANAGER_ADDRS in {paths.ENV_FILE} must be IPv4 addresses, comma separated")
    if not PARAMETER_RE.match(param):
        raise AgentError(f"group-join: SWARM_JOIN_TOKEN_PARAMETER in {paths.ENV_FILE} is not an SSM parameter name")
    instance, capacity = instance_identity()
    dockerd.wait_up(120)
    claims = {groups.GROUP: group, groups.INSTANCE: instance, groups.CAPACITY: capacity}
    if set_engine_labels(claims):
        dockerd.service("restart")
        dockerd.wait_up(120)
        run.note(f"group-join: dockerd restarted with its engine labels ({group}, {instance}, {capacity})")
    token = read_join_token(node, param)
    who = f"{instance} of group {group} ({capacity})"
    if _already_in(token):
        print(f"group-join: {who} is already in this swarm")
        return
    through = join_any(node, managers, token)
    node_id = dockerd.swarm_info().get("NodeID", "")
    print(f"group-join: {who} joined the swarm through {through} as a worker (node {node_id})")


# -- who am I ---------------------------------------------------------------------------
def instance_identity() -> tuple[str, str]:
    """(instance id, spot | on-demand) from IMDSv2, a few tries: at boot it may lag."""
    last = ""
    for attempt in range(IMDS_TRIES):
        if attempt:
            run.pause(1)
        try:
            token = _imds("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})
            ask = {"X-aws-ec2-metadata-token": token}
            instance = _imds("GET", "/latest/meta-data/instance-id", ask)
            life = _imds("GET", "/latest/meta-data/instance-life-cycle", ask)
        except (OSError, urllib.error.URLError) as error:  # HTTPError is one too
            last = str(error)[:200]
            continue
        if not groups.INSTANCE_RE.match(instance):
            raise AgentError(f"group-join: the metadata service gave {instance[:40]!r} as the instance id")
        if life not in groups.CAPACITIES:
            # 'scheduled' and 'capacity-block' are reserved, not reclaimable: on-demand for placement.
            run.note(f"group-join: instance-life-cycle is {life[:40]!r}; labelled on-demand")
            life = "on-demand"
        return instance, life
    raise AgentError(
        f"group-join: the instance metadata service ({IMDS_URL}) did not answer after {IMDS_TRIES} tries "
        f"({last}); check the launch template's metadata options (IMDSv2, hop limit)"
    )


def _imds(method: str, path: str, headers: dict) -> str:
    # The URL is IMDS_URL, a constant http:// address: no file: or other scheme can get in.
    request = urllib.request.Request(IMDS_URL + path, method=method, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=IMDS_TIMEOUT) as answer:  # noqa: S310
        return answer.read(4096).decode(errors="replace").strip()


# -- what dockerd claims ------------------------------------------------------------------
def set_engine_labels(claims: dict[str, str]) -> bool:
    """Put the claims in daemon.json's "labels", keeping every other setting and label;
    True when the file changed (dockerd reads it only when it starts)."""
    try:
        with open(paths.DAEMON_JSON) as handle:
            config = json.load(handle)
    except FileNotFoundError:
        config = {}
    except ValueError as error:
        raise AgentError(f"group-join: {paths.DAEMON_JSON} is not JSON ({error}); fix it, then rerun") from None
    if not isinstance(config, dict) or not isinstance(config.get("labels", []), list):
        raise AgentError(f'group-join: {paths.DAEMON_JSON} must be a JSON object whose "labels" is a list')
    kept = [str(label) for label in config.get("labels", []) if str(label).partition("=")[0] not in claims]
    labels = kept + [f"{key}={value}" for key, value in sorted(claims.items())]
    if labels == config.get("labels"):
        return False
    config["labels"] = labels
    nodefs.replace(paths.DAEMON_JSON, json.dumps(config, indent=2) + "\n")
    return True


# -- the token and the join ---------------------------------------------------------------
def read_join_token(node: env.NodeEnv, param: str) -> str:
    """The worker join token from SSM, retried while the CLI fails (bounded). Only stderr
    ever reaches a message: the token is on stdout."""
    argv = ["ssm", "get-parameter", "--name", param, "--with-decryption", "--query", "Parameter.Value"]
    argv += ["--output", "text", *(["--region", node.region] if node.region else [])]
    if node.get("SWARM_SSM_ENDPOINT"):
        argv += ["--endpoint-url", node.get("SWARM_SSM_ENDPOINT")]
    deadline, why = run.now() + TOKEN_BOUND, ""
    while True:
        result = run.call("aws", *argv, timeout=SSM_CALL_TIMEOUT, env=node.aws_env(), check=False)
        token = result.stdout.strip() if result.returncode == 0 else ""
        if contract.TOKEN_RE.match(token):
            return token
        lines = result.stderr.strip().splitlines()
        why = membership.TOKEN_IN_TEXT.sub("SWMTKN-<redacted>", lines[-1])[:300] if lines else ""
        why = why or ("it holds no swarm join token" if result.returncode == 0 else f"exit {result.returncode}")
        if run.now() >= deadline:
            raise AgentError(
                f"group-join: no worker join token from SSM parameter {param} after {TOKEN_BOUND}s ({why}). "
                "The instance role needs ssm:GetParameter on it (and kms:Decrypt for its key); "
                "'pulumi up' writes the token there"
            )
        run.pause(TOKEN_POLL)


def _already_in(token: str) -> bool:
    """True when this node is active in the token's swarm; out of any other state it is
    made ready to join (a worker in another swarm, or a join left pending, leaves)."""
    info = dockerd.swarm_info()
    state = info.get("LocalNodeState", "")
    if state == "active" and membership.same_swarm(token):
        return True
    if state == "active" and info.get("ControlAvailable"):
        raise AgentError(
            "group-join: this node is a manager of another swarm (its root CA is not the token's); "
            "a group's machine is a worker: run 'docker swarm leave --force' on it, or replace the instance"
        )
    if state in ("active", "pending", "error", "locked"):
        run.note(f"group-join: leaving the swarm state '{state}' to join this swarm")
        run.docker("swarm", "leave", "--force", check=False)
    return False


def join_any(node: env.NodeEnv, managers: list[str], token: str) -> str:
    """Join as a worker through each manager in turn until one takes it (bounded)."""
    deadline, failures = run.now() + JOIN_BOUND, []
    for addr in managers:
        if run.now() >= deadline:
            break
        if dockerd.local_state() in ("pending", "error"):  # a try that timed out keeps trying: stop it
            run.docker("swarm", "leave", "--force", check=False)
        try:
            membership.join_swarm(node, "worker", f"{addr}:2377", token)
            return f"{addr}:2377"
        except AgentError as error:  # its messages never carry the token
            failures.append(f"{addr}: {error}")
            run.note(f"group-join: {addr}:2377 did not take this node: {error}")
    raise AgentError(
        f"group-join: no manager took this node ({'; '.join(failures)[:600]}). The managers must accept "
        "TCP 2377 from the group's subnets; 'docker node ls' on a manager shows the swarm"
    )
