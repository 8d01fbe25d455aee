"""Amazon EC2 Auto Scaling on the bed: groups that launch, replace and drain their machines.

A group (`create_group`, from the inputs pulumi-aws sends for `aws.autoscaling.Group`)
keeps its desired capacity of instances from a launch template (`LaunchTemplates`, the
versions EC2 keeps of `aws.ec2.LaunchTemplate`), spread over its subnets' zones, each
instance spot or on-demand as its instances distribution says. The machines themselves
are a `Launcher`'s business (the bed's resources boot a host, a unit test fakes it); the
model decides, as AWS does, which instance goes and when:

- scale-in (`set_desired`, SetDesiredCapacity, an update of the group) picks the
  instance AWS's default termination policy would and terminates it through the
  termination lifecycle hook: `Terminating:Wait` until CompleteLifecycleAction or the
  hook's heartbeat timeout (RecordLifecycleActionHeartbeat restarts it, up to the global
  timeout: 100 heartbeats or 48 h), then `Terminating:Proceed`, the machine gone, then
  `Terminated`, listed for a short while (`linger`) and then no more;
- a spot interruption (`reclaim`) gives two minutes' notice, runs the hook, and the
  machine goes when the action completes or the notice runs out, whichever is first;
- a rebalance recommendation (`rebalance`), with capacity rebalance on, launches a
  replacement first and drains the instance at risk once the replacement is InService;
- a machine that dies (`kill`) is replaced; a force delete (`delete_group`) terminates
  everything at once with no hook, as AWS's `ForceDelete` does.

`serve()` puts the API the nodes call on the bridge (the query protocol: form-encoded
POSTs, XML answers): DescribeAutoScalingGroups, DescribeLifecycleHooks,
CompleteLifecycleAction, RecordLifecycleActionHeartbeat, SetDesiredCapacity.

Left out: scaling policies, cooldowns, launch lifecycle hooks (Pending:Wait), warm pools,
instance refresh, scale-in protection (every instance is unprotected), Standby, health
check grace periods, the billing-hour and random tie-breaks of the termination policy
(the oldest instance goes instead), the allocation strategies' choice of instance type
(on-demand takes the first override, spot the least used), paging of Describe answers,
and the retries of a failing launch (three in a row and the group stops launching, so
that a broken template fails a test at once rather than at its timeout).
"""

from __future__ import annotations

import collections
import datetime
import json
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from xml.sax.saxutils import escape

from testbed.host import BedError

ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-west-1"  # the bed's (bed.BED_REGION)
NAMESPACE = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
PENDING, IN_SERVICE = "Pending", "InService"
WAITING, PROCEEDING, TERMINATED = "Terminating:Wait", "Terminating:Proceed", "Terminated"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
SPOT_NOTICE = 120.0  # EC2's two-minute warning before it reclaims a spot instance
GLOBAL_TIMEOUT = 172800  # a lifecycle action lasts at most 100 heartbeats or 48 hours
LINGER = 30.0  # how long a Terminated instance stays in DescribeAutoScalingGroups
LAUNCH_FAILURES = 3  # in a row; then the group stops launching (see the module's docstring)
JOIN_TIMEOUT = 120.0  # close(): the longest a launch or a termination may still take


