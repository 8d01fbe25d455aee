"""An engine that runs the real `__main__.py` against the bed, as `pulumi up` would on AWS.

The program runs under Pulumi's mocks (`set_mocks(preview=False)`, config from
`set_all_config`), but the mock monitor *executes* each resource it is asked for:

- `aws:ec2/instance:Instance` becomes a fresh bed host at the instance's IP (its pinned
  `privateIp`, or the next free address of its subnet). The key pair's public key goes to
  the SSH user's `authorized_keys`, and the user-data runs there as root, in the
  background, as cloud-init would run it.
- `aws:s3/bucket:Bucket` and `BucketVersioning` are created in moto.
- `command:remote:Command` runs its `create` (or `update`) over SSH with paramiko, with
  its `stdin`, retrying the dial as pulumi-command does (`dialErrorLimit`,
  `perDialTimeout`); its stdout and stderr are real, and a non-zero exit is an error.
  `remote:CopyToRemote` copies over SFTP. `command:local:Command` runs here, as the
  provider would on the machine running Pulumi: its interpreter in its `dir`, with its
  `environment` and `stdin`.
- Everything else echoes its inputs, with the ids and computed fields AWS would add.

A resource is registered only once the resources it depends on are done (the SDK waits
for their outputs), and independent ones run in parallel, so the order is the engine's.
Across runs the engine keeps a state, as the Pulumi backend does: an `up()` whose inputs
are unchanged does nothing; changed `triggers` replace a command, other changes update
it; instances replace; `ignore_changes` is honoured; resources no longer in the program
are deleted. `destroy()` is `pulumi destroy --exclude-protected`: `delete` hooks run
newest-dependents-first, then instance hosts are wiped; protected resources (the bucket)
stay in the state and in moto. Secret values are kept out of the recorded state
(`state.json` holds a placeholder wherever the program marked a value secret) and the log
holds what pulumi-command would print.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import logging
import os
import runpy
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import empty_pb2
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from testbed.bed import BED_REGION, Bed, BedError
from testbed.sdk import SECRET_SIG, SIG_KEY, drop_pending_outputs, fresh_stack, stack_exports, unwrap

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "__main__.py"
COMMAND = "command:remote:Command"
LOCAL = "command:local:Command"
LOCAL_TIMEOUT = 900
COPY = "command:remote:CopyToRemote"
INSTANCE = "aws:ec2/instance:Instance"
MAX_COMMAND_SECONDS = 1200  # no command of the program may take longer, in the bed
MAX_DIAL_SECONDS = 600  # an unlimited dialErrorLimit still ends
AMI = "ami-0bed0bed0bed0bed0"


class EngineError(RuntimeError):
    """What `pulumi up` or `pulumi destroy` would report as the failure."""


# Open SSH sessions, so an interrupted run can close them: a worker thread blocked on a
# wiped host would otherwise hold the interpreter open until its timeout.
_LIVE: set = set()
_LIVE_LOCK = threading.Lock()
_ABORT = threading.Event()


def abort_all() -> None:
    """Stop every dial and close every SSH session of every engine (an interrupted run)."""
    _ABORT.set()
    with _LIVE_LOCK:
        clients = list(_LIVE)
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


def plain(value: Any) -> Any:
    """The plain value, secret markers removed."""
    return unwrap(value)[0]


def is_secret(value: Any) -> bool:
    return unwrap(value)[1]


def comparable(value: Any) -> Any:
    """Plain values for diffing: assets and archives compare by what they point at."""
    value = plain(value)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, pulumi.asset.Asset | pulumi.asset.Archive):
        return (type(value).__name__, getattr(value, "path", None), getattr(value, "text", None))
    return value


def redact(value: Any) -> Any:
    """What a checkpoint holds: every secret-marked value replaced, as Pulumi encrypts them."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            digest = hashlib.sha256(json.dumps(plain(value), sort_keys=True).encode()).hexdigest()[:12]
            return {"secure": f"[encrypted {digest}]"}
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def as_secret(value: Any) -> dict:
    return {SIG_KEY: SECRET_SIG, "value": value}


