"""An app team's path, on the bed: only the swarm stack's outputs and the real Docker CLI.

A second swarm stack is formed on the bed; from its outputs alone (dockerHost, the SSH
key, the mirror) a `docker context` is built, and the example app's service, rendered as
a compose file from the same definition its Pulumi program uses, is deployed with
`docker stack deploy`. It must answer on the nodes with the Docker secret's content, its
image pulled through the swarm's mirror (Docker Hub is unreachable in the bed).
"""

from __future__ import annotations

import ipaddress
import json
import urllib.request

import pytest
import yaml
from app import WebService, compose, endpoints
from testbed import verify
from testbed.bed import wait_until
from testbed.engine import Engine

pytestmark = pytest.mark.e2e
GREETING = "hello from an app repo"


def test_example_app_deploys_with_the_docker_cli_from_stack_outputs(bed, log_dir, tmp_path):
    vpc = app_vpc(bed)
    engine = Engine(bed, bed.program_config(1, 1, str(vpc)), stack="apps", log_dir=log_dir)
    try:
        check_app(bed, engine.up().outputs, tmp_path)
    finally:  # this stack's machines go, so the other scenarios see only their own
        for name in [s.host for s in engine.state.values() if s.host in bed.hosts]:
            bed.wipe_host(name)


def app_vpc(bed):
    """Its own part of the bed's /16, so it never meets the daily-cycle stack's addresses."""
    return next(n for n in bed.network.subnets(new_prefix=18) if n.network_address == bed.network[128 * 256])


def check_app(bed, outputs: dict, tmp_path) -> None:
    vpc = app_vpc(bed)
    assert all(ipaddress.ip_address(n["privateIp"]) in vpc for n in outputs["nodes"])

    # The client side, from the outputs only: the key, an ssh that uses it, a docker context.
    client = tmp_path / "client"
    cli = verify.docker_client(outputs, client)
    cli("context", "create", "swarm-apps", "--docker", f"host={outputs['dockerHost']}")
    cli("context", "use", "swarm-apps")
    assert "Swarm: active" in cli("info")

    service = WebService(image="busybox", replicas=2)
    secret_file = client / "greeting.txt"
    secret_file.touch(mode=0o600)
    secret_file.write_text(GREETING)
    stack_file = client / "stack.yml"
    stack_file.write_text(yaml.safe_dump(compose(service, str(secret_file)), sort_keys=False))
    cli("stack", "deploy", "--compose-file", str(stack_file), "app")

    def running() -> bool:
        listing = cli("service", "ls", "--filter", "name=app_web", "--format", "{{.Replicas}}").split()
        return bool(listing) and listing[0] == "2/2"

    try:
        wait_until("app_web at 2/2", running, 180, interval=2)
    except Exception:
        print(cli("service", "ps", "--no-trunc", "app_web"))
        raise

    def answers(url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a bed host
                return response.read().decode()
        except OSError:
            return ""

    urls = endpoints(outputs["nodes"], service.port)
    for url in urls:
        assert wait_until(f"{url} to answer", lambda url=url: answers(url), 60) == GREETING
    # Health-checked as defined, and the image came through this swarm's mirror: Docker Hub
    # is unreachable in the bed, and the mirror's cache for this stack now holds blobs.
    checked = cli(
        "service", "inspect", "app_web", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck.Test}}"
    )
    assert json.loads(checked) == service.healthcheck
    bucket = outputs["stateBucket"]
    cached = bed.s3().list_objects_v2(Bucket=bucket, Prefix=f"{outputs['statePrefix']}mirror/").get("Contents", [])
    assert any("/blobs/" in o["Key"] for o in cached), [o["Key"] for o in cached]
