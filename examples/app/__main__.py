"""An app team's stack: a web service on the swarm, found through the swarm stack's outputs.

Config (namespace `app`):
  swarmStack     required  the swarm stack, `organization/swarm/dev` (or `swarm/dev` locally)
  greeting       required, secret  the page the service serves, mounted as a Docker secret
  image, replicas, port  optional  see app.WebService
  sshPrivateKey  secret    only when the swarm uses your own key (it then exports none)
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pulumi
import pulumi_docker as docker
from app import OUTPUTS_VERSION, REQUIRED_OUTPUTS, SECRET_NAME, AppConfigError, WebService, endpoints

config = pulumi.Config("app")
swarm_stack = config.require("swarmStack")


def _setting(value, default):
    return default if value is None else value


service = WebService(
    image=_setting(config.get("image"), WebService.image),
    replicas=_setting(config.get_int("replicas"), WebService.replicas),
    port=_setting(config.get_int("port"), WebService.port),
)
swarm = pulumi.StackReference(swarm_stack)


def required(name: str) -> pulumi.Output:
    """An output of the swarm stack, or an error naming it (secret ones stay secret)."""

    def present(value):
        if value in (None, "", []):
            raise AppConfigError(
                f"the swarm stack {swarm_stack} has no output '{name}': "
                "check app:swarmStack, and run `pulumi up` on the swarm stack"
            )
        if name == "outputsVersion" and value != OUTPUTS_VERSION:
            # Numbers come back from a stack reference as floats: 2.0 prints as 2.
            raise AppConfigError(
                f"the swarm stack {swarm_stack} exports outputsVersion {value:g}; this app reads {OUTPUTS_VERSION}"
            )
        return value

    return swarm.get_output(name).apply(present)


outputs = {name: required(name) for name in REQUIRED_OUTPUTS}


def ssh_key() -> pulumi.Output:
    own = config.get_secret("sshPrivateKey")
    if own is not None:
        return own

    def present(value):
        if not value:
            raise AppConfigError(
                f"the swarm stack {swarm_stack} has no output 'sshPrivateKey' (it uses your own key): "
                "pulumi config set --secret app:sshPrivateKey < ~/.ssh/your-key"
            )
        return value

    return swarm.get_output("sshPrivateKey").apply(present)


def client_file(suffix: str, text: str) -> str:
    """The docker provider's SSH takes files: the key and the swarm's known hosts, one pair
    per swarm stack, readable by you only. The paths are stable so the provider does not see
    a change on every run."""
    path = Path.home() / ".ssh" / f"pulumi-{re.sub(r'[^A-Za-z0-9.-]+', '-', swarm_stack)}.{suffix}"
    if not pulumi.runtime.is_dry_run() or not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
    return str(path)


# The swarm's nodes keep their host keys from day to day (sshKnownHosts): only they are
# accepted, so nothing else on the path can pose as the leader and receive the secrets.
ssh_opts = pulumi.Output.all(ssh_key(), outputs["sshKnownHosts"]).apply(
    lambda v: [
        "-i",
        client_file("key", v[0]),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={client_file('known_hosts', v[1])}",
        "-o",
        "LogLevel=ERROR",
    ]
)
provider = docker.Provider("swarm", host=outputs["dockerHost"], ssh_opts=ssh_opts)
opts = pulumi.ResourceOptions(provider=provider)

network = docker.Network(service.network, name=service.network, driver="overlay", attachable=True, opts=opts)
greeting = docker.Secret(
    SECRET_NAME,
    # Docker secrets are immutable: a new value gets a new name, and the service follows it.
    data=config.require_secret("greeting").apply(lambda text: base64.b64encode(text.encode()).decode()),
    opts=opts,
)

web = docker.Service(
    service.name,
    name=service.name,
    task_spec=docker.ServiceTaskSpecArgs(
        container_spec=docker.ServiceTaskSpecContainerSpecArgs(
            image=service.image,
            commands=service.command,
            secrets=[
                docker.ServiceTaskSpecContainerSpecSecretArgs(
                    secret_id=greeting.id, secret_name=greeting.name, file_name=f"/run/secrets/{SECRET_NAME}"
                )
            ],
            healthcheck=docker.ServiceTaskSpecContainerSpecHealthcheckArgs(
                tests=service.healthcheck,
                interval=service.health["interval"],
                timeout=service.health["timeout"],
                retries=service.health["retries"],
                start_period=service.health["start_period"],
            ),
        ),
        networks_advanceds=[docker.ServiceTaskSpecNetworksAdvancedArgs(name=network.id)],
        placement=docker.ServiceTaskSpecPlacementArgs(max_replicas=1),
    ),
    mode=docker.ServiceModeArgs(replicated=docker.ServiceModeReplicatedArgs(replicas=service.replicas)),
    endpoint_spec=docker.ServiceEndpointSpecArgs(
        mode="dnsrr",
        ports=[
            docker.ServiceEndpointSpecPortArgs(
                target_port=service.port, published_port=service.port, publish_mode="host", protocol="tcp"
            )
        ],
    ),
    update_config=docker.ServiceUpdateConfigArgs(**service.update),
    rollback_config=docker.ServiceRollbackConfigArgs(**service.rollback),
    opts=opts,
)

pulumi.export("service", web.name)
pulumi.export("urls", outputs["nodes"].apply(lambda nodes: endpoints(nodes, service.port)))
