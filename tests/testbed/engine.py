"""An engine that runs the real `__main__.py` against the bed, as `pulumi up` would on AWS.

The program runs under Pulumi's mocks (`set_mocks`, config from `set_all_config`), but the
mock monitor *executes* each resource it is asked for (`resources.py`): an EC2 instance
becomes a bed host that boots and hands cloud-init its user-data, the bucket is made in
moto, a `remote.Command` runs over SSH with its real stdout, and so on.

It follows the Pulumi engine's rules (pulumi/pulumi `pkg/resource/deploy/`):

- `up()` previews first (`step_generator.go` with `preview`): the program runs, nothing
  executes, and a resource to be created, replaced or updated hands the program unknowns
  for what its provider computes (`providers.py`). A preview that fails runs nothing.
- Which change replaces is the provider's answer (`providers.py`); `ignore_changes` keeps
  the old value of a property for that diff, but a replacement is created from the
  program's values (`continueStepsFromDiff` re-runs Check with the goal's properties).
- A replacement is create-before-delete: the old resource's delete waits until every
  create and update of the update is done (`deployment_executor.go`, `performPostSteps`),
  with the deletes of resources dropped from the program, in reverse dependency order,
  wave by wave (`ScheduleDeletes`).
- `deleteBeforeReplace` deletes first, in the resource's own step chain, after deleting
  the dependents whose inputs depend on it and whose providers would replace them with
  those inputs unknown (`calculateDependentReplacements`); those are created again when
  the program registers them.
- A protected resource is never deleted: replacing it fails the update ("unable to
  replace resource ... marked for protection"), dropping it fails it too, already in
  the preview ("cannot be deleted because it is protected"; `step.go` checks protection
  before it checks for a dry run), and `destroy()` is `--exclude-protected`
  (the protected resources and everything they depend on stay).
- `up(replace=[urn])` is `--replace`: a replacement whatever the diff.
- A resource with `retainOnDelete` is only forgotten when it is deleted or replaced: its
  provider is not called (`step.go`, `DeleteStep.Apply`).

Across runs the engine keeps a state, as a backend does, including the old resources
whose deletes are still due. Secret values are kept out of the recorded state
(`state.json` holds a placeholder wherever the program marked a value secret) and the
log holds what pulumi-command would print.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import runpy
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import empty_pb2
from pulumi.output import Unknown
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from testbed import providers
from testbed.bed import BED_REGION, Bed, BedError
from testbed.providers import INSTANCE
from testbed.records import (
    EngineError,
    Result,
    State,
    Step,
    as_secret,
    comparable,
    files_under,
    is_secret,
    plain,
    redact,
    scan_for,
    to_wire,
)
from testbed.resources import Resources
from testbed.sdk import drop_pending_outputs, fresh_stack, one_run_per_process, stack_exports
from testbed.ssh import abort_all, generate_key

__all__ = ["Engine", "EngineError", "Result", "abort_all", "files_under", "generate_key", "scan_for"]

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "__main__.py"


@dataclass
class _Goal:
    """One registration: what the program asks for."""

    urn: str
    type: str
    name: str
    raw_inputs: dict
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    parent: str
    protect: bool
    delete_before_replace: bool
    retain_on_delete: bool
    ignore_changes: list[str]
    additional_secret_outputs: list[str]
    custom: bool


class _Mocks(pulumi.runtime.Mocks):
    """Invokes: what AWS would answer for this program's lookups."""

    def __init__(self, bed: Bed):
        self.bed = bed

    def new_resource(self, args):  # pragma: no cover - the monitor executes instead
        raise NotImplementedError

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:ssm/getParameter:getParameter":
            # SSM's newest AMI; a test makes a newer one appear (the bed boots its image anyway).
            return {"name": args.args["name"], "value": self.bed.newest_ami, "type": "String"}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            zones = [f"{BED_REGION}{z}" for z in "abc"]
            return {"names": zones, "zoneIds": [f"bed-az{i}" for i in range(3)]}
        if args.token == "aws:ec2/getEips:getEips":  # the bed's region, every stack's addresses
            found = self.bed.addresses.describe(args.args.get("tags") or {}, args.args.get("filters") or [])
            return {"allocationIds": [e.allocation_id for e in found], "publicIps": [e.public_ip for e in found]}
        if args.token == "aws:iam/getRoles:getRoles":  # the account's roles, every stack's
            pattern = re.compile(args.args.get("nameRegex") or ".*")
            names = sorted(n for n in self.bed.iam_roles if pattern.search(n))
            return {"names": names, "arns": [f"arn:aws:iam::123456789012:role/{n}" for n in names]}
        if args.token == "aws:ebs/getEbsVolumes:getEbsVolumes":  # every stack's volumes on the bed
            return {"ids": [v.volume_id for v in self.bed.volumes.describe(args.args.get("tags") or {})]}
        if args.token == "aws:ebs/getVolume:getVolume":
            volume = self.bed.volumes.volumes[args.args["filters"][0]["values"][0]]
            return {
                **{"id": volume.volume_id, "volumeId": volume.volume_id, "availabilityZone": volume.zone},
                **{"size": volume.size_gib, "volumeType": volume.volume_type, "tags": volume.tags, "encrypted": True},
            }
        if args.token == "aws:cloudwatch/getLogGroup:getLogGroup":  # moto's groups, as the provider answers
            name = args.args["name"]
            groups = self.bed.logs().describe_log_groups(logGroupNamePrefix=name)["logGroups"]
            found = next((g for g in groups if g["logGroupName"] == name), None)
            if found is None:
                return {}, [("name", f"reading CloudWatch Logs Log Group ({name}): couldn't find resource")]
            return {"id": name, "name": name, "arn": found["arn"].removesuffix(":*")}
        if args.token == "aws:efs/getFileSystem:getFileSystem":
            # No EFS on the bed (its kernel has no NFS client): none is ever found, as the provider says it.
            return {}, [("tags", "no matching EFS File System found")]
        if args.token == "aws:servicequotas/getServiceQuota:getServiceQuota":
            quota = float(self.bed.addresses.quota)
            return {"quotaCode": args.args.get("quotaCode"), "serviceCode": "ec2", "value": quota}
        raise NotImplementedError(f"the bed's engine has no answer for the invoke {args.token}")


