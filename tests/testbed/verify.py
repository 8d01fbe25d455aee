"""Checks the scenarios share: what a healthy swarm looks like from real `docker` output.

Molecule's verify step, as helpers: each reads a host's Docker and raises (or returns
what it saw) so a scenario's assertion says what it expected. Secrets are compared by
digest (`fp`), never printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from testbed.bed import BedError, wait_until
from testbed.providers import INSTANCE


def fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def nodes(host) -> list[dict]:
    lines = host.docker("node", "ls", "--format", "{{json .}}").splitlines()
    return [json.loads(line) for line in lines]


def bucket_of(engine) -> str:
    return next(s.outputs["bucket"] for s in engine.state.values() if s.type == "aws:s3/bucket:Bucket")


def read(bed, bucket: str, key: str) -> bytes:
    return bed.s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def assert_one_healthy_swarm(engine, stack: str, managers: int = 3, workers: int = 2) -> list[dict]:
    """One leader, the other managers Reachable, every node Ready, exactly the expected names."""
    leader = engine.host_of("manager-0")
    listing = nodes(leader)
    status = sorted(n["ManagerStatus"] for n in listing)
    assert status == sorted(["Leader"] + ["Reachable"] * (managers - 1) + [""] * workers), listing
    assert all(n["Status"] == "Ready" for n in listing), listing
    assert sorted(n["Hostname"] for n in listing) == sorted(
        [f"swarm-{stack}-manager-{i}" for i in range(managers)] + [f"swarm-{stack}-worker-{i}" for i in range(workers)]
    )
    return listing


def wait_service(host, name: str, replicas: int, timeout: float = 120) -> None:
    def running():
        out = host.docker("service", "ls", "--filter", f"name={name}", "--format", "{{.Name}} {{.Replicas}}")
        # "5/5", or "5/5 (max 1 per node)" with --replicas-max-per-node
        return any(line.split()[:2] == [name, f"{replicas}/{replicas}"] for line in out.splitlines())

    try:
        wait_until(f"service {name} at {replicas}/{replicas}", running, timeout, interval=1)
    except BedError as error:
        tasks = host.docker("service", "ps", "--no-trunc", "--format", "{{.Node}} {{.CurrentState}} {{.Error}}", name)
        raise BedError(f"{error}; its tasks:\n{tasks}") from None


def secret_in_task(engine, stack: str, service: str, secret: str) -> str:
    """The content of `secret` as one of `service`'s running tasks reads it."""
    leader = engine.host_of("manager-0")
    task = leader.docker("service", "ps", service, "--filter", "desired-state=running", "-q").split()[0]
    node = leader.docker("inspect", "--format", "{{.NodeID}}", task).strip()
    hostname = leader.docker("node", "inspect", "--format", "{{.Description.Hostname}}", node).strip()
    holder = engine.host_of(hostname.removeprefix(f"swarm-{stack}-"))
    label = f"label=com.docker.swarm.service.name={service}"
    container = holder.docker("ps", "-q", "--filter", label).split()[0]
    return holder.docker("exec", container, "cat", f"/run/secrets/{secret}")


def signing_key_of(engine) -> bytes:
    """The stack's backup signing key, as `pulumi stack export --show-secrets` would show it."""
    (key,) = [
        s.outputs["hex"]
        for s in engine.state.values()
        if s.type == "random:index/randomBytes:RandomBytes" and s.name.endswith("-backup-signing-key")
    ]
    return bytes.fromhex(key)


def backups_script():
    """`scripts/swarm backups`' module (swarmcli.backups): list, verify, drill, its main(argv)."""
    from swarmcli import backups

    return backups


def ssh_strict(outputs: dict, address: str, known_hosts: str, workdir) -> subprocess.CompletedProcess:
    """`ssh ... true` to `address` as an app team would: the stack's key, and only the host
    keys in `known_hosts` accepted (StrictHostKeyChecking yes)."""
    key = workdir / "id_strict"
    if not key.exists():
        key.touch(mode=0o600)
        key.write_text(outputs["sshPrivateKey"])
    known = workdir / f"known_hosts_{fp(known_hosts)}"
    known.write_text(known_hosts)
    options = ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10"]  # fmt: skip
    command = ["ssh", "-i", str(key), *options, f"{outputs['sshUser']}@{address}", "true"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def docker_client(outputs: dict, client: Path) -> Callable[..., str]:
    """The Docker CLI as an app team's machine has it, from a stack's outputs only: its
    key, an ssh with strict host keys against `sshKnownHosts`, its own HOME and docker
    config under `client`. Returns `cli(*args)`: docker's stdout, or AssertionError."""
    (client / "bin").mkdir(parents=True, exist_ok=True)
    key = client / "id_swarm"
    key.touch(mode=0o600)
    key.write_text(outputs["sshPrivateKey"])
    known_hosts = client / "known_hosts"
    known_hosts.write_text(outputs["sshKnownHosts"])
    ssh_config = client / "ssh_config"
    ssh_config.write_text(
        f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n"
        f"  UserKnownHostsFile {known_hosts}\n  LogLevel ERROR\n"
    )
    # The Docker CLI runs `ssh` from PATH; this one reads the config above, not ~/.ssh.
    wrapper = client / "bin" / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {ssh_config} "$@"\n')
    wrapper.chmod(0o755)
    env = {
        "PATH": f"{client / 'bin'}:{os.environ['PATH']}",
        "HOME": str(client),
        "DOCKER_CONFIG": str(client / "docker-config"),
    }
    docker = shutil.which("docker")

    def cli(*args: str) -> str:
        run = subprocess.run([docker, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, f"docker {' '.join(args)}: {run.stdout}{run.stderr}"
        return run.stdout

    return cli


class BedStack:
    """`scripts/swarm roll`'s view of a stack on the bed: the engine's state and `up(replace=...)`."""

    def __init__(self, engine):
        self.engine = engine

    def machines(self):
        from swarmcli import roll

        return [
            roll.Machine(s.urn, s.inputs["tags"]["Name"], s.inputs["tags"]["swarm:role"])
            for s in self.engine.state.values()
            if s.type == INSTANCE
        ]

    def replace(self, urn: str) -> None:
        self.engine.up(replace=[urn])

    def converge(self, timeout: int) -> str:
        host = self.engine.host_of("manager-0")
        return host.run(["swarm-node", "converge", "--timeout", str(timeout)], timeout=timeout + 30).stdout.decode()
