"""Runs `__main__.py` under Pulumi's mocks and records everything the engine would see.

`run_program(config)` returns a `Run`: every registered resource with its inputs, its
parent, its dependencies and its options as they reached the (mock) engine, and every
stack output with its secret-ness. Config errors surface as the `ConfigError` raised.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import runpy
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await
from testbed.addresses import tags_match
from testbed.sdk import drop_pending_outputs, fresh_stack, one_run_per_process, stack_exports, unwrap

from agent.swarm_agent import contract
from components.swarm import READ_HOST_KEY

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "__main__.py"

WORKER_TOKEN = "SWMTKN-1-0mockworkertoken0000000000000000000000000000000-mockworker00000000000"
MANAGER_TOKEN = "SWMTKN-1-0mockmanagertoken000000000000000000000000000000-mockmanager0000000000"
HOST_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfAMachineYouBring"
UNLOCK_KEY = "SWMKEY-1-mockunlockkeymockunlockkeymockunlockke"
MIRROR_KEY_ID, MIRROR_SECRET = "AKIAMOCKMIRRORKEY001", "mock/mirror/secret/key/0000000000000000000"  # its IAM user's
BACKUP_KEY = "5ea1ed0b5ea1ed0b5ea1ed0b5ea1ed0b5ea1ed0b5ea1ed0b5ea1ed0b5ea1ed0b"  # the backups' signing key
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nbW9jay1wcml2YXRlLWtleS1ub3QtcmVhbA==\n-----END OPENSSH PRIVATE KEY-----\n"
)
AMI = "ami-0123456789abcdef0"
ZONES = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]

BASE_CONFIG = {
    "aws:region": "eu-west-1",
    "swarm:sshAllowedCidrs": '["203.0.113.0/24"]',
}


@dataclass
class Resource:
    type: str
    name: str
    urn: str
    parent: str
    dependencies: list[str]
    inputs: dict[str, Any]
    secret_inputs: set[str]
    protect: bool
    additional_secret_outputs: list[str]
    ignore_changes: list[str]
    delete_before_replace: bool
    custom: bool
    provider: str = ""


@dataclass
class Run:
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    invokes: list[tuple[str, dict]] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Resource:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, found {len(matches)}"
        return matches[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)

    def commands(self) -> list[Resource]:
        return self.of_type("command:remote:Command")

    def command(self, suffix: str) -> Resource:
        matches = [r for r in self.commands() if r.name.endswith(suffix)]
        assert len(matches) == 1, f"expected one command ending {suffix!r}, found {[r.name for r in matches]}"
        return matches[0]

    def depends_on(self, resource: Resource, other: Resource) -> bool:
        """Whether `resource` waits for `other`, directly or through its dependencies."""
        seen, todo = set(), list(resource.dependencies)
        while todo:
            urn = todo.pop()
            if urn == other.urn:
                return True
            if urn in seen:
                continue
            seen.add(urn)
            todo.extend(self.by_urn(urn).dependencies if any(r.urn == urn for r in self.resources) else [])
        return False


class SwarmMocks(pulumi.runtime.Mocks):
    """Answers like AWS would, with fixed, recognisable values."""

    def __init__(
        self,
        subnets: dict[str, dict] | None = None,
        zones: list[str] | None = None,
        addresses: dict[str, dict[str, str]] | None = None,
        address_quota: float | None = 20.0,  # raised: a 7-manager stack fits; quota tests set their own
        volumes: dict[str, dict] | None = None,
        roles: list[str] | None = None,
        file_systems: dict[str, dict[str, str]] | None = None,
        log_groups: list[str] | None = None,
    ):
        """`addresses`: Elastic IPs the region already holds, by allocation id, with their
        tags; `address_quota`: what Service Quotas answers (None: it refuses); `volumes`:
        EBS volumes the region holds, by volume id, as DescribeVolumes describes them."""
        self.volumes = dict(volumes or {})
        self.roles = list(roles or [])  # IAM roles the account holds, by name
        self.file_systems = dict(file_systems or {})  # EFS file systems the region holds: id -> tags
        self.log_groups = list(log_groups or [])  # CloudWatch Logs groups the region holds, by name
        self.subnets = subnets or {}
        self.addresses = dict(addresses or {})
        self.address_quota = address_quota
        self.zones = zones if zones is not None else ZONES
        self.worker_ips = (f"10.99.{i // 250}.{i % 250 + 1}" for i in range(100000))
        self.public_ips = (f"198.51.{100 + i // 250}.{i % 250 + 1}" for i in range(100000))
        self.invokes: list[tuple[str, dict]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state, _ = unwrap(dict(args.inputs))
        if args.typ == "aws:ec2/instance:Instance":
            state.setdefault("privateIp", next(self.worker_ips))
            state["publicIp"] = next(self.public_ips)
            state["availabilityZone"] = "eu-west-1x"
        elif args.typ == "aws:ec2/eip:Eip":
            state["allocationId"] = f"eipalloc-{args.name}"
            state["publicIp"] = next(self.public_ips)
            return state["allocationId"], state
        elif args.typ == "aws:ec2/eipAssociation:EipAssociation":
            state["publicIp"] = "198.51.100.250"  # what AWS reads back (the program uses the Eip's)
        elif args.typ == "aws:efs/fileSystem:FileSystem":
            return args.resource_id or "fs-0a1b2c3d4e5f6a7b8", state  # an import keeps the ID it names
        elif args.typ == "aws:cloudwatch/logGroup:LogGroup":
            state["arn"] = f"arn:aws:logs:eu-west-1:123456789012:log-group:{state['name']}"
            return args.resource_id or state["name"], state
        elif args.typ == "aws:s3/bucket:Bucket":
            state["bucket"] = state.get("bucket") or f"{args.name}-0a1b2c3"
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
        elif args.typ == "tls:index/privateKey:PrivateKey":
            state["publicKeyOpenssh"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockPublicKey mock"
            state["privateKeyOpenssh"] = PRIVATE_KEY
        elif args.typ == "random:index/randomShuffle:RandomShuffle":
            state["results"] = list(state.get("inputs") or [])[: int(state.get("resultCount") or 1)]
        elif args.typ == "random:index/randomBytes:RandomBytes":
            state["hex"] = BACKUP_KEY
        elif args.typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::123456789012:role/{args.name}"
            state["name"] = args.name
        elif args.typ == "aws:iam/instanceProfile:InstanceProfile":
            state["name"] = args.name
        elif args.typ == "aws:ec2/keyPair:KeyPair":
            state["keyName"] = args.name
        elif args.typ == "aws:iam/user:User":
            state["name"] = args.name
        elif args.typ == "aws:iam/accessKey:AccessKey":
            state["secret"] = MIRROR_SECRET
            return MIRROR_KEY_ID, state
        elif args.typ == "command:remote:Command":
            create = state.get("create") or ""
            if " tokens" in create:
                # As the node prints it: the unlock key only when the swarm is autolocked.
                unlock = UNLOCK_KEY if "autolock" in (state.get("triggers") or []) else None
                tokens = {"worker": WORKER_TOKEN, "manager": MANAGER_TOKEN, "unlock": unlock}
                state["stdout"] = contract.line("swarm-tokens", **tokens)
            elif create == READ_HOST_KEY:
                state["stdout"] = f"{HOST_PUBLIC_KEY} root@{args.name}\n"
            elif " bootstrap " in create:
                state["stdout"] = contract.line(
                    "swarm-bootstrap", action="initialised", result="bootstrap: initialised a new swarm"
                )
            elif create.endswith(" probe"):
                # A live manager's answer carries the manager token: it must stay secret.
                live = {"state": "active", "manager": True, "quorum": True}
                state["stdout"] = contract.line("swarm-probe", addr="10.42.16.10:2377", token=MANAGER_TOKEN, **live)
            else:
                state["stdout"] = ""
            state["stderr"] = ""
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "aws:ssm/getParameter:getParameter":
            return {"name": args.args["name"], "value": AMI, "type": "String"}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": self.zones, "zoneIds": [f"euw1-az{i}" for i in range(len(self.zones))]}
        if args.token == "aws:ec2/getEips:getEips":
            wanted, filters = args.args.get("tags") or {}, args.args.get("filters") or []
            found = [a for a, tags in self.addresses.items() if tags_match(tags, wanted, filters)]
            return {"allocationIds": found, "publicIps": [f"203.0.113.{i + 1}" for i in range(len(found))]}
        if args.token == "aws:servicequotas/getServiceQuota:getServiceQuota":
            if self.address_quota is None:  # as a provider reports a failed call
                return {}, [("quotaCode", "AccessDeniedException: not authorized to call GetServiceQuota")]
            return {"quotaCode": args.args["quotaCode"], "serviceCode": "ec2", "value": self.address_quota}
        if args.token == "aws:iam/getRoles:getRoles":
            pattern = re.compile(args.args.get("nameRegex") or ".*")
            names = [n for n in self.roles if pattern.search(n)]
            return {"names": names, "arns": [f"arn:aws:iam::123456789012:role/{n}" for n in names]}
        if args.token == "aws:efs/getFileSystem:getFileSystem":  # as the provider answers, one or an error
            found = [f for f, tags in self.file_systems.items() if tags_match(tags, args.args.get("tags") or {}, [])]
            if len(found) != 1:
                several = "multiple EFS File Systems matched; use additional constraints to reduce matches"
                return {}, [("tags", several if found else "no matching EFS File System found")]
            return {"id": found[0], "fileSystemId": found[0], "tags": self.file_systems[found[0]]}
        if args.token == "aws:cloudwatch/getLogGroup:getLogGroup":  # as the provider answers, one or an error
            name = args.args["name"]
            if name not in self.log_groups:
                return {}, [("name", f"reading CloudWatch Logs Log Group ({name}): couldn't find resource")]
            return {"id": name, "name": name, "arn": f"arn:aws:logs:eu-west-1:123456789012:log-group:{name}"}
        if args.token == "aws:ebs/getEbsVolumes:getEbsVolumes":
            wanted = args.args.get("tags") or {}
            found = [v for v, d in self.volumes.items() if tags_match(d.get("tags") or {}, wanted, [])]
            return {"ids": found}
        if args.token == "aws:ebs/getVolume:getVolume":
            volume_id = args.args["filters"][0]["values"][0]
            return {"id": volume_id, "volumeId": volume_id, **self.volumes[volume_id]}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            subnet = self.subnets[args.args["id"]]
            return {"id": args.args["id"], **subnet}
        raise NotImplementedError(f"no mock for invoke {args.token}")


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.recorded: list[Resource] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        raw = rpc.deserialize_properties(request.object)
        inputs, _ = unwrap(raw)
        secret_inputs = {k for k, v in raw.items() if unwrap(v)[1]}
        self.recorded.append(
            Resource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                dependencies=list(request.dependencies),
                inputs=inputs,
                secret_inputs=secret_inputs,
                protect=bool(request.protect),
                additional_secret_outputs=list(request.additionalSecretOutputs),
                ignore_changes=list(request.ignoreChanges),
                delete_before_replace=bool(request.deleteBeforeReplace),
                custom=bool(request.custom),
                provider=request.provider,
            )
        )
        return response


def run_program(
    config: dict[str, Any] | None = None,
    *,
    stack: str = "dev",
    secret_keys: tuple[str, ...] = (),
    mocks: pulumi.runtime.Mocks | None = None,
    base: bool = True,
    main: Path = MAIN,
    project: str = "swarm",
) -> Run:
    """Run a program (this one by default) with `config` (keys without a namespace get `swarm:`)."""
    mocks = mocks or SwarmMocks()
    monitor = RecordingMonitor(mocks)
    fresh_stack()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    full = dict(BASE_CONFIG) if base else {}
    for key, value in (config or {}).items():
        key = key if ":" in key else f"swarm:{key}"
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value if isinstance(value, str) else json.dumps(value)
    pulumi.runtime.set_all_config(full, [k if ":" in k else f"swarm:{k}" for k in secret_keys])

    run = Run()

    def program():
        runpy.run_path(str(main), run_name="__main__")
        run.outputs, run.secret_outputs = stack_exports()

    try:
        with one_run_per_process():
            _sync_await(run_pulumi_func(program))
    except Exception as error:
        drop_pending_outputs()
        # Let tests check what was registered before the failure (for config errors: nothing).
        error.registered = [r for r in monitor.recorded if r.type != "pulumi:pulumi:Stack"]
        raise
    run.resources = monitor.recorded
    run.invokes = getattr(mocks, "invokes", [])
    return run


def subnet_mock(cidr: str, zone: str, vpc: str = "vpc-0123456789abcdef0") -> dict:
    return {"cidrBlock": cidr, "availabilityZone": zone, "vpcId": vpc}


def host(cidr: str, n: int) -> str:
    return str(ipaddress.ip_network(cidr)[n])


def require_tool(name: str) -> str:
    """The tool's path; in CI a missing tool fails the test, locally it skips with the fix."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {name}); the README's test command installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