class _Monitor(MockMonitor):
    def __init__(self, engine: Engine):
        super().__init__(_Mocks(engine.bed))
        self.engine = engine

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        _ensure_event_loop()
        goal = _Goal(
            urn=urn,
            type=request.type,
            name=request.name,
            raw_inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
            dependencies=list(request.dependencies),
            property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
            parent=request.parent,
            protect=bool(request.protect),
            delete_before_replace=bool(request.deleteBeforeReplace),
            retain_on_delete=bool(request.retainOnDelete),
            ignore_changes=list(request.ignoreChanges),
            additional_secret_outputs=list(request.additionalSecretOutputs),
            custom=bool(request.custom),
        )
        resource_id, outputs = self.engine._register(goal)
        obj = _sync_await(rpc.serialize_properties(to_wire(outputs), {}))
        return resource_pb2.RegisterResourceResponse(urn=urn, id=resource_id, object=obj)

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
        image: str | None = None,
    ):
        """`parallelism` 1 executes one resource at a time (the benchmarks' baseline);
        `wait_for_boot` makes an instance done only once cloud-init has run its
        user-data, so that "every host ready" is a moment in the timings; `image` is the
        bed image its instances boot (the bed's default otherwise)."""
        self.bed = bed
        self.parallelism = parallelism
        self.wait_for_boot = wait_for_boot
        self.image = image
        self.program = program
        self.stack = stack
        self.config = dict(config)
        self.secret_keys = secret_keys
        self.log_dir = log_dir or (bed.root / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"engine-{stack}.log"
        self.state_path = self.log_dir / f"state-{stack}.json"
        self.state: dict[str, State] = {}
        self.pending_deletes: list[State] = []  # replaced resources whose delete is still due
        self._lock = threading.Lock()
        self.resources = Resources(
            bed, self.log, self._find, image=image, wait_for_boot=wait_for_boot, log_dir=self.log_dir,
            project_dir=program.resolve().parent,
        )  # fmt: skip
        self._begin(preview=False, replace=())

    def _begin(self, *, preview: bool, replace) -> None:
        self._preview = preview
        self._replace = set(replace)
        self._new: dict[str, State] = {}
        self._recreate: set[str] = set()  # deleted for a delete-before-replace this run
        self._result = Result()
        self._failure: Exception | None = None
        self._started = self._result.began = time.monotonic()

    # -- the two verbs ---------------------------------------------------------------
    def up(self, replace: list[str] | tuple[str, ...] = ()) -> Result:
        """`pulumi up --yes [--replace URN ...]`: a preview, then the update. Raises
        EngineError naming the resource that failed (nothing runs if the preview fails)."""
        started = time.monotonic()
        unknown = [urn for urn in replace if urn not in self.state]
        if unknown:
            raise EngineError(f"--replace: no resource {unknown[0]} in the stack")
        self.log(f"== preview {self.stack}" + (f" (replace {', '.join(replace)})" if replace else ""))
        self._begin(preview=True, replace=replace)
        _, _, error = self._run_program()
        failure = self._failure or error
        if failure is None:
            failure = self._condemn(execute=False)
        plan = dict(self._result.changes)
        if failure is not None:
            self.log(f"== preview failed: {failure}")
            raise EngineError(f"preview failed: {failure}") from failure
        counts = collections.Counter(op for op in plan.values() if op != "same")
        self.log(f"== preview done: {dict(sorted(counts.items()))}")

        self.log(f"== up {self.stack}")
        self._begin(preview=False, replace=replace)
        self._result.preview = plan
        outputs, secret_names, error = self._run_program()
        failure = self._failure or error
        # As the backend does: what was done is recorded even when the update fails.
        before = dict(self.state)
        self.state.update(self._new)
        if failure is None:
            dropped = [s for urn, s in before.items() if urn not in self._new]
            failure = self._condemn(execute=True, dropped=dropped)
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
        self._begin(preview=False, replace=())
        self.log(f"== destroy {self.stack}")
        keep = self._protected_closure()
        doomed = [s for urn, s in self.state.items() if urn not in keep] + self.pending_deletes
        failure = self._delete_in_waves(doomed)
        self._result.seconds = time.monotonic() - self._started
        self.checkpoint(None, set())
        if failure is not None:
            self.log(f"== destroy failed: {failure}")
            raise failure
        self.log(f"== destroy done in {self._result.seconds:.1f}s")
        return self._result

    def unprotect(self, urn: str) -> None:
        """`pulumi state unprotect URN`: the state's flag only (the next `up` sets it again
        from the program)."""
        if urn not in self.state:
            raise EngineError(f"state unprotect: no resource {urn} in the stack")
        self.state[urn].protect = False
        self.log(f"== state unprotect {urn}")
        self.checkpoint(None, set())

    def release(self, urn: str) -> Result:
        """`pulumi state unprotect URN` then `pulumi destroy --target URN` (what
        `scripts/swarm release-addresses` runs): that one resource deleted by its provider
        and forgotten; refused, as Pulumi refuses without --target-dependents, while
        anything in the state still depends on it."""
        self._begin(preview=False, replace=())
        state = self.state.get(urn)
        if state is None:
            raise EngineError(f"--target: no resource {urn} in the stack")
        dependents = sorted(s.urn for s in self.state.values() if urn in s.depends_on())
        if dependents:
            raise EngineError(f"{urn} has dependents, which --target would leave without it: {dependents}")
        self.unprotect(urn)
        self.log(f"== destroy --target {urn}")
        failure = self._delete_in_waves([state])
        self.checkpoint(None, set())
        if failure is not None:
            raise failure
        return self._result

    def urn(self, suffix: str) -> str:
        """The URN of the one resource whose name ends with `suffix` (for `up(replace=...)`)."""
        found = [urn for urn, s in self.state.items() if s.name.endswith(suffix)]
        if len(found) != 1:
            raise EngineError(f"{len(found)} resources end with {suffix!r}: {found}")
        return found[0]

    # -- running the program -----------------------------------------------------------
    def _run_program(self) -> tuple[dict, set, Exception | None]:
        monitor = _Monitor(self)
        fresh_stack()
        logger = logging.getLogger(f"swarm-bed-engine-{self.stack}")
        logger.handlers = [_FileHandler(self)]
        logger.propagate = False
        pulumi.runtime.set_mocks(
            monitor.mocks, project="swarm", stack=self.stack, preview=self._preview, monitor=monitor, logger=logger
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
        # The program's modules stay until every registration has resolved: the SDK reads a
        # resource class's annotations (get_type_hints, through sys.modules) when its
        # outputs come back, which is after the program itself has returned.
        with program_modules(self.program), one_run_per_process():
            try:
                _sync_await(run_pulumi_func(program))
                outputs, secret_names = stack_exports()
            except Exception as exc:
                error = exc
                drop_pending_outputs()
        return outputs, secret_names, error

    def _register(self, goal: _Goal) -> tuple[str, dict]:
        """One registration: diff, then (outside a preview) the steps it needs."""
        with self._lock:
            if self._failure is not None:
                raise EngineError(f"{goal.urn}: not attempted because an earlier step failed")
        started = time.monotonic()
        try:
            state = self._step(goal)
        except Exception as error:
            with self._lock:
                if self._failure is None:
                    self._failure = error if isinstance(error, EngineError) else EngineError(f"{goal.urn}: {error}")
            raise
        with self._lock:
            self._result.timings[goal.name] = (started - self._started, time.monotonic() - self._started)
            if not self._preview:
                self._new[goal.urn] = state
        if self._preview:
            return state.id, state.outputs
        return state.id, state.raw_outputs()

    def _diff(self, goal: _Goal, old: State | None) -> tuple[str, dict]:
        """create | same | update | replace | recreate, and the inputs the new state gets."""
        raw = goal.raw_inputs
        if old is None:
            return "create", raw
        if old.pending_replacement or goal.urn in self._recreate:
            return "recreate", raw
        processed = dict(raw)
        for key in goal.ignore_changes:
            top = key.split(".")[0].split("[")[0]
            if top in old.raw_inputs:
                processed[top] = old.raw_inputs[top]
            else:
                processed.pop(top, None)
        if goal.urn in self._replace:
            return "replace", raw
        changed = providers.changed_keys(comparable(old.raw_inputs), comparable(processed))
        if not changed:
            return "same", processed
        if changed & providers.replace_keys(goal.type, plain(processed)):
            return "replace", raw  # ignore_changes does not hold across a replacement
        return "update", processed

    def _step(self, goal: _Goal) -> State:
        old = self.state.get(goal.urn)
        op, raw = self._diff(goal, old)
        if op == "replace" and old.protect and goal.protect:
            raise EngineError(
                f"unable to replace resource {goal.urn!r}\nas it is currently marked for protection. "
                "To unprotect the resource, remove the `protect` flag from the resource in your Pulumi "
                "program and run `pulumi up`"
            )
        secret_outputs = set(goal.additional_secret_outputs) | {k for k, v in raw.items() if is_secret(v)}
        new = State(
            urn=goal.urn,
            type=goal.type,
            name=goal.name,
            id="",
            raw_inputs=raw,
            outputs={},
            secret_outputs=secret_outputs,
            dependencies=goal.dependencies,
            parent=goal.parent,
            protect=goal.protect,
            delete_before_replace=goal.delete_before_replace,
            retain_on_delete=goal.retain_on_delete,
            custom=goal.custom,
            property_dependencies=goal.property_dependencies,
            ignore_changes=goal.ignore_changes,
        )
        recorded = "replace" if op == "recreate" else op
        with self._lock:
            self._result.changes[goal.urn] = recorded
        if op == "same":
            new.id, new.outputs, new.host = old.id, old.outputs, old.host
            if self._preview:
                new.outputs = old.raw_outputs()
            return new
        dbr = op == "replace" and goal.delete_before_replace
        if dbr:
            self._delete_before_replace(old)
        if self._preview:
            return self._preview_outputs(new, old, op)
        self.log(f"{recorded} {goal.type} {goal.name}" + (" (delete before replace)" if dbr else ""))
        started = time.monotonic() - self._started
        if not goal.custom:
            new.id, new.outputs = "", {}
        elif op == "update":
            self.resources.update(old, new)
        else:
            self.resources.create(new)
        self._record_step(recorded, new, started)
        if op == "replace" and not dbr:
            with self._lock:
                self.pending_deletes.append(old)  # deleted at the end of the update
        return new

    def _preview_outputs(self, new: State, old: State | None, op: str) -> State:
        """What a provider answers in a preview: inputs, and unknowns for what it computes."""
        outputs = dict(new.raw_inputs)
        inputs = plain(new.raw_inputs)
        for key in providers.computed_keys(new.type, inputs):
            recomputed = providers.recomputed_keys(new.type)
            if op == "update" and key not in recomputed and old is not None and key in old.outputs:
                outputs[key] = old.outputs[key]
            else:
                outputs[key] = Unknown()
        new.id = old.id if op == "update" else ""
        new.outputs = outputs
        return new

    # -- delete before replace -----------------------------------------------------------
    def _delete_before_replace(self, old: State) -> None:
        """Delete the dependents that must be replaced with `old`, then `old` itself."""
        dependents = self._dependent_replacements(old)
        for dependent in reversed(dependents):
            with self._lock:
                self._recreate.add(dependent.urn)
                self._result.changes.setdefault(dependent.urn, "replace")
            if not self._preview and not dependent.pending_replacement:
                self._delete_step(dependent, "delete-replaced")
                dependent.pending_replacement = True
        if not self._preview and not old.pending_replacement:
            self._delete_step(old, "delete-replaced")
            old.pending_replacement = True

    def _dependent_replacements(self, old: State) -> list[State]:
        """calculateDependentReplacements: transitive dependents whose inputs depend on a
        resource being replaced and whose provider would replace them with those unknown."""
        replacing = {old.urn}
        chosen: list[State] = []
        with self._lock:
            handled = set(self._new)
        dependents = {s.urn for s in self._dependents_of({old.urn})}
        for state in self._in_dependency_order():  # a dependency's verdict comes first
            if state.urn not in dependents or state.urn in handled or not state.custom:
                continue
            keys = {k for k, urns in state.property_dependencies.items() if set(urns) & replacing}
            keys -= {k.split(".")[0] for k in state.ignore_changes}
            if keys & providers.replace_keys(state.type, state.inputs):
                replacing.add(state.urn)
                chosen.append(state)
        return chosen

    def _dependents_of(self, urns: set[str]) -> list[State]:
        """Every resource that depends on any of `urns`, directly or not."""
        found, todo = set(), set(urns)
        while todo:
            current = todo.pop()
            for state in self.state.values():
                if state.urn not in found and current in state.depends_on():
                    found.add(state.urn)
                    todo.add(state.urn)
        return [self.state[u] for u in found]

    def _in_dependency_order(self) -> list[State]:
        ordered, seen = [], set()

        def visit(state: State) -> None:
            if state.urn in seen:
                return
            seen.add(state.urn)
            for dep in sorted(state.depends_on()):
                if dep in self.state:
                    visit(self.state[dep])
            ordered.append(state)

        for state in list(self.state.values()):
            visit(state)
        return ordered

    # -- deletes at the end --------------------------------------------------------------
    def _condemn(self, *, execute: bool, dropped: list[State] | None = None) -> Exception | None:
        """The deletes an update ends with: replaced resources and those the program dropped."""
        if dropped is None:  # the preview: what would go
            registered = set(self._result.changes)
            dropped = [s for urn, s in self.state.items() if urn not in registered]
        protected = [s for s in dropped if s.protect and not s.pending_replacement]
        doomed = [s for s in dropped if not s.protect and not s.pending_replacement]
        gone_already = [s for s in dropped if s.pending_replacement]  # removed without a provider call
        if not execute:
            for state in doomed:
                self._result.changes[state.urn] = "delete"
            return _protected_error(protected) if protected else None
        for state in gone_already:
            self.state.pop(state.urn, None)
        keep = self._closure(protected)
        # What a protected resource depends on stays with it.
        failure = self._delete_in_waves([*self.pending_deletes, *(s for s in doomed if s.urn not in keep)])
        if failure is None and protected:
            failure = _protected_error(protected)
        return failure

    def _delete_in_waves(self, doomed: list[State]) -> EngineError | None:
        """ScheduleDeletes: waves of resources nothing else doomed depends on... reversed:
        the resources that depend on nothing doomed go last; each wave runs in parallel."""
        remaining = list(doomed)
        waves: list[list[State]] = []
        while remaining:
            urns = {id(s): s.urn for s in remaining}
            wave = [s for s in remaining if not (s.depends_on() & (set(urns.values()) - {s.urn}))]
            if not wave:
                return EngineError(f"dependency cycle among {sorted(urns.values())}")
            waves.append(wave)
            remaining = [s for s in remaining if all(s is not w for w in wave)]
        for wave in reversed(waves):
            with ThreadPoolExecutor(max_workers=16) as pool:
                errors = list(pool.map(self._try_delete, wave))
            failures = [e for e in errors if e is not None]
            if failures:
                return EngineError("\n".join(failures))
        return None

    def _try_delete(self, state: State) -> str | None:
        is_pending = any(state is p for p in self.pending_deletes)
        try:
            self._delete_step(state, "delete-replaced" if is_pending else "delete")
        except Exception as error:
            return f"{state.urn}: {error}"
        with self._lock:
            if is_pending:
                self.pending_deletes = [p for p in self.pending_deletes if p is not state]
            else:
                self.state.pop(state.urn, None)
                self._result.changes[state.urn] = "delete"
        return None

    def _delete_step(self, state: State, op: str) -> None:
        started = time.monotonic() - self._started
        # Deleted already by a delete-before-replace whose update failed: the backend only
        # forgets it (RemovePendingReplaceStep), the provider is not called again.
        if state.retain_on_delete:
            self.log(f"{op} {state.type} {state.name}: retained (retainOnDelete), only forgotten")
        elif not state.pending_replacement:
            self.resources.delete(state)
        self._record_step(op, state, started)

    def _record_step(self, op: str, state: State, started: float) -> None:
        with self._lock:
            self._result.steps.append(Step(op, state.urn, state.name, started, time.monotonic() - self._started))

    def _protected_closure(self) -> set[str]:
        """Protected resources and everything they depend on stay (as --exclude-protected)."""
        return self._closure([s for s in self.state.values() if s.protect])

    def _closure(self, states: list[State]) -> set[str]:
        keep = {s.urn for s in states}
        todo = list(keep)
        while todo:
            s = self.state.get(todo.pop())
            if s is None:
                continue
            for dep in s.depends_on():
                if dep in self.state and dep not in keep:
                    keep.add(dep)
                    todo.append(dep)
        return keep

    def _find(self, predicate) -> State | None:
        """A resource of this update, or else of the state (an instance's subnet, key pair)."""
        with self._lock:
            candidates = list(self._new.values()) + [s for u, s in self.state.items() if u not in self._new]
        return next((s for s in candidates if predicate(s)), None)

    # -- records -------------------------------------------------------------------------
    def log(self, message: str) -> None:
        with self._lock, open(self.log_path, "a") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def checkpoint(self, outputs: dict | None, secret_names: set[str]) -> None:
        """The state as a backend would store it: secret-marked values encrypted."""

        def record(s: State, pending_delete: bool) -> dict:
            return {
                "urn": s.urn,
                "type": s.type,
                "id": s.id,
                "protect": s.protect,
                "delete": pending_delete,
                "pendingReplacement": s.pending_replacement,
                "retainOnDelete": s.retain_on_delete,
                "inputs": redact(s.raw_inputs),
                "outputs": redact(s.raw_outputs()),
                "dependencies": s.dependencies,
                "parent": s.parent,
            }

        document = {
            "stack": self.stack,
            "resources": [record(s, False) for s in self.state.values()]
            + [record(s, True) for s in self.pending_deletes],
        }
        if outputs is not None:
            document["outputs"] = {k: redact(as_secret(v)) if k in secret_names else v for k, v in outputs.items()}
        self.state_path.write_text(json.dumps(document, indent=1, default=str))

    def host_of(self, suffix: str):
        """The bed host of the instance whose name ends with `suffix` (e.g. 'manager-0')."""
        for s in self.state.values():
            if s.type == INSTANCE and s.host in self.bed.hosts and self.bed.hosts[s.host].name.endswith(suffix):
                return self.bed.hosts[s.host]
        raise BedError(f"no instance ending {suffix!r} in the state")

    def hosts(self) -> list:
        """The bed hosts of every instance in the state (replaced ones awaiting deletion too)."""
        return [
            self.bed.hosts[s.host] for s in [*self.state.values(), *self.pending_deletes] if s.host in self.bed.hosts
        ]


def _protected_error(states: list[State]) -> EngineError:
    return EngineError(
        "\n".join(
            f"resource {s.urn!r} cannot be deleted\nbecause it is protected. To unprotect the resource, "
            "either remove the `protect` flag from the resource in your Pulumi program and run `pulumi up`, "
            f"or use the command:\n`pulumi state unprotect '{s.urn}'`"
            for s in states
        )
    )


class _FileHandler(logging.Handler):
    def __init__(self, engine: Engine):
        super().__init__()
        self.engine = engine

    def emit(self, record):
        self.engine.log(f"{record.levelname.lower()}: {record.getMessage()}")


# The program's own top-level packages: another checkout's (an older release) must not
# find this one's already imported.
PROGRAM_PACKAGES = ("components", "agent")


@contextmanager
def program_modules(program: Path):
    """Run a program from another checkout (a git worktree of an earlier commit) with its
    own `components` and `agent` packages; this checkout's come back afterwards."""
    root = program.resolve().parent
    if root == ROOT:
        yield
        return

    def ours(name: str) -> bool:
        return name.split(".")[0] in PROGRAM_PACKAGES

    stashed = {name: sys.modules.pop(name) for name in list(sys.modules) if ours(name)}
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(stashed)


def scenario_engine(bed: Bed, log_dir: Path, stack: str, nodes: tuple[int, int], part: tuple[int, int], **config):
    """An engine for a scenario module's own stack: `nodes` is (managers, workers), `part`
    (third octet, prefix length) the piece of the bed's /16 its VPC takes. A generator for
    a module fixture (`yield from`): its machines are wiped at the end, whatever happened."""
    octet, prefixlen = part
    vpc = next(n for n in bed.network.subnets(new_prefix=prefixlen) if n.network_address == bed.network[octet * 256])
    engine = Engine(bed, {**bed.program_config(*nodes, str(vpc)), **config}, stack=stack, log_dir=log_dir)
    try:
        yield engine
    finally:
        for host in engine.hosts():
            bed.wipe_host(host.key)
