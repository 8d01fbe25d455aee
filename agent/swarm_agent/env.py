"""The node's settings: /etc/swarm/env, written by user-data, and nothing else.

A remote command can never be steered by the caller's environment: every verb reads its
settings from this root-owned file. The file is shell assignments (`KEY=value` with
bash's `printf %q` quoting) so that a person can `source` it in a shell at 06:00.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from swarm_agent import paths
from swarm_agent.run import AgentError

TARGETS = ("s3", "local", "none")


def parse(text: str) -> dict[str, str]:
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        if not sep or not key.isidentifier() or "$'" in raw:
            raise AgentError(f"{paths.ENV_FILE} line {number} is not KEY=value")
        words = shlex.split(raw)
        values[key] = words[0] if words else ""
    return values


@dataclass(frozen=True)
class NodeEnv:
    values: dict[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default) or default

    def require(self, key: str) -> str:
        value = self.values.get(key, "")
        if not value:
            raise AgentError(f"{key} is missing in {paths.ENV_FILE}")
        return value

    node_name = property(lambda self: self.get("SWARM_NODE_NAME"))
    advertise_addr = property(lambda self: self.get("SWARM_ADVERTISE_ADDR"))
    prefix = property(lambda self: self.get("SWARM_PREFIX"))
    bucket = property(lambda self: self.get("SWARM_BUCKET"))
    region = property(lambda self: self.get("SWARM_REGION"))
    target = property(lambda self: self.get("SWARM_BACKUP_TARGET", "s3"))
    mirror_storage = property(lambda self: self.get("SWARM_MIRROR_STORAGE", "s3"))
    # Logs and metrics (logship.py, metrics.py): empty means off.
    log_group = property(lambda self: self.get("SWARM_LOG_GROUP"))
    logs_endpoint = property(lambda self: self.get("SWARM_LOGS_ENDPOINT"))
    metrics_namespace = property(lambda self: self.get("SWARM_METRICS_NAMESPACE"))
    metrics_endpoint = property(lambda self: self.get("SWARM_METRICS_ENDPOINT"))

    @property
    def store(self) -> str:
        """Where backups live, as the messages show it: the stack's S3 prefix or the staged copy."""
        if self.target == "s3":
            return f"s3://{self.bucket}/{self.prefix}"
        if self.target == "local":
            return f"{paths.RESTORE_DIR}/{self.prefix}"
        return ""

    @property
    def list_hint(self) -> str:
        if self.target == "s3":
            return f"'aws s3 ls {self.store}backups/'"
        if self.target == "local":
            return f"'ls <swarm:backupDirectory>/{self.prefix}backups/' on the machine running Pulumi"
        return ""

    def require_addr(self) -> str:
        if not self.advertise_addr:
            raise AgentError(f"SWARM_ADVERTISE_ADDR is empty in {paths.ENV_FILE}; managers need their pinned IP")
        return self.advertise_addr

    def aws_env(self) -> dict[str, str]:
        """What every aws call gets: machines the user brings carry their own keys; on EC2
        the role's credentials come from the metadata service, which the CLI asks once with
        a 1 s timeout by default: a busy machine (a morning of boots) then reads "Unable to
        locate credentials". Three tries of up to 5 s each, as AWS's CLI guide suggests."""
        patience = {"AWS_METADATA_SERVICE_TIMEOUT": "5", "AWS_METADATA_SERVICE_NUM_ATTEMPTS": "3"}
        if os.path.isfile(paths.CREDS_FILE):
            return {**patience, "AWS_SHARED_CREDENTIALS_FILE": paths.CREDS_FILE}
        return patience

    def logs_aws_env(self) -> dict[str, str]:
        """What the logs and metrics calls get: a machine the user brings has a logs-only key
        of its own (its workers have no other key), else the same as every aws call."""
        if os.path.isfile(paths.LOGS_CREDS_FILE):
            return {**self.aws_env(), "AWS_SHARED_CREDENTIALS_FILE": paths.LOGS_CREDS_FILE}
        return self.aws_env()


def _read(path: str) -> NodeEnv:
    try:
        with open(path) as handle:
            return NodeEnv(parse(handle.read()))
    except FileNotFoundError:
        raise AgentError(f"{path} is missing: user-data has not run on this node") from None


def load(path: str = "") -> NodeEnv:
    path = path or paths.ENV_FILE
    env = _read(path)
    env.require("SWARM_PREFIX")
    if env.target not in TARGETS:
        raise AgentError(f"SWARM_BACKUP_TARGET '{env.target}' in {path} is not s3, local or none")
    if env.target == "s3":
        env.require("SWARM_BUCKET")
        env.require("SWARM_REGION")
    return env


def load_any(path: str = "") -> NodeEnv:
    """Any node's settings, unchecked: the logs and metrics verbs run on every kind of node
    (a group worker's file has no backup settings)."""
    return _read(path or paths.ENV_FILE)


# A worker of an Auto Scaling group (group_join.py) joins by itself at boot: its file names
# its group, the managers and the SSM parameter of the join token, and it takes no backups.
GROUP_KEYS = ("SWARM_GROUP", "SWARM_MANAGER_ADDRS", "SWARM_JOIN_TOKEN_PARAMETER")


def load_group(path: str = "") -> NodeEnv:
    """A group worker's settings; SWARM_REGION and SWARM_SSM_ENDPOINT may be empty."""
    path = path or paths.ENV_FILE
    env = _read(path)
    for key in GROUP_KEYS:
        if not env.get(key):
            raise AgentError(f"{key} is missing in {path}: this is not a worker group's instance (group-join)")
    return env