class AutoScalingError(BedError):
    """What the Auto Scaling API answers to a call it refuses (code and message as AWS's)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Hook:
    name: str
    transition: str
    heartbeat_timeout: int = 3600  # AWS's default
    default_result: str = "ABANDON"  # AWS's default


@dataclass
class Instance:
    """One instance of a group, as the model tracks it (times are time.monotonic())."""

    instance_id: str
    group: str
    zone: str
    subnet_id: str
    instance_type: str
    spot: bool
    template_id: str
    template_version: int
    tags: dict[str, str] = field(default_factory=dict)  # the group's tags propagated at launch
    launched_at: float = field(default_factory=time.time)
    state: str = PENDING
    health: str = "Healthy"
    ip: str = ""  # set by the launcher
    host: str = ""  # the bed host's key, set by the launcher
    reason: str = ""  # why it is terminating: scale-in | reclaim | rebalance | kill | delete
    hook: str = ""  # the hook holding it in Terminating:Wait
    result: str = ""  # CONTINUE | ABANDON, and " (timeout)" when the hook's default decided
    heartbeat_deadline: float = 0.0
    global_deadline: float = 0.0
    reclaim_deadline: float | None = None  # a spot interruption's end
    spot_action: dict | None = None  # IMDS spot/instance-action
    rebalance_notice: dict | None = None  # IMDS events/recommendations/rebalance
    replaces: str = ""  # the at-risk instance this one was launched to replace
    at_risk: bool = False
    claimed: bool = False  # someone is terminating its machine (only one may)
    doomed: bool = False  # terminate as soon as its launch is done (force delete, close)
    ended_at: float | None = None

    @property
    def lifecycle(self) -> str:
        return "spot" if self.spot else "on-demand"


@dataclass
class GroupSpec:
    """What a group is made of, from pulumi-aws's inputs (camelCase, as the engine gets them)."""

    name: str
    min_size: int
    max_size: int
    desired: int | None
    subnets: list[tuple[str, str]]  # (subnet id, zone), in the program's order
    template_id: str
    template_version: str  # "1", "$Latest" or "$Default"
    instance_types: list[str] = field(default_factory=list)
    on_demand_base: int = 0
    on_demand_percentage: int = 100
    spot_strategy: str = "lowest-price"
    capacity_rebalance: bool = False
    hooks: list[Hook] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)  # {key, value, propagateAtLaunch}

    @classmethod
    def from_inputs(cls, inputs: dict, zone_of: Callable[[str], str]) -> GroupSpec:
        policy = inputs.get("mixedInstancesPolicy") or {}
        distribution = policy.get("instancesDistribution") or {}
        template = policy.get("launchTemplate") or {}
        specification = template.get("launchTemplateSpecification") or inputs.get("launchTemplate") or {}
        hooks = [
            Hook(
                h["name"],
                h["lifecycleTransition"],
                int(h.get("heartbeatTimeout") or 3600),
                h.get("defaultResult") or "ABANDON",
            )
            for h in inputs.get("initialLifecycleHooks") or []
        ]
        desired = inputs.get("desiredCapacity")
        return cls(
            name=inputs.get("name") or f"{inputs.get('namePrefix') or 'tf-asg-'}{secrets.token_hex(8)}",
            min_size=int(inputs.get("minSize") or 0),
            max_size=int(inputs.get("maxSize") or 0),
            desired=None if desired is None else int(desired),
            subnets=[(s, zone_of(s)) for s in inputs.get("vpcZoneIdentifiers") or []],
            template_id=specification.get("launchTemplateId") or specification.get("id") or "",
            template_version=str(specification.get("version") or "$Default"),
            instance_types=[o["instanceType"] for o in template.get("overrides") or [] if o.get("instanceType")],
            on_demand_base=int(distribution.get("onDemandBaseCapacity") or 0),
            on_demand_percentage=_int(distribution.get("onDemandPercentageAboveBaseCapacity"), 100),
            spot_strategy=distribution.get("spotAllocationStrategy") or "lowest-price",
            capacity_rebalance=bool(inputs.get("capacityRebalance")),
            hooks=hooks,
            tags=[dict(t) for t in inputs.get("tags") or []],
        )


def _int(value: Any, default: int) -> int:
    return default if value is None else int(value)


def on_demand_wanted(spec: GroupSpec, capacity: int) -> int:
    """How many of `capacity` instances the distribution wants on-demand: the base first,
    then the percentage of the rest, rounded up (AWS rounds in on-demand's favour)."""
    base = min(capacity, spec.on_demand_base)
    return base + ((capacity - base) * spec.on_demand_percentage + 99) // 100


class Launcher(Protocol):
    """The machines behind a group: the bed's resources, or a unit test's fake."""

    def launch(self, instance: Instance) -> None:
        """Boot the machine (blocking; set `instance.ip` and `instance.host`); raise if it fails."""

    def terminate(self, instance: Instance) -> None:
        """The machine is gone: wiped, its address free, its metadata forgotten."""


@dataclass
class Group:
    spec: GroupSpec
    launcher: Launcher
    desired: int
    created_at: float = field(default_factory=time.time)
    arn: str = ""
    instances: dict[str, Instance] = field(default_factory=dict)
    launch_failures: int = 0
    last_failure: str = ""
    deleting: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


class LaunchTemplates:
    """EC2's launch templates and their versions: each update is a new version; an
    instance is launched from the version its group names at that moment."""

    # Changes that make no new version (the resource's own tags; the default's pointer).
    UNVERSIONED = {"tags", "tagsAll", "defaultVersion", "updateDefaultVersion", "description"}

    def __init__(self):
        self._versions: dict[str, list[dict]] = {}
        self._default: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, template_id: str, inputs: dict) -> tuple[int, int]:
        """CreateLaunchTemplate, or CreateLaunchTemplateVersion when the content changed:
        (latest version, default version)."""
        with self._lock:
            versions = self._versions.setdefault(template_id, [])
            content = {k: v for k, v in inputs.items() if k not in self.UNVERSIONED}
            if not versions or content != {k: v for k, v in versions[-1].items() if k not in self.UNVERSIONED}:
                versions.append(dict(inputs))
            latest = len(versions)
            if inputs.get("updateDefaultVersion"):
                self._default[template_id] = latest
            elif inputs.get("defaultVersion"):
                self._default[template_id] = int(inputs["defaultVersion"])
            else:
                self._default.setdefault(template_id, 1)
            return latest, self._default[template_id]

    def resolve(self, template_id: str, version: str) -> tuple[int, dict]:
        with self._lock:
            versions = self._versions.get(template_id)
            if not versions:
                raise AutoScalingError(
                    "ValidationError", f"The specified launch template, {template_id}, does not exist"
                )
            number = {"$Latest": len(versions), "$Default": self._default.get(template_id, 1)}.get(version)
            number = number or int(version)
            if not 1 <= number <= len(versions):
                raise AutoScalingError("ValidationError", f"launch template {template_id} has no version {version}")
            return number, dict(versions[number - 1])

    def delete(self, template_id: str) -> None:
        with self._lock:
            self._versions.pop(template_id, None)
            self._default.pop(template_id, None)


