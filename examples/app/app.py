"""The web service an app team runs on the swarm, defined once.

`__main__.py` turns `WebService` into pulumi-docker resources; `compose()` renders the
same service as a compose file for `docker stack deploy`, for teams (and tests) that
use the Docker CLI with a context built from the swarm stack's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

# The outputs of the swarm stack this app reads, and the contract version it was written for.
OUTPUTS_VERSION = 1
REQUIRED_OUTPUTS = ("outputsVersion", "dockerHost", "nodes", "sshKnownHosts")
SECRET_NAME = "greeting"  # noqa: S105 - the Docker secret's name, not its value


class AppConfigError(ValueError):
    """A setting of this app is wrong; the message names it and the fix."""


@dataclass(frozen=True)
class WebService:
    name: str = "web"
    image: str = "busybox:1.36"
    replicas: int = 2
    port: int = 8080  # published in host mode on every node that runs a task
    network: str = "web-net"

    def __post_init__(self):
        if not 1 <= self.replicas <= 100:
            raise AppConfigError(
                f"app:replicas must be 1 to 100 (got {self.replicas}); fix: pulumi config set app:replicas 2"
            )
        if not 1 <= self.port <= 65535:
            raise AppConfigError(f"app:port must be 1 to 65535 (got {self.port}); fix: pulumi config set app:port 8080")
        if not self.image or " " in self.image:
            raise AppConfigError(f"app:image must be an image reference (got {self.image!r})")

    @property
    def command(self) -> list[str]:
        # Serves the Docker secret as its page: the secret reached the task, the page proves it.
        script = (
            f"mkdir -p /www && cp /run/secrets/{SECRET_NAME} /www/index.html && exec httpd -f -p {self.port} -h /www"
        )
        return ["sh", "-c", script]

    @property
    def healthcheck(self) -> list[str]:
        return ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{self.port}/"]

    # Rolling update one task at a time, new task first, back to the old spec on failure.
    update = {"parallelism": 1, "delay": "10s", "order": "start-first", "failure_action": "rollback", "monitor": "30s"}
    rollback = {"parallelism": 1, "delay": "0s", "order": "stop-first", "failure_action": "pause", "monitor": "30s"}
    health = {"interval": "10s", "timeout": "3s", "retries": 3, "start_period": "5s"}


def endpoints(nodes: list[dict], port: int) -> list[str]:
    """Where the service answers: each node that runs a task (at most one per node)."""
    return [f"http://{n.get('publicIp') or n['privateIp']}:{port}/" for n in nodes]


def compose(service: WebService, secret_file: str) -> dict:
    """The same service as a compose file (version 3.8) for `docker stack deploy`."""
    return {
        "version": "3.8",
        "services": {
            service.name: {
                "image": service.image,
                "command": service.command,
                "networks": [service.network],
                "secrets": [SECRET_NAME],
                "ports": [{"target": service.port, "published": service.port, "protocol": "tcp", "mode": "host"}],
                "healthcheck": {"test": service.healthcheck, **service.health},
                "deploy": {
                    "mode": "replicated",
                    "replicas": service.replicas,
                    "endpoint_mode": "dnsrr",
                    "placement": {"max_replicas_per_node": 1},
                    "update_config": service.update,
                    "rollback_config": service.rollback,
                },
            }
        },
        "networks": {service.network: {"driver": "overlay", "attachable": True}},
        "secrets": {SECRET_NAME: {"file": secret_file}},
    }


if __name__ == "__main__":
    # python app.py SECRET_FILE [IMAGE] [REPLICAS] > stack.yml: the service for `docker stack deploy`
    # (JSON is YAML, so the compose file needs no extra package).
    import json
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: python app.py SECRET_FILE [IMAGE] [REPLICAS] > stack.yml")
    image = sys.argv[2] if len(sys.argv) > 2 else WebService.image
    replicas = int(sys.argv[3]) if len(sys.argv) > 3 else WebService.replicas
    print(json.dumps(compose(WebService(image=image, replicas=replicas), sys.argv[1]), indent=2))