@dataclass
class State:
    """One resource as the backend records it."""

    urn: str
    type: str
    name: str
    id: str
    raw_inputs: dict  # with secret markers
    outputs: dict  # plain
    secret_outputs: set[str]
    dependencies: list[str]
    parent: str
    protect: bool
    delete_before_replace: bool
    host: str | None = None  # bed host name, for instances

    @property
    def inputs(self) -> dict:
        return plain(self.raw_inputs)

    def raw_outputs(self) -> dict:
        return {k: as_secret(v) if k in self.secret_outputs else v for k, v in self.outputs.items()}


@dataclass
class Result:
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    changes: dict[str, str] = field(default_factory=dict)  # urn -> create|update|replace|same|delete
    seconds: float = 0.0
    # resource name -> (start, end) of its step, in seconds since the run began (benchmarks)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)

    def changed(self) -> dict[str, str]:
        return {urn: op for urn, op in self.changes.items() if op != "same"}


class _Mocks(pulumi.runtime.Mocks):
    """Invokes: what AWS would answer for this program's lookups."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def new_resource(self, args):  # pragma: no cover - the monitor executes instead
        raise NotImplementedError

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:ssm/getParameter:getParameter":
            return {"name": args.args["name"], "value": AMI, "type": "String"}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            zones = [f"{BED_REGION}{z}" for z in "abc"]
            return {"names": zones, "zoneIds": [f"bed-az{i}" for i in range(3)]}
        raise NotImplementedError(f"the bed's engine has no answer for the invoke {args.token}")


class _Monitor(MockMonitor):
    def __init__(self, engine: Engine):
        super().__init__(_Mocks(engine))
        self.engine = engine
        self.stack_urn = ""

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            self.stack_urn = urn
            return resource_pb2.RegisterResourceResponse(urn=urn)
        _ensure_event_loop()
        raw = rpc.deserialize_properties(request.object, keep_unknowns=True)
        state = self.engine._step(
            urn=urn,
            type_=request.type,
            name=request.name,
            raw_inputs=raw,
            dependencies=list(request.dependencies),
            parent=request.parent,
            protect=bool(request.protect),
            delete_before_replace=bool(request.deleteBeforeReplace),
            ignore_changes=list(request.ignoreChanges),
            additional_secret_outputs=list(request.additionalSecretOutputs),
            custom=bool(request.custom),
        )
        obj = _sync_await(rpc.serialize_properties(state.raw_outputs(), {}))
        return resource_pb2.RegisterResourceResponse(urn=urn, id=state.id, object=obj)

    def RegisterResourceOutputs(self, request):
        return empty_pb2.Empty()


class Engine:
    """`up()` and `destroy()` for one stack of the program, on one bed."""

    def __init__(
        self,
        bed: Bed,
        config: dict[str, Any],
        *,
        stack: str = "bed",
        secret_keys: tuple[str, ...] = (),
        log_dir: Path | None = None,
        program: Path = MAIN,
        parallelism: int = 64,
        wait_for_boot: bool = False,
    ):
        """`parallelism` 1 executes one resource at a time (the benchmarks' baseline);
        `wait_for_boot` makes an instance done only once its user-data has finished, so
        that "every host ready" is a moment in the timings."""
        self.bed = bed
        self.parallelism = parallelism
        self.wait_for_boot = wait_for_boot
        self.program = program
        self.stack = stack
        self.config = dict(config)
        self.secret_keys = secret_keys
        self.log_dir = log_dir or (bed.root / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"engine-{stack}.log"
        self.state_path = self.log_dir / f"state-{stack}.json"
        self.state: dict[str, State] = {}
        self._lock = threading.Lock()
        self._new: dict[str, State] = {}
        self._result = Result()
        self._failure: Exception | None = None
        self._started = time.monotonic()
        self._ips: set[str] = set()

    # -- the two verbs ---------------------------------------------------------------
    def up(self) -> Result:
        """`pulumi up --yes`: raises EngineError naming the resource that failed."""
        started = self._started = time.monotonic()
        self._new, self._result, self._failure = {}, Result(), None
        self.log(f"== up {self.stack}")
        outputs, secret_names, program_error = self._run_program()
        failure = self._failure or program_error
        # As the backend does: what was done is recorded even when the update fails.
        merged = dict(self.state)
        merged.update(self._new)
        if failure is None:
            gone = [urn for urn in self.state if urn not in self._new]
            self.state = merged
            self._delete([urn for urn in gone], "delete")
        else:
            self.state = merged
        self._result.seconds = time.monotonic() - started
        self.checkpoint(outputs if failure is None else None, secret_names)
        if failure is not None:
            self.log(f"== up failed after {self._result.seconds:.1f}s: {failure}")
            raise EngineError(str(failure)) from failure
        self._result.outputs, self._result.secret_outputs = outputs, secret_names
        counts = collections.Counter(self._result.changes.values())
        self.log(f"== up done in {self._result.seconds:.1f}s: {dict(sorted(counts.items()))}")
        return self._result

    def destroy(self) -> Result:
        """`pulumi destroy --exclude-protected --yes`: delete hooks, then the machines."""
        started = time.monotonic()
        self._result = Result()
        self.log(f"== destroy {self.stack}")
        keep = self._protected_closure()
        doomed = [urn for urn in self.state if urn not in keep]
        try:
            self._delete(doomed, "delete")
        except EngineError as error:
            self.checkpoint(None, set())
            self.log(f"== destroy failed: {error}")
            raise
        self._result.seconds = time.monotonic() - started
        self.checkpoint(None, set())
        self.log(f"== destroy done in {self._result.seconds:.1f}s")
        return self._result

    # -- running the program -----------------------------------------------------------
    def _run_program(self) -> tuple[dict, set, Exception | None]:
        monitor = _Monitor(self)
        fresh_stack()
        logger = logging.getLogger(f"swarm-bed-engine-{self.stack}")
        logger.handlers = [_FileHandler(self)]
        logger.propagate = False
        pulumi.runtime.set_mocks(
            monitor.mocks, project="swarm", stack=self.stack, preview=False, monitor=monitor, logger=logger
        )
        config = {}
        for key, value in self.config.items():
            key = key if ":" in key else f"swarm:{key}"
            config[key] = value if isinstance(value, str) else json.dumps(value)
        secret = [k if ":" in k else f"swarm:{k}" for k in self.secret_keys]
        pulumi.runtime.set_all_config(config, secret)
        loop = _ensure_event_loop()
        # Registrations run on the loop's default executor: let independent ones run at once.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="engine"))
        # Dependents of a failed resource fail too; the failure itself is reported once.
        seen: set[str] = set()

        def once(_loop, context):
            message = f"{context.get('message')}: {context.get('exception')!r}"[:300]
            if message not in seen:
                seen.add(message)
                self.log(f"engine loop: {message}")

        loop.set_exception_handler(once)
        outputs: dict[str, Any] = {}
        secret_names: set[str] = set()

        def program():
            runpy.run_path(str(self.program), run_name="__main__")

        error = None
        try:
            _sync_await(run_pulumi_func(program))
            outputs, secret_names = stack_exports()
        except Exception as exc:
            error = exc
            drop_pending_outputs()
        return outputs, secret_names, error

    def _step(self, **request) -> State:
        urn = request["urn"]
        with self._lock:
            if self._failure is not None:
                raise EngineError(f"{urn}: not attempted because an earlier step failed")
        started = time.monotonic()
        try:
            state = self._apply(**request)
            with self._lock:
                self._result.timings[request["name"]] = (started - self._started, time.monotonic() - self._started)
        except Exception as error:
            with self._lock:
                if self._failure is None:
                    self._failure = error if isinstance(error, EngineError) else EngineError(f"{urn}: {error}")
            raise
        with self._lock:
            self._new[urn] = state
        return state

    def _apply(
        self,
        *,
        urn,
        type_,
        name,
        raw_inputs,
        dependencies,
        parent,
        protect,
        delete_before_replace,
        ignore_changes,
        additional_secret_outputs,
        custom,
    ) -> State:
        old = self.state.get(urn)
        if old is not None and ignore_changes:
            raw_inputs = dict(raw_inputs)
            for key in ignore_changes:
                if key in old.raw_inputs:
                    raw_inputs[key] = old.raw_inputs[key]
        secret_outputs = set(additional_secret_outputs) | {k for k, v in raw_inputs.items() if is_secret(v)}
        new = State(
            urn=urn,
            type=type_,
            name=name,
            id="",
            raw_inputs=raw_inputs,
            outputs={},
            secret_outputs=secret_outputs,
            dependencies=dependencies,
            parent=parent,
            protect=protect,
            delete_before_replace=delete_before_replace,
        )
        if old is not None and comparable(old.raw_inputs) == comparable(raw_inputs):
            new.id, new.outputs, new.host = old.id, old.outputs, old.host
            self._result.changes[urn] = "same"
            return new
        if old is None:
            op = "create"
        elif type_ in (COMMAND, LOCAL):
            op = "replace" if old.inputs.get("triggers") != new.inputs.get("triggers") else "update"
        elif type_ in (INSTANCE, COPY):
            op = "replace"
        else:
            op = "update"
        self.log(f"{op} {type_} {name}")
        if op == "replace" and delete_before_replace:
            self._delete_one(old)
        if not custom:
            new.id, new.outputs = "", {}
        elif type_ in (COMMAND, LOCAL):
            script = new.inputs.get("update") if op == "update" and new.inputs.get("update") else new.inputs["create"]
            new.id = old.id if op == "update" else f"{name}-{secrets.token_hex(4)}"
            run = self._run_command if type_ == COMMAND else self._run_local
            new.outputs = {**new.inputs, **run(new, script or "")}
        elif type_ == COPY:
            new.id = f"{name}-{secrets.token_hex(4)}"
            new.outputs = dict(new.inputs)
            self._copy(new)
        elif type_ == INSTANCE:
            new.id = f"i-{secrets.token_hex(8)}"
            new.outputs = self._create_instance(new)
        else:
            new.id = old.id if old is not None else self._id_for(type_, name)
            new.outputs = {**new.inputs, **self._computed(type_, name, new, old)}
            if type_ == "aws:s3/bucket:Bucket":
                new.id = new.outputs["bucket"]  # the provider's id of a bucket is its name
        if op == "replace" and not delete_before_replace:
            self._delete_one(old)
        self._result.changes[urn] = op
        return new

    # -- resources -----------------------------------------------------------------------
    def _id_for(self, type_: str, name: str) -> str:
        prefix = {
            "aws:ec2/vpc:Vpc": "vpc",
            "aws:ec2/subnet:Subnet": "subnet",
            "aws:ec2/securityGroup:SecurityGroup": "sg",
            "aws:ec2/internetGateway:InternetGateway": "igw",
            "aws:ec2/routeTable:RouteTable": "rtb",
            "aws:ec2/keyPair:KeyPair": "key",
        }.get(type_)
        return f"{prefix}-{secrets.token_hex(8)}" if prefix else f"{name}-{secrets.token_hex(4)}"

    def _computed(self, type_: str, name: str, new: State, old: State | None) -> dict:
        inputs = new.inputs
        previous = old.outputs if old is not None else {}
        if type_ == "aws:s3/bucket:Bucket":
            bucket = previous.get("bucket") or inputs.get("bucket") or f"{name}-{secrets.token_hex(4)[:7]}"
            if old is None:
                self.bed.s3().create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": BED_REGION})
            return {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}", "region": BED_REGION}
        if type_ == "aws:s3/bucketVersioning:BucketVersioning":
            status = (inputs.get("versioningConfiguration") or {}).get("status", "Enabled")
            self.bed.s3().put_bucket_versioning(Bucket=inputs["bucket"], VersioningConfiguration={"Status": status})
            return {}
        if type_ == "tls:index/privateKey:PrivateKey":
            if previous:
                return {k: previous[k] for k in ("privateKeyOpenssh", "privateKeyPem", "publicKeyOpenssh")}
            new.secret_outputs |= {"privateKeyOpenssh", "privateKeyPem"}
            return generate_key(inputs.get("algorithm", "ED25519"))
        if type_ == "aws:ec2/keyPair:KeyPair":
            return {
                "keyName": inputs.get("keyName") or f"{name}-{secrets.token_hex(4)}",
                "arn": f"arn:aws:ec2:::{name}",
            }
        if type_ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            iam_name = previous.get("name") or inputs.get("name") or f"{name}-{secrets.token_hex(4)[:7]}"
            return {"name": iam_name, "arn": f"arn:aws:iam::123456789012:{type_.split(':')[-1].lower()}/{iam_name}"}
        return {"arn": previous.get("arn") or f"arn:aws:bed:::{name}"}

    def _create_instance(self, new: State) -> dict:
        inputs = new.inputs
        subnet = self._find(lambda s: s.type == "aws:ec2/subnet:Subnet" and s.id == inputs.get("subnetId"))
        if subnet is None:
            raise EngineError(f"{new.name}: subnet {inputs.get('subnetId')} is not in the state")
        cidr = ipaddress.ip_network(subnet.inputs["cidrBlock"])
        with self._lock:
            ip = inputs.get("privateIp") or next(
                str(a) for a in list(cidr.hosts())[99:] if str(a) not in self._ips and str(a) != self.bed.gateway
            )
            if ip in self._ips:
                raise EngineError(f"{new.name}: {ip} is in use by another instance")
            self._ips.add(ip)
        name = (inputs.get("tags") or {}).get("Name") or new.name
        key = self._find(
            lambda s: s.type == "aws:ec2/keyPair:KeyPair" and s.outputs.get("keyName") == inputs.get("keyName")
        )
        host = self.bed.create_host(name, ip)
        new.host = name
        if key is not None:
            host.authorize(self.bed.ssh_user, key.inputs["publicKey"])
        user_data = base64.b64decode(inputs.get("userDataBase64") or "")
        if user_data[:2] == b"\x1f\x8b":
            user_data = gzip.decompress(user_data)
        if user_data:
            host.run(
                ["sh", "-c", "mkdir -p /var/lib/cloud/instance && cat >/var/lib/cloud/instance/user-data.txt"],
                input=user_data,
            )
            boot = host.start(
                ["bash", "/var/lib/cloud/instance/user-data.txt"],
                self.log_dir / f"user-data-{name}-{new.id}.log",
            )
            if self.wait_for_boot:
                boot.wait(timeout=600)
        self.log(f"instance {name} at {ip} booted; user-data runs in the background")
        public = ip if inputs.get("associatePublicIpAddress") else ""
        return {
            **inputs,
            "id": new.id,
            "privateIp": ip,
            "publicIp": public,
            "privateDns": f"ip-{ip.replace('.', '-')}.{BED_REGION}.compute.internal",
            "availabilityZone": subnet.inputs.get("availabilityZone", f"{BED_REGION}a"),
            "arn": f"arn:aws:ec2:{BED_REGION}:123456789012:instance/{new.id}",
            "instanceState": "running",
        }

    def _find(self, predicate) -> State | None:
        with self._lock:
            candidates = list(self._new.values()) + [s for u, s in self.state.items() if u not in self._new]
        return next((s for s in candidates if predicate(s)), None)

    # -- commands ------------------------------------------------------------------------
    def _run_command(self, state: State, script: str) -> dict:
        inputs = state.inputs
        conn = inputs["connection"]
        started = time.monotonic()
        code, stdout, stderr = ssh_run(conn, script, inputs.get("stdin"), self.log, state.name)
        return self._finish(state, script, code, stdout, stderr, time.monotonic() - started)

    def _run_local(self, state: State, script: str) -> dict:
        """local.Command: the interpreter (default /bin/sh -c) here, in `dir`, with `environment`."""
        inputs = state.inputs
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [*(inputs.get("interpreter") or ["/bin/sh", "-c"]), script],
                cwd=inputs.get("dir") or None,
                env={**os.environ, **(inputs.get("environment") or {})},
                input=inputs.get("stdin"),
                capture_output=True,
                text=True,
                timeout=LOCAL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise EngineError(f"{state.urn}: still running after {LOCAL_TIMEOUT}s: {script!r}") from error
        return self._finish(state, script, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)

    def _finish(self, state: State, script: str, code: int, stdout: str, stderr: str, seconds: float) -> dict:
        inputs = state.inputs
        logging_mode = inputs.get("logging") or "stdoutAndStderr"
        self.log(f"{state.name}: exit {code} after {seconds:.1f}s")
        if logging_mode in ("stdout", "stdoutAndStderr"):
            for line in stdout.splitlines():
                self.log(f"{state.name} | {line}")
        if logging_mode in ("stderr", "stdoutAndStderr"):
            for line in stderr.splitlines():
                self.log(f"{state.name} ! {line}")
        if code != 0:
            # pulumi-command's error carries the command string and both streams.
            message = f"{state.urn}: Process exited with status {code}: running {script!r}:\n{stdout}\n{stderr}"
            raise EngineError(message)
        return {"stdout": stdout.removesuffix("\n"), "stderr": stderr.removesuffix("\n")}

    def _copy(self, state: State) -> None:
        inputs = state.inputs
        source = inputs["source"]
        path = getattr(source, "path", None) or (source.get("path") if isinstance(source, dict) else None)
        if not path or not Path(path).is_file():
            raise EngineError(f"{state.name}: the bed copies file assets only (source {source!r})")
        client = ssh_connect(inputs["connection"], self.log, state.name)
        try:
            with client.open_sftp() as sftp:
                sftp.put(path, inputs["remotePath"])
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(client)
            client.close()
        self.log(f"{state.name}: copied {path} to {inputs['remotePath']}")

    # -- deleting ------------------------------------------------------------------------
    def _protected_closure(self) -> set[str]:
        """Protected resources and everything they depend on stay (as --exclude-protected)."""
        keep = {urn for urn, s in self.state.items() if s.protect}
        todo = list(keep)
        while todo:
            s = self.state.get(todo.pop())
            if s is None:
                continue
            for dep in [*s.dependencies, s.parent]:
                if dep in self.state and dep not in keep:
                    keep.add(dep)
                    todo.append(dep)
        return keep

    def _delete(self, urns: list[str], op: str) -> None:
        """Delete in waves: a resource goes once nothing left depends on it (or is its child)."""
        remaining = set(urns)
        while remaining:
            wave = [
                urn
                for urn in remaining
                if not any(
                    urn in self.state[other].dependencies or self.state[other].parent == urn
                    for other in remaining
                    if other != urn
                )
            ]
            if not wave:
                raise EngineError(f"dependency cycle among {sorted(remaining)}")
            with ThreadPoolExecutor(max_workers=16) as pool:
                results = list(pool.map(self._try_delete, [self.state[u] for u in wave]))
            for urn, error in zip(wave, results, strict=True):
                if error is None:  # recorded as gone even if a sibling failed, as the backend does
                    del self.state[urn]
                    self._result.changes[urn] = op
                    remaining.discard(urn)
            failures = [error for error in results if error is not None]
            if failures:
                raise EngineError("\n".join(failures))

    def _try_delete(self, state: State) -> str | None:
        try:
            self._delete_one(state)
        except Exception as error:
            return f"{state.urn}: {error}"
        return None

    def _delete_one(self, state: State) -> None:
        if state.type in (COMMAND, LOCAL) and state.inputs.get("delete"):
            self.log(f"delete hook of {state.name}")
            run = self._run_command if state.type == COMMAND else self._run_local
            run(state, state.inputs["delete"])
        elif state.type == INSTANCE and state.host:
            self.log(f"terminate {state.host}")
            if state.host in self.bed.hosts:
                self.bed.wipe_host(state.host)
            with self._lock:
                self._ips.discard(state.outputs.get("privateIp"))
        elif state.type == "aws:s3/bucket:Bucket":
            raise EngineError(f"{state.name}: deleting the bucket is not something the bed's engine does")

    # -- records -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        with self._lock, open(self.log_path, "a") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def checkpoint(self, outputs: dict | None, secret_names: set[str]) -> None:
        """The state as a backend would store it: secret-marked values encrypted."""
        document = {
            "stack": self.stack,
            "resources": [
                {
                    "urn": s.urn,
                    "type": s.type,
                    "id": s.id,
                    "protect": s.protect,
                    "inputs": redact(s.raw_inputs),
                    "outputs": redact(s.raw_outputs()),
                    "dependencies": s.dependencies,
                    "parent": s.parent,
                }
                for s in self.state.values()
            ],
        }
        if outputs is not None:
            document["outputs"] = {k: redact(as_secret(v)) if k in secret_names else v for k, v in outputs.items()}
        self.state_path.write_text(json.dumps(document, indent=1, default=str))

    def host_of(self, suffix: str):
        """The bed host of the instance whose name ends with `suffix` (e.g. 'manager-0')."""
        for s in self.state.values():
            if s.type == INSTANCE and s.host and s.host.endswith(suffix):
                return self.bed.hosts[s.host]
        raise BedError(f"no instance ending {suffix!r} in the state")


class _FileHandler(logging.Handler):
    def __init__(self, engine: Engine):
        super().__init__()
        self.engine = engine

    def emit(self, record):
        self.engine.log(f"{record.levelname.lower()}: {record.getMessage()}")


def generate_key(algorithm: str) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if algorithm != "ED25519":
        raise EngineError(f"the bed generates ED25519 keys only (asked for {algorithm})")
    key = ed25519.Ed25519PrivateKey.generate()
    return {
        "privateKeyOpenssh": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode(),
        "privateKeyPem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "publicKeyOpenssh": key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        + "\n",
    }


def _load_key(text: str):
    import paramiko

    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        with contextlib.suppress(paramiko.SSHException, ValueError):
            return kind.from_private_key(io.StringIO(text))
    raise EngineError("the connection's privateKey is not a key paramiko can read")


def ssh_connect(conn: dict, log, name: str):
    """Dial as pulumi-command does: dialErrorLimit retries (so limit + 1 attempts), each
    bounded by perDialTimeout, waiting 100 ms * 1.5^n (at most 5 s) between them."""
    import paramiko

    limit = int(conn.get("dialErrorLimit", 10))
    per_dial = float(conn.get("perDialTimeout", 15)) or None
    key = _load_key(conn["privateKey"])
    attempt, delay, deadline = 0, 0.1, time.monotonic() + MAX_DIAL_SECONDS
    while True:
        if _ABORT.is_set():
            raise EngineError(f"{name}: the run was interrupted")
        attempt += 1
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - no hostKey given
        try:
            client.connect(
                conn["host"],
                port=int(conn.get("port", 22)),
                username=conn.get("user", "root"),
                pkey=key,
                timeout=per_dial,
                banner_timeout=per_dial,
                auth_timeout=per_dial,
                look_for_keys=False,
                allow_agent=False,
            )
            with _LIVE_LOCK:
                _LIVE.add(client)
            return client
        except (OSError, paramiko.SSHException) as error:
            client.close()
            if (limit >= 0 and attempt > limit) or time.monotonic() > deadline:
                raise EngineError(
                    f"{name}: unable to connect to {conn['host']}:{conn.get('port', 22)} "
                    f"after {attempt} attempts (dialErrorLimit {limit}): {error}"
                ) from None
            if attempt in (1, 5) or attempt % 10 == 0:
                log(f"{name}: dial {attempt} to {conn['host']} failed ({error}); retrying")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)


def ssh_run(conn: dict, script: str, stdin: str | None, log, name: str) -> tuple[int, str, str]:
    client = ssh_connect(conn, log, name)
    try:
        channel = client.get_transport().open_session()
        channel.settimeout(MAX_COMMAND_SECONDS)
        channel.exec_command(script)
        if stdin:
            channel.sendall(stdin.encode())
        channel.shutdown_write()
        chunks: dict[str, list[bytes]] = {"out": [], "err": []}

        def pump(read, key):
            while True:
                data = read(65536)
                if not data:
                    return
                chunks[key].append(data)

        err_thread = threading.Thread(target=pump, args=(channel.recv_stderr, "err"), daemon=True)
        err_thread.start()
        pump(channel.recv, "out")
        err_thread.join(timeout=MAX_COMMAND_SECONDS)
        code = channel.recv_exit_status()
        return code, b"".join(chunks["out"]).decode(errors="replace"), b"".join(chunks["err"]).decode(errors="replace")
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(client)
        client.close()


def scan_for(needles: list[str], paths: list[Path]) -> list[str]:
    """Where any of `needles` occurs in these files (names only, never the needle)."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace")
            for index, needle in enumerate(needles):
                if needle and needle in text:
                    found.append(f"{path.name} holds secret #{index}")
    return found


def files_under(*directories: Path) -> list[Path]:
    return [p for d in directories if d.exists() for p in d.rglob("*") if p.is_file()]