class AutoScaling:
    """The bed's Auto Scaling service: its groups, what it does to them, and its API."""

    def __init__(self, log: Callable[[str], None] | None = None, *, linger: float = LINGER):
        self.log = log or (lambda message: None)
        self.linger = linger
        self.groups: dict[str, Group] = {}
        self.templates = LaunchTemplates()
        self.requests: collections.Counter[str] = collections.Counter()  # API calls, by action
        self.server: ThreadingHTTPServer | None = None
        # One lock for everything, and a condition every change notifies (waits wake at once).
        self._cv = threading.Condition(threading.RLock())
        self._threads: list[threading.Thread] = []
        self._closing = False

    # -- the provider's calls (the engine's resources) ---------------------------------
    def create_group(self, spec: GroupSpec, launcher: Launcher) -> Group:
        """CreateAutoScalingGroup: the hooks first, then the desired capacity is launched."""
        with self._cv:
            if spec.name in self.groups:
                raise AutoScalingError("AlreadyExists", f"AutoScalingGroup by this name already exists - {spec.name}")
            self._check_sizes(spec.min_size, spec.max_size, spec.desired)
            if not spec.subnets:
                raise AutoScalingError("ValidationError", "At least one Availability Zone or VPC Subnet is required.")
            arn = f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:{uuid.uuid4()}"
            arn += f":autoScalingGroupName/{spec.name}"
            desired = spec.min_size if spec.desired is None else spec.desired
            group = Group(spec, launcher, desired, arn=arn)
            self.groups[spec.name] = group
            self.log(f"autoscaling: group {spec.name} created (desired {desired})")
            self._reconcile(group)
            return group

    def update_group(self, spec: GroupSpec) -> None:
        """UpdateAutoScalingGroup: sizes, subnets, template and distribution apply to what
        launches next; a lower desired capacity scales in through the hook. (Lifecycle
        hooks given at creation stay: pulumi-aws applies them only then.)"""
        with self._cv:
            group = self._group(spec.name)
            self._check_sizes(spec.min_size, spec.max_size, spec.desired)
            hooks = group.spec.hooks
            group.spec = spec
            group.spec.hooks = hooks
            desired = group.desired if spec.desired is None else spec.desired
            group.desired = max(spec.min_size, min(spec.max_size, desired))
            group.launch_failures = 0
            self._reconcile(group)
            self._cv.notify_all()

    def delete_group(self, name: str, timeout: float = 300) -> None:
        """DeleteAutoScalingGroup with ForceDelete: every instance terminated at once, in
        parallel, without lifecycle hooks; returns once all are gone."""
        with self._cv:
            group = self._group(name)
            group.deleting = True
            now_doomed = self._doom(group, "delete")
            self._cv.notify_all()
        self._terminate_all(group, now_doomed)
        self.wait_for(lambda: all(i.state == TERMINATED for i in group.instances.values()), timeout, f"{name} deleted")
        with self._cv:
            self.groups.pop(name, None)
            self._cv.notify_all()
        self.log(f"autoscaling: group {name} deleted (force)")

    def wait_for_capacity(self, name: str, timeout: float = 600) -> None:
        """What pulumi-aws waits for after a create or an update: as many InService instances
        as the desired capacity; a group that gave up launching fails it at once."""

        def satisfied() -> bool:
            group = self._group(name)
            if group.launch_failures >= LAUNCH_FAILURES:
                raise AutoScalingError("ScalingActivityFailed", f"{name}: {group.last_failure}")
            return sum(i.state == IN_SERVICE for i in group.instances.values()) >= group.desired

        self.wait_for(satisfied, timeout, f"{name} to reach its capacity")

    # -- what AWS does, when a test says so ----------------------------------------------
    def set_desired(self, name: str, desired: int) -> None:
        """SetDesiredCapacity: launch the difference, or pick instances and drain them."""
        with self._cv:
            group = self._group(name)
            if desired > group.spec.max_size:
                raise AutoScalingError(
                    "ValidationError",
                    f"New SetDesiredCapacity value {desired} is above max value {group.spec.max_size} "
                    "for the AutoScalingGroup.",
                )
            if desired < group.spec.min_size:
                raise AutoScalingError(
                    "ValidationError",
                    f"New SetDesiredCapacity value {desired} is below min value {group.spec.min_size} "
                    "for the AutoScalingGroup.",
                )
            group.desired = desired
            self.log(f"autoscaling: {name} desired capacity {desired}")
            self._reconcile(group)
            self._cv.notify_all()

    def complete_lifecycle_action(self, name: str, hook: str, instance_id: str, result: str) -> None:
        """CompleteLifecycleAction: the instance proceeds (CONTINUE and ABANDON alike end
        a termination: ABANDON only skips the other hooks, and there is one)."""
        if result not in ("CONTINUE", "ABANDON"):
            raise AutoScalingError("ValidationError", f"Invalid LifecycleActionResult: {result}")
        with self._cv:
            instance = self._waiting(name, hook, instance_id)
            instance.result = result
            instance.state = PROCEEDING
            self.log(f"autoscaling: {instance_id} lifecycle action {hook} completed: {result}")
            self._cv.notify_all()

    def record_heartbeat(self, name: str, hook: str, instance_id: str) -> None:
        """RecordLifecycleActionHeartbeat: the heartbeat timeout starts again (never past
        the global timeout, nor past a spot interruption's end)."""
        with self._cv:
            instance = self._waiting(name, hook, instance_id)
            timeout = self._hook(self._group(name), hook).heartbeat_timeout
            instance.heartbeat_deadline = time.monotonic() + timeout
            self._cv.notify_all()

    def reclaim(self, instance_id: str, notice: float = SPOT_NOTICE) -> None:
        """A spot interruption. EC2 warns `notice` seconds ahead (two minutes on AWS; a test
        may shorten it): IMDS spot/instance-action answers from now on, the termination
        hook runs, and the machine goes when the action completes or the notice runs out,
        whichever comes first. The group launches a replacement at once."""
        with self._cv:
            group, instance = self._find(instance_id)
            if not instance.spot:
                raise AutoScalingError("ValidationError", f"{instance_id} is on-demand: EC2 reclaims only spot")
            if instance.state not in (IN_SERVICE, WAITING):
                raise AutoScalingError("ValidationError", f"{instance_id} is {instance.state}, not running")
            end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=notice)
            instance.spot_action = {"action": "terminate", "time": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
            instance.reclaim_deadline = time.monotonic() + notice
            self.log(f"autoscaling: spot interruption of {instance_id} in {notice:.0f}s")
            if instance.state == IN_SERVICE:
                self._begin_termination(group, instance, "reclaim")
            self._reconcile(group)
            self._cv.notify_all()

    def rebalance(self, instance_id: str) -> None:
        """A rebalance recommendation: IMDS events/recommendations/rebalance answers; with
        capacity rebalance on, a replacement launches and, once it is InService, the
        instance at risk is drained through the hook."""
        with self._cv:
            group, instance = self._find(instance_id)
            if not instance.spot:
                raise AutoScalingError(
                    "ValidationError", f"{instance_id} is on-demand: only spot gets rebalance notices"
                )
            now = datetime.datetime.now(datetime.UTC)
            instance.rebalance_notice = {"noticeTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
            self.log(f"autoscaling: rebalance recommendation for {instance_id}")
            if group.spec.capacity_rebalance and instance.state == IN_SERVICE and not instance.at_risk:
                instance.at_risk = True
                self._launch(group, spot=True, replaces=instance_id)
            self._cv.notify_all()

    def kill(self, instance_id: str) -> None:
        """The machine dies without notice: gone at once, no hook; the group finds it
        unhealthy and launches a replacement. (AWS also runs termination hooks when it
        replaces an unhealthy instance; this models a machine already past caring.)"""
        with self._cv:
            group, instance = self._find(instance_id)
            if instance.state == PENDING or instance.claimed or instance.state == TERMINATED:
                raise AutoScalingError("ValidationError", f"{instance_id} is {instance.state}: nothing to kill")
            instance.claimed = True
            instance.health, instance.state, instance.reason = "Unhealthy", PROCEEDING, "kill"
            self._cv.notify_all()
        self.log(f"autoscaling: {instance_id} died")
        self._terminate(group, instance)

    # -- looking -------------------------------------------------------------------------
    def describe(self, name: str) -> dict:
        """DescribeAutoScalingGroups' member for the group, with what tests want besides:
        each instance's `Lifecycle` (spot | on-demand), `PrivateIpAddress`, `LaunchTime`."""
        with self._cv:
            return self._describe(self._group(name), extra=True)

    def instance(self, instance_id: str) -> Instance:
        with self._cv:
            return self._find(instance_id)[1]

    def in_service(self, name: str) -> list[Instance]:
        with self._cv:
            return [i for i in self._group(name).instances.values() if i.state == IN_SERVICE]

    def metadata(self, instance_id: str) -> dict[str, str]:
        """What IMDS answers under /latest/meta-data/ that changes with the group's doings."""
        with self._cv:
            found = self._lookup(instance_id)
            if found is None:
                return {}
            instance = found[1]
            target = IN_SERVICE if instance.state in (PENDING, IN_SERVICE) else TERMINATED
            answers = {"autoscaling/target-lifecycle-state": target, "instance-life-cycle": instance.lifecycle}
            if instance.spot_action:
                answers["spot/instance-action"] = _json(instance.spot_action)
            if instance.rebalance_notice:
                answers["events/recommendations/rebalance"] = _json(instance.rebalance_notice)
            return answers

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str = "the condition") -> Any:
        """Until `predicate()` is truthy (checked at every change, and twice a second);
        BedError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BedError(f"timed out after {timeout:.0f}s waiting for {what}")
                self._cv.wait(min(remaining, 0.5))

    def close(self) -> None:
        """Stop the API and every thread; terminate what the groups launched and still run."""
        self.stop_serving()
        with self._cv:
            self._closing = True
            doomed = [(g, i) for g in self.groups.values() for i in self._doom(g, "close")]
            self._cv.notify_all()
        for group in {id(g): g for g, _ in doomed}.values():
            self._terminate_all(group, [i for g, i in doomed if g is group])
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in self._threads if t.is_alive()]
        if left:
            raise BedError(f"autoscaling: still running after {JOIN_TIMEOUT:.0f}s: {', '.join(left)}")

    # -- inside the lock -------------------------------------------------------------------
    def _group(self, name: str) -> Group:
        group = self.groups.get(name)
        if group is None or group.deleting:
            raise AutoScalingError(
                "ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup '{name}' not found"
            )
        return group

    def _lookup(self, instance_id: str) -> tuple[Group, Instance] | None:
        for group in self.groups.values():
            if instance_id in group.instances:
                return group, group.instances[instance_id]
        return None

    def _find(self, instance_id: str) -> tuple[Group, Instance]:
        found = self._lookup(instance_id)
        if found is None:
            raise AutoScalingError(
                "ValidationError", f"Instance Id not found - No managed instance found for instance ID: {instance_id}"
            )
        return found

    def _hook(self, group: Group, name: str) -> Hook:
        hook = next((h for h in group.spec.hooks if h.name == name), None)
        if hook is None:
            raise AutoScalingError(
                "ValidationError", f"No Lifecycle Hook found with name {name} for group {group.name}"
            )
        return hook

    def _waiting(self, name: str, hook: str, instance_id: str) -> Instance:
        group = self._group(name)
        self._hook(group, hook)
        instance = group.instances.get(instance_id)
        if instance is None or instance.state != WAITING or instance.hook != hook:
            raise AutoScalingError(
                "ValidationError", f"No active Lifecycle Action found with instance ID {instance_id}"
            )
        return instance

    @staticmethod
    def _check_sizes(min_size: int, max_size: int, desired: int | None) -> None:
        if min_size > max_size:
            raise AutoScalingError(
                "ValidationError", f"Max bound, {max_size}, must be greater than or equal to min bound, {min_size}"
            )
        if desired is not None and not min_size <= desired <= max_size:
            raise AutoScalingError(
                "ValidationError",
                f"Desired capacity:{desired} must be between the specified min size:{min_size} and max size:{max_size}",
            )

    def _counted(self, group: Group) -> list[Instance]:
        """The instances that make up the capacity: Pending and InService, but not one at
        risk whose replacement is on its way (the replacement counts instead)."""
        live = [i for i in group.instances.values() if i.state in (PENDING, IN_SERVICE) and not i.doomed]
        replaced = {i.replaces for i in live if i.replaces}
        return [i for i in live if i.instance_id not in replaced]

    def _reconcile(self, group: Group) -> None:
        """Launch or drain until the capacity is the desired one."""
        if group.deleting or self._closing:
            return
        counted = self._counted(group)
        missing = group.desired - len(counted)
        for _ in range(max(missing, 0)):
            if group.launch_failures >= LAUNCH_FAILURES:
                self.log(f"autoscaling: {group.name} stops launching after {LAUNCH_FAILURES} failures")
                break
            try:
                self._launch(group)
            except AutoScalingError as error:  # its template is gone: as a failed launch
                group.launch_failures += 1
                group.last_failure = str(error)
                self.log(f"autoscaling: {group.name} cannot launch: {error}")
        for _ in range(max(-missing, 0)):
            victim = self._victim(group, self._counted(group))
            if victim.state == PENDING:
                victim.doomed = True  # its launch ends in a termination
                victim.reason = "scale-in"
            else:
                self._begin_termination(group, victim, "scale-in")

    def _launch(self, group: Group, *, spot: bool | None = None, replaces: str = "") -> Instance:
        counted = self._counted(group)
        per_zone = collections.Counter(i.zone for i in counted)
        subnet_id, zone = min(group.spec.subnets, key=lambda s: per_zone[s[1]])  # ties: the first listed
        if spot is None:
            on_demand = sum(not i.spot for i in counted)
            spot = on_demand >= on_demand_wanted(group.spec, len(counted) + 1)
        version, _ = self.templates.resolve(group.spec.template_id, group.spec.template_version)
        instance = Instance(
            instance_id=f"i-{secrets.token_hex(8)}0",
            group=group.name,
            zone=zone,
            subnet_id=subnet_id,
            instance_type=self._instance_type(group, spot),
            spot=spot,
            template_id=group.spec.template_id,
            template_version=version,
            tags={t["key"]: t.get("value", "") for t in group.spec.tags if t.get("propagateAtLaunch")},
            replaces=replaces,
        )
        group.instances[instance.instance_id] = instance
        self.log(f"autoscaling: {group.name} launches {instance.instance_id} ({instance.lifecycle}, {zone})")
        self._spawn(self._run_launch, group, instance, name=f"asg-launch-{instance.instance_id}")
        return instance

    def _instance_type(self, group: Group, spot: bool) -> str:
        types = group.spec.instance_types or ["t3.small"]
        if not spot:
            return types[0]  # the prioritized strategy: the first override
        used = collections.Counter(i.instance_type for i in self._counted(group) if i.spot)
        return min(types, key=lambda t: used[t])

    def _victim(self, group: Group, candidates: list[Instance]) -> Instance:
        """AWS's default termination policy: the zone with the most instances; there, the
        purchase option whose removal keeps the distribution; the oldest template version;
        the oldest instance. (InService before Pending: a launch under way goes last.)"""
        per_zone = collections.Counter(i.zone for i in candidates)
        zones = [z for _, z in group.spec.subnets]
        zone = max(zones, key=lambda z: per_zone[z])  # ties: the first listed
        in_zone = [i for i in candidates if i.zone == zone] or candidates
        on_demand = sum(not i.spot for i in candidates)
        drop_spot = on_demand <= on_demand_wanted(group.spec, len(candidates) - 1)
        pool = [i for i in in_zone if i.spot == drop_spot] or in_zone
        return min(pool, key=lambda i: (i.state != IN_SERVICE, i.template_version, i.launched_at))

    def _begin_termination(self, group: Group, instance: Instance, reason: str) -> None:
        hook = next((h for h in group.spec.hooks if h.transition == TERMINATING), None)
        instance.reason = reason
        if hook is None:
            instance.state = PROCEEDING
        else:
            now = time.monotonic()
            instance.state, instance.hook = WAITING, hook.name
            instance.heartbeat_deadline = now + hook.heartbeat_timeout
            instance.global_deadline = now + min(100 * hook.heartbeat_timeout, GLOBAL_TIMEOUT)
        self.log(f"autoscaling: {instance.instance_id} {instance.state} ({reason})")
        self._spawn(self._run_termination, group, instance, name=f"asg-terminate-{instance.instance_id}")

    def _doom(self, group: Group, reason: str) -> list[Instance]:
        """Claim every instance that has a machine; mark those still launching."""
        claimed = []
        for instance in group.instances.values():
            if instance.state == PENDING:
                instance.doomed, instance.reason = True, reason
            elif instance.state != TERMINATED and not instance.claimed:
                instance.claimed, instance.state = True, PROCEEDING
                instance.reason = instance.reason or reason
                claimed.append(instance)
        return claimed

    def _spawn(self, target, *args, name: str) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- in the background ---------------------------------------------------------------
    def _run_launch(self, group: Group, instance: Instance) -> None:
        try:
            group.launcher.launch(instance)
            failure = ""
        except Exception as error:
            failure = f"{type(error).__name__}: {error}"
        with self._cv:
            if failure:
                instance.state, instance.ended_at = TERMINATED, time.monotonic()
                group.launch_failures += 1
                group.last_failure = f"launching {instance.instance_id} failed: {failure}"
                self.log(f"autoscaling: {group.last_failure}")
                self._reconcile(group)
                self._cv.notify_all()
                return
            group.launch_failures = 0
            if not (instance.doomed or group.deleting or self._closing):
                instance.state = IN_SERVICE
                self.log(f"autoscaling: {instance.instance_id} InService at {instance.ip}")
                self._after_in_service(group, instance)
                self._cv.notify_all()
                return
            instance.claimed, instance.state = True, PROCEEDING
        self._terminate(group, instance)

    def _after_in_service(self, group: Group, instance: Instance) -> None:
        at_risk = group.instances.get(instance.replaces)
        if at_risk is not None and at_risk.state == IN_SERVICE:
            self._begin_termination(group, at_risk, "rebalance")
        self._reconcile(group)

    def _run_termination(self, group: Group, instance: Instance) -> None:
        with self._cv:
            while instance.state == WAITING and not (group.deleting or self._closing):
                deadline = min(instance.heartbeat_deadline, instance.global_deadline)
                if instance.reclaim_deadline is not None:
                    deadline = min(deadline, instance.reclaim_deadline)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._time_out(group, instance)
                    break
                self._cv.wait(remaining)
            if instance.claimed or instance.state != PROCEEDING:
                return  # a force delete, close() or kill() has it
            instance.claimed = True
            self._cv.notify_all()
        self._terminate(group, instance)

    def _time_out(self, group: Group, instance: Instance) -> None:
        reclaimed = instance.reclaim_deadline is not None and instance.reclaim_deadline <= time.monotonic()
        if reclaimed:
            instance.result = "reclaimed"  # EC2 takes the machine back, whatever the hook
        else:
            instance.result = f"{self._hook(group, instance.hook).default_result} (timeout)"
        instance.state = PROCEEDING
        self.log(f"autoscaling: {instance.instance_id} lifecycle action ended: {instance.result}")

    def _terminate(self, group: Group, instance: Instance) -> None:
        """The machine goes (the caller has claimed it); then the group looks at its capacity."""
        try:
            if instance.host or instance.ip:
                group.launcher.terminate(instance)
        except Exception as error:
            self.log(f"autoscaling: terminating {instance.instance_id} failed: {type(error).__name__}: {error}")
        with self._cv:
            instance.state, instance.ended_at = TERMINATED, time.monotonic()
            self.log(f"autoscaling: {instance.instance_id} Terminated ({instance.reason})")
            self._reconcile(group)
            self._cv.notify_all()

    def _terminate_all(self, group: Group, instances: list[Instance]) -> None:
        if instances:
            with ThreadPoolExecutor(max_workers=len(instances), thread_name_prefix="asg-delete") as pool:
                list(pool.map(lambda i: self._terminate(group, i), instances))

    # -- the API -----------------------------------------------------------------------
    def _describe(self, group: Group, extra: bool = False) -> dict:
        now = time.monotonic()
        for instance_id in [i for i, x in group.instances.items() if x.ended_at and now - x.ended_at > self.linger]:
            del group.instances[instance_id]
        spec = group.spec
        instances = []
        for i in group.instances.values():
            member = {
                "InstanceId": i.instance_id,
                "InstanceType": i.instance_type,
                "AvailabilityZone": i.zone,
                "LifecycleState": i.state,
                "HealthStatus": i.health,
                "LaunchTemplate": {"LaunchTemplateId": i.template_id, "Version": str(i.template_version)},
                "ProtectedFromScaleIn": False,
            }
            if extra:
                member |= {"Lifecycle": i.lifecycle, "PrivateIpAddress": i.ip, "LaunchTime": i.launched_at}
            instances.append(member)
        return {
            "AutoScalingGroupName": group.name,
            "AutoScalingGroupARN": group.arn,
            "MinSize": spec.min_size,
            "MaxSize": spec.max_size,
            "DesiredCapacity": group.desired,
            "DefaultCooldown": 300,
            "AvailabilityZones": sorted({z for _, z in spec.subnets}),
            "HealthCheckType": "EC2",
            "HealthCheckGracePeriod": 300,
            "CreatedTime": _iso(group.created_at),
            "VPCZoneIdentifier": ",".join(s for s, _ in spec.subnets),
            "CapacityRebalance": spec.capacity_rebalance,
            "MixedInstancesPolicy": {
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateId": spec.template_id,
                        "Version": spec.template_version,
                    },
                    "Overrides": [{"InstanceType": t} for t in spec.instance_types],
                },
                "InstancesDistribution": {
                    "OnDemandAllocationStrategy": "prioritized",
                    "OnDemandBaseCapacity": spec.on_demand_base,
                    "OnDemandPercentageAboveBaseCapacity": spec.on_demand_percentage,
                    "SpotAllocationStrategy": spec.spot_strategy,
                },
            },
            "Instances": instances,
            "Tags": [
                {
                    "ResourceId": group.name,
                    "ResourceType": "auto-scaling-group",
                    "Key": t["key"],
                    "Value": t.get("value", ""),
                    "PropagateAtLaunch": bool(t.get("propagateAtLaunch")),
                }
                for t in spec.tags
            ],
        }

    def serve(self, address: str, port: int) -> str:
        """Start the API on `address:port` (0: any free port); its endpoint URL."""
        self.server = _serve(self, address, port)
        return f"http://{address}:{self.server.server_address[1]}"

    def stop_serving(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def call(self, action: str, params: dict[str, str]) -> dict:
        """One API call, from its form parameters: the result's content (AutoScalingError if refused)."""
        with self._cv:
            self.requests[action] += 1
        handler = {
            "DescribeAutoScalingGroups": self._api_describe_groups,
            "DescribeLifecycleHooks": self._api_describe_hooks,
            "CompleteLifecycleAction": self._api_complete,
            "RecordLifecycleActionHeartbeat": self._api_heartbeat,
            "SetDesiredCapacity": self._api_set_desired,
        }.get(action)
        if handler is None:
            raise AutoScalingError("InvalidAction", f"The action {action} is not valid for this web service.")
        return handler(params)

    def _api_describe_groups(self, params: dict[str, str]) -> dict:
        names = _members(params, "AutoScalingGroupNames")
        filters = []
        for n in range(1, 50):
            key = params.get(f"Filters.member.{n}.Name")
            if key is None:
                break
            filters.append((key, _members(params, f"Filters.member.{n}.Values")))
        with self._cv:
            chosen = [
                g
                for g in self.groups.values()
                if not g.deleting and (not names or g.name in names) and _filters_match(g, filters)
            ]
            return {"AutoScalingGroups": [self._describe(g) for g in chosen]}

    def _api_describe_hooks(self, params: dict[str, str]) -> dict:
        names = _members(params, "LifecycleHookNames")
        with self._cv:
            group = self._group(params.get("AutoScalingGroupName", ""))
            hooks = [h for h in group.spec.hooks if not names or h.name in names]
            return {
                "LifecycleHooks": [
                    {
                        "LifecycleHookName": h.name,
                        "AutoScalingGroupName": group.name,
                        "LifecycleTransition": h.transition,
                        "HeartbeatTimeout": h.heartbeat_timeout,
                        "GlobalTimeout": min(100 * h.heartbeat_timeout, GLOBAL_TIMEOUT),
                        "DefaultResult": h.default_result,
                    }
                    for h in hooks
                ]
            }

    def _api_complete(self, params: dict[str, str]) -> dict:
        self.complete_lifecycle_action(
            params.get("AutoScalingGroupName", ""),
            params.get("LifecycleHookName", ""),
            params.get("InstanceId", ""),
            params.get("LifecycleActionResult", ""),
        )
        return {}

    def _api_heartbeat(self, params: dict[str, str]) -> dict:
        self.record_heartbeat(
            params.get("AutoScalingGroupName", ""), params.get("LifecycleHookName", ""), params.get("InstanceId", "")
        )
        return {}

    def _api_set_desired(self, params: dict[str, str]) -> dict:
        try:
            desired = int(params.get("DesiredCapacity", ""))
        except ValueError:
            raise AutoScalingError("ValidationError", "DesiredCapacity must be an integer") from None
        self.set_desired(params.get("AutoScalingGroupName", ""), desired)
        return {}


def _members(params: dict[str, str], prefix: str) -> list[str]:
    """A query-protocol list: `Prefix.member.1`, `Prefix.member.2`, ..."""
    found = []
    for n in range(1, 1000):
        value = params.get(f"{prefix}.member.{n}")
        if value is None:
            break
        found.append(value)
    return found


def _filters_match(group: Group, filters: list[tuple[str, list[str]]]) -> bool:
    """DescribeAutoScalingGroups' filters: every filter holds, any of its values."""
    tags = {t["key"]: t.get("value", "") for t in group.spec.tags}
    for name, values in filters:
        if name.startswith("tag:"):
            ok = tags.get(name[4:]) in values
        elif name == "tag-key":
            ok = any(k in values for k in tags)
        elif name == "tag-value":
            ok = any(v in values for v in tags.values())
        else:
            raise AutoScalingError("ValidationError", f"Filter name {name} is not supported")
        if not ok:
            return False
    return True


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(document: dict) -> str:
    return json.dumps(document)


def _xml(value: Any) -> str:
    """A query-protocol answer's body: dicts as elements, lists as `member`s."""
    if isinstance(value, dict):
        return "".join(f"<{k}>{_xml(v)}</{k}>" for k, v in value.items())
    if isinstance(value, list):
        return "".join(f"<member>{_xml(v)}</member>" for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def _serve(model: AutoScaling, address: str, port: int) -> ThreadingHTTPServer:
    """The Auto Scaling API as the AWS CLI speaks it (query protocol; SigV4 not checked)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            params = {k: v[0] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
            action = params.get("Action", "")
            request_id = str(uuid.uuid4())
            try:
                result = model.call(action, params)
            except AutoScalingError as error:
                document = (
                    f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>Sender</Type><Code>{escape(error.code)}</Code>'
                    f"<Message>{escape(error.message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
                )
                return self._send(400, document)
            document = (
                f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{_xml(result)}</{action}Result>'
                f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>"
            )
            return self._send(200, document)

        def _send(self, code: int, document: str) -> None:
            data = document.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bed-autoscaling-api", daemon=True).start()
    return server
