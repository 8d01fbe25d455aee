"""What each resource does on the bed when the engine creates, updates or deletes it.

The providers' side of a step: an EC2 instance becomes a bed host (`create_host`, with
its user-data and meta-data in cloud-init's NoCloud seed), and is stopped and started
for the updates EC2 makes that way; the bucket and its versioning are made in moto; a
`remote.Command` runs over SSH and a `local.Command` here, as pulumi-command runs them
(`update` if set, else `create`; `delete` when deleted); `CopyToRemote` copies over SFTP.
An Auto Scaling group is handed to the bed's Auto Scaling (`autoscaling.py`), with this
object as its launcher: each instance it launches boots exactly as an EC2 instance does,
from its launch template's version (kept there too); an SSM parameter and an S3 object
are put into moto, and so are the log group, the alarms' topic, its subscriptions and the
metric alarms (CloudWatch Logs, SNS and CloudWatch; the bed's `alarms.py` evaluates the
alarms). Anything else echoes its inputs with the ids and computed fields AWS would add.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import os
import secrets
import string
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from testbed import providers
from testbed.addresses import AddressError
from testbed.autoscaling import GroupSpec, Instance
from testbed.bed import BED_REGION, Bed, BedError
from testbed.host import Host
from testbed.providers import (
    BUCKET,
    COMMAND,
    COPY,
    GROUP,
    INSTANCE,
    LAUNCH_TEMPLATE,
    LOCAL,
    LOG_GROUP,
    METRIC_ALARM,
    OBJECT,
    PARAMETER,
    SUBSCRIPTION,
    TOPIC,
)
from testbed.records import EngineError, State, comparable
from testbed.ssh import SSHError, generate_key, sftp_put, ssh_run
from testbed.volumes import VolumeError

ACCESS_KEY = "aws:iam/accessKey:AccessKey"
EIP = "aws:ec2/eip:Eip"
EIP_ASSOCIATION = "aws:ec2/eipAssociation:EipAssociation"
VOLUME = "aws:ebs/volume:Volume"
VOLUME_ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
DLM_POLICY = "aws:dlm/lifecyclePolicy:LifecyclePolicy"
LOCAL_TIMEOUT = 900
ACCOUNT = "123456789012"
GROUP_TIMEOUT = 600  # pulumi-aws's default wait_for_capacity_timeout, 10 minutes


class Resources:
    """Creates, updates and deletes resources of one stack on one bed."""

    def __init__(
        self,
        bed: Bed,
        log: Callable[[str], None],
        find: Callable[[Callable[[State], bool]], State | None],
        *,
        image: str | None,
        wait_for_boot: bool,
        log_dir: Path,
        project_dir: Path,
    ):
        self.bed, self.log, self.find = bed, log, find
        self.project_dir = project_dir  # where Pulumi starts providers: a local command's default cwd
        self.image, self.wait_for_boot, self.log_dir = image, wait_for_boot, log_dir
        self._ips: set[str] = set()  # the addresses this stack's instances hold
        self._lock = threading.Lock()
        # Types with a put (create or update: old is None on create) and a delete.
        self._kinds: dict[str, tuple[Callable, Callable]] = {
            LAUNCH_TEMPLATE: (self._put_template, self._delete_template),
            GROUP: (self._put_group, self._delete_group),
            PARAMETER: (self._put_parameter, self._delete_parameter),
            OBJECT: (self._put_object, self._delete_object),
            LOG_GROUP: (self._put_log_group, self._delete_log_group),
            TOPIC: (self._put_topic, self._delete_topic),
            SUBSCRIPTION: (self._put_subscription, self._delete_subscription),
            METRIC_ALARM: (self._put_alarm, self._delete_alarm),
        }

    def create(self, new: State) -> None:
        type_ = new.type
        if type_ in self._kinds:
            new.outputs = self._kinds[type_][0](new, None)
        elif type_ in (COMMAND, LOCAL):
            new.id = f"{new.name}-{secrets.token_hex(4)}"
            # pulumi-command: no `create`, nothing runs and nothing is dialled (its Create
            # returns before the connection is opened); the resource only holds a `delete`.
            script = new.inputs.get("create")
            run = self._run_command if type_ == COMMAND else self._run_local
            new.outputs = {**new.inputs, **(run(new, script) if script else {"stdout": "", "stderr": ""})}
        elif type_ == COPY:
            new.id = f"{new.name}-{secrets.token_hex(4)}"
            new.outputs = dict(new.inputs)
            self._copy(new)
        elif type_ == INSTANCE:
            new.id = f"i-{secrets.token_hex(8)}"
            new.outputs = self._create_instance(new)
        elif type_ == EIP:
            eip = self._ec2(self.bed.addresses.allocate, (new.inputs.get("tags") or {}), name=new.name)
            new.id = eip.allocation_id
            new.outputs = {**new.inputs, **_eip_outputs(eip)}
        elif type_ == EIP_ASSOCIATION:
            inputs = new.inputs
            eip = self._ec2(self.bed.addresses.associate, inputs["allocationId"], inputs["instanceId"], name=new.name)
            new.id = eip.association_id
            private = self.bed.addresses.private_of(eip.instance_id)
            new.outputs = {**inputs, "publicIp": eip.public_ip, "privateIpAddress": private}
        elif type_ == VOLUME:
            new.outputs = self._create_volume(new)
            new.id = new.outputs["id"]
        elif type_ == VOLUME_ATTACHMENT:
            new.outputs = self._attach(new)
            new.id = new.outputs["id"]
        else:
            new.id = self._id_for(type_, new.name)
            new.outputs = {**new.inputs, **self._computed(type_, new.name, new, None)}
            if type_ == BUCKET:
                new.id = new.outputs["bucket"]  # the provider's id of a bucket is its name

    def update(self, old: State, new: State) -> None:
        type_ = new.type
        new.id, new.host = old.id, old.host
        if type_ in self._kinds:
            new.outputs = self._kinds[type_][0](new, old)
        elif type_ in (COMMAND, LOCAL):
            # pulumi-command: `update` if set, else `create`; neither: nothing runs.
            script = new.inputs.get("update") or new.inputs.get("create")
            run = self._run_command if type_ == COMMAND else self._run_local
            new.outputs = {**new.inputs, **(run(new, script) if script else {"stdout": "", "stderr": ""})}
        elif type_ == COPY:
            new.outputs = dict(new.inputs)
            self._copy(new)
        elif type_ == INSTANCE:
            new.outputs = {**new.inputs, **{k: v for k, v in old.outputs.items() if k not in new.inputs}}
            changed = providers.changed_keys(comparable(old.raw_inputs), comparable(new.raw_inputs))
            if changed & providers.INSTANCE_RESTART_KEYS:
                self._restart_instance(old, new, changed)
            if "iamInstanceProfile" in changed:
                # EC2 associates (or removes) a profile on a running instance: its metadata
                # service hands out (or stops handing out) the role's credentials at once.
                ip = old.outputs.get("privateIp")
                if ip in self.bed.imds.instances:
                    self.bed.imds.instances[ip]["role"] = bool(new.inputs.get("iamInstanceProfile"))
        elif type_ == EIP:  # only its tags change in place
            eip = self.bed.addresses.eips[old.id]
            eip.tags = dict(new.inputs.get("tags") or {})
            new.outputs = {**new.inputs, **_eip_outputs(eip)}
        elif type_ == EIP_ASSOCIATION:
            new.outputs = {**new.inputs, **{k: v for k, v in old.outputs.items() if k not in new.inputs}}
        else:
            new.outputs = {**new.inputs, **self._computed(type_, new.name, new, old)}
            if type_ == BUCKET:
                new.id = new.outputs["bucket"]

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
        if type_ == ACCESS_KEY:  # the provider's id of an access key is the key's id
            return "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
        return f"{prefix}-{secrets.token_hex(8)}" if prefix else f"{name}-{secrets.token_hex(4)}"

    def _computed(self, type_: str, name: str, new: State, old: State | None) -> dict:
        inputs = new.inputs
        previous = old.outputs if old is not None else {}
        if type_ == BUCKET:
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
        if type_ == "random:index/randomShuffle:RandomShuffle":
            if previous:
                return {"results": previous["results"]}
            shuffled = list(inputs.get("inputs") or [])
            secrets.SystemRandom().shuffle(shuffled)
            return {"results": shuffled[: int(inputs.get("resultCount") or len(shuffled))]}
        if type_ == "random:index/randomBytes:RandomBytes":
            if previous:
                return {k: previous[k] for k in ("hex", "base64")}
            new.secret_outputs |= {"hex", "base64"}
            raw = secrets.token_bytes(int(inputs.get("length") or 32))
            return {"hex": raw.hex(), "base64": base64.b64encode(raw).decode()}
        if type_ == "aws:ec2/keyPair:KeyPair":
            return {
                "keyName": inputs.get("keyName") or previous.get("keyName") or f"{name}-{secrets.token_hex(4)}",
                "arn": f"arn:aws:ec2:::{name}",
            }
        if type_ == "aws:iam/user:User":
            iam_name = previous.get("name") or inputs.get("name") or f"{name}-{secrets.token_hex(4)[:7]}"
            path = inputs.get("path") or "/"
            return {"name": iam_name, "arn": f"arn:aws:iam::123456789012:user{path}{iam_name}", "uniqueId": new.id}
        if type_ == ACCESS_KEY:
            # (S3 on the bed takes any key: what the key may do is proven by the policy's unit test.)
            new.secret_outputs |= {"secret"}
            return {"secret": previous.get("secret") or secrets.token_urlsafe(30), "status": "Active"}
        if type_ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            iam_name = previous.get("name") or inputs.get("name") or f"{name}-{secrets.token_hex(4)[:7]}"
            if type_ == "aws:iam/role:Role":
                self.bed.iam_roles.add(iam_name)  # what a later morning's getRoles finds
            return {"name": iam_name, "arn": f"arn:aws:iam::123456789012:{type_.split(':')[-1].lower()}/{iam_name}"}
        if type_ == DLM_POLICY:  # the bed's DLM runs it when a test says its hour has come
            self.bed.lifecycle.put(new.id, inputs)
            return {"arn": previous.get("arn") or f"arn:aws:dlm:{BED_REGION}:123456789012:policy/{new.id}"}
        return {"arn": previous.get("arn") or f"arn:aws:bed:::{name}"}

    def _create_instance(self, new: State) -> dict:
        inputs = new.inputs
        subnet = self._subnet(inputs.get("subnetId"), new.name)
        name = (inputs.get("tags") or {}).get("Name") or new.name
        host, ip = self._boot(
            name,
            new.id,
            subnet,
            inputs,
            private_ip=inputs.get("privateIp"),
            user_data=base64.b64decode(inputs.get("userDataBase64") or ""),
            meta={"instance-type": inputs.get("instanceType") or "", "instance-life-cycle": "on-demand"},
        )
        new.host = host.key
        if self.wait_for_boot:
            host.wait_cloud_init(600)
        self.log(f"instance {name} ({host.key}) at {ip} booted; cloud-init runs its user-data")
        public = self.bed.addresses.launched(new.id, ip, public=bool(inputs.get("associatePublicIpAddress")))
        return {
            **inputs,
            "id": new.id,
            "privateIp": ip,
            "publicIp": public,
            "privateDns": f"ip-{ip.replace('.', '-')}.{BED_REGION}.compute.internal",
            "availabilityZone": host.zone,
            "arn": f"arn:aws:ec2:{BED_REGION}:{ACCOUNT}:instance/{new.id}",
            "instanceState": "running",
        }

    def _subnet(self, subnet_id: str | None, name: str) -> State:
        subnet = self.find(lambda s: s.type == "aws:ec2/subnet:Subnet" and s.id == subnet_id)
        if subnet is None:
            raise EngineError(f"{name}: subnet {subnet_id} is not in the state")
        return subnet

    def _boot(
        self,
        name: str,
        instance_id: str,
        subnet: State,
        machine: dict,
        *,
        private_ip: str | None,
        user_data: bytes,
        meta: dict[str, str],
        dynamic: Callable[[], dict[str, str]] | None = None,
    ) -> tuple[Host, str]:
        """What EC2 does for RunInstances, from an instance's inputs or a launch template's
        (`machine`: metadataOptions, iamInstanceProfile, keyName): an address from the
        subnet, the metadata service told of the instance, a machine that boots with the
        user-data. Returns once the machine runs, as RunInstances does."""
        cidr = ipaddress.ip_network(subnet.inputs["cidrBlock"])
        zone = subnet.inputs.get("availabilityZone", f"{BED_REGION}a")
        with self._lock:
            ip = private_ip or next(
                str(a) for a in list(cidr.hosts())[99:] if str(a) not in self._ips and str(a) != self.bed.gateway
            )
            if ip in self._ips:
                # What EC2 answers while another instance (the one being replaced) holds it.
                raise EngineError(f"{name}: InvalidIPAddress.InUse: address {ip} is in use")
            self._ips.add(ip)
        options = machine.get("metadataOptions") or {}
        self.bed.imds.register(
            ip,
            hop_limit=int(options.get("httpPutResponseHopLimit") or 1),
            tokens_required=options.get("httpTokens") == "required",
            role=bool(machine.get("iamInstanceProfile")),
            meta_data={"instance-id": instance_id, "local-ipv4": ip, "placement/availability-zone": zone, **meta},
            dynamic=dynamic,
        )
        key = self.find(
            lambda s: s.type == "aws:ec2/keyPair:KeyPair" and s.outputs.get("keyName") == machine.get("keyName")
        )
        try:
            host = self.bed.create_host(
                name,
                ip,
                image=self.image,
                user_data=user_data,
                meta_data=_meta_data(instance_id, ip, key.inputs["publicKey"] if key else None),
            )
        except BedError:
            with self._lock:
                self._ips.discard(ip)
            self.bed.imds.forget(ip)
            raise
        host.zone = zone  # where its volumes must be
        return host, ip

    def _terminate_machine(self, host_key: str | None, ip: str | None, instance_id: str) -> None:
        """TerminateInstances: the machine wiped, its address and metadata free again."""
        self.log(f"terminate {host_key}")
        if host_key in self.bed.hosts:
            self.bed.wipe_host(host_key)
        with self._lock:
            self._ips.discard(ip)
        self.bed.imds.forget(ip)
        self.bed.addresses.terminated(instance_id)

    def _create_volume(self, new: State) -> dict:
        inputs = new.inputs
        volume = self._ebs(
            self.bed.volumes.create,
            inputs["availabilityZone"], int(inputs.get("size") or 1), inputs.get("snapshotId") or "",
            inputs.get("tags") or {}, name=new.name,
        )  # fmt: skip
        volume.volume_type = inputs.get("type") or volume.volume_type
        arn = f"arn:aws:ec2:{BED_REGION}:123456789012:volume/{volume.volume_id}"
        return {**inputs, "id": volume.volume_id, "arn": arn, "encrypted": bool(inputs.get("encrypted"))}

    def _attach(self, new: State) -> dict:
        """AttachVolume to the instance's machine; EC2's refusals fail the step."""
        inputs = new.inputs
        host = self._machine_of(inputs["instanceId"], new.name)
        self._ebs(self.bed.volumes.attach, inputs["volumeId"], host, name=new.name)
        self.log(f"attach {inputs['volumeId']} to {host.key}")
        return {**inputs, "id": f"vai-{secrets.token_hex(8)}"}

    def _detach(self, state: State) -> None:
        """DetachVolume, as pulumi-aws does it: nothing with `skipDestroy`; nothing when the
        machine is gone (EC2 detached it at termination); refused while mounted, where on
        EC2 the provider waits for `available` until its timeout while the volume is `busy`."""
        inputs = state.inputs
        instance = self.find(lambda s: s.type == INSTANCE and s.id == inputs.get("instanceId"))
        host = self.bed.hosts.get(instance.host or "") if instance else None
        if inputs.get("skipDestroy") or host is None:
            return
        self._ebs(self.bed.volumes.detach, inputs["volumeId"], host, bool(inputs.get("forceDetach")), name=state.name)
        self.log(f"detach {inputs['volumeId']} from {host.key}")

    def _machine_of(self, instance_id: str, name: str):
        instance = self.find(lambda s: s.type == INSTANCE and s.id == instance_id)
        host = self.bed.hosts.get(instance.host or "") if instance else None
        if host is None:
            raise EngineError(f"{name}: IncorrectInstanceState: instance {instance_id} is not running")
        return host

    def _ebs(self, call, *args, name: str):
        try:
            return call(*args)
        except VolumeError as error:
            raise EngineError(f"{name}: {error}") from None

    def _restart_instance(self, old: State, new: State, changed: set[str]) -> None:
        """EC2 applies a new instance type or user-data to a stopped instance, then starts
        it: same disk, same private address; cloud-init does not run user-data again."""
        host = self.bed.hosts.get(old.host or "")
        if host is None:
            raise EngineError(f"{new.name}: its machine {old.host} is gone")
        self.log(f"instance {new.name}: stop, modify {', '.join(sorted(changed))}, start")
        host.power_off()
        user_data = base64.b64decode(new.inputs.get("userDataBase64") or "")
        (host.dir / "up/var/lib/cloud/seed/nocloud/user-data").write_bytes(user_data)
        host.boot()
        new.outputs["publicIp"] = self.bed.addresses.restarted(new.id)  # as EC2: a new one, unless elastic

    def _ec2(self, call, *args, name: str):
        """An EC2 address call; its refusal fails the step as the provider's error does."""
        try:
            return call(*args)
        except AddressError as error:
            raise EngineError(f"{name}: {error}") from None

    # -- worker groups -------------------------------------------------------------------
    def _put_template(self, new: State, old: State | None) -> dict:
        """CreateLaunchTemplate, then a new version at each update that changes its content."""
        if old is None:
            new.id = f"lt-{secrets.token_hex(8)}0"
        latest, default = self.bed.autoscaling.templates.put(new.id, new.inputs)
        name = (old.outputs.get("name") if old else None) or new.inputs.get("name")
        return {
            **new.inputs,
            "id": new.id,
            "name": name or f"{new.inputs.get('namePrefix') or 'terraform-'}{secrets.token_hex(8)}",
            "arn": f"arn:aws:ec2:{BED_REGION}:{ACCOUNT}:launch-template/{new.id}",
            "latestVersion": latest,
            "defaultVersion": default,
        }

    def _delete_template(self, state: State) -> None:
        self.bed.autoscaling.templates.delete(state.id)

    def _put_group(self, new: State, old: State | None) -> dict:
        """Create or UpdateAutoScalingGroup, then wait, as pulumi-aws does, for the desired
        capacity InService (the machines running; their user-data may still be at work).
        A group that cannot reach it is force-deleted here (the provider would leave it
        tainted in the state; the bed leaves nothing behind)."""
        spec = GroupSpec.from_inputs(new.inputs, lambda subnet_id: self._zone_of(subnet_id, new.name))
        autoscaling = self.bed.autoscaling
        try:
            if old is None:
                autoscaling.create_group(spec, self)
            else:
                autoscaling.update_group(spec)
            autoscaling.wait_for_capacity(spec.name, GROUP_TIMEOUT)
        except BedError as error:
            if old is None and spec.name in autoscaling.groups:
                autoscaling.delete_group(spec.name)
            raise EngineError(f"{new.name}: {error}") from None
        new.id = spec.name
        described = autoscaling.describe(spec.name)
        self.log(
            f"group {spec.name}: {sum(i['LifecycleState'] == 'InService' for i in described['Instances'])} InService"
        )
        return {
            **new.inputs,
            "id": spec.name,
            "name": spec.name,
            "arn": described["AutoScalingGroupARN"],
            "availabilityZones": described["AvailabilityZones"],
            "desiredCapacity": described["DesiredCapacity"],
        }

    def _delete_group(self, state: State) -> None:
        """DeleteAutoScalingGroup with ForceDelete: every instance at once, no hook."""
        try:
            self.bed.autoscaling.delete_group(state.id)
        except BedError as error:
            raise EngineError(f"{state.name}: {error}") from None

    def _zone_of(self, subnet_id: str, name: str) -> str:
        return self._subnet(subnet_id, name).inputs.get("availabilityZone", f"{BED_REGION}a")

    def launch(self, instance: Instance) -> None:
        """The bed's Auto Scaling launches `instance` (autoscaling.Launcher): a machine as
        `_create_instance` makes one, from the launch template version the group chose,
        named `<group>-<instance id>` (the `swarm:group` tag the group propagates)."""
        _, template = self.bed.autoscaling.templates.resolve(instance.template_id, str(instance.template_version))
        name = f"{instance.tags.get('swarm:group') or instance.group}-{instance.instance_id}"
        host, ip = self._boot(
            name,
            instance.instance_id,
            self._subnet(instance.subnet_id, name),
            template,
            private_ip=None,
            user_data=base64.b64decode(template.get("userData") or ""),
            meta={"instance-type": instance.instance_type},
            dynamic=lambda: self.bed.autoscaling.metadata(instance.instance_id),
        )
        instance.ip, instance.host = ip, host.key
        self.bed.addresses.launched(instance.instance_id, ip, public=False)
        self.log(f"instance {name} ({host.key}) at {ip} launched by group {instance.group}")

    def terminate(self, instance: Instance) -> None:
        """The bed's Auto Scaling terminates `instance` (autoscaling.Launcher)."""
        self._terminate_machine(instance.host, instance.ip, instance.instance_id)

    def _put_parameter(self, new: State, old: State | None) -> dict:
        """PutParameter (Overwrite) into moto's SSM. The value is a secret: it is never
        logged, and the engine's state holds it only as a placeholder."""
        inputs = new.inputs
        new.secret_outputs |= {"value", "insecureValue"}
        arguments = {"Name": inputs["name"], "Type": inputs.get("type") or "String", "Overwrite": True}
        if inputs.get("keyId"):
            arguments["KeyId"] = inputs["keyId"]
        value = inputs.get("value") if inputs.get("value") is not None else inputs.get("insecureValue")
        try:
            answer = self.bed.ssm().put_parameter(**arguments, Value=value or "")
        except Exception as error:  # botocore's errors may quote the request: say only what failed
            code = getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)
            raise EngineError(f"{new.name}: PutParameter {inputs['name']} failed: {code}") from None
        new.id = inputs["name"]
        name = inputs["name"].lstrip("/")
        arn = f"arn:aws:ssm:{BED_REGION}:{ACCOUNT}:parameter/{name}"
        return {**inputs, "id": new.id, "arn": arn, "version": answer["Version"], "tier": "Standard"}

    def _delete_parameter(self, state: State) -> None:
        ssm = self.bed.ssm()
        try:
            ssm.delete_parameter(Name=state.id)
        except ssm.exceptions.ParameterNotFound:
            pass  # the provider ignores a parameter already gone

    def _put_object(self, new: State, old: State | None) -> dict:
        """PutObject into moto's S3: `contentBase64`, `content` or a file `source`."""
        inputs = new.inputs
        body = _object_body(inputs, new.name)
        extra = {"ContentType": inputs["contentType"]} if inputs.get("contentType") else {}
        answer = self.bed.s3().put_object(Bucket=inputs["bucket"], Key=inputs["key"], Body=body, **extra)
        new.id = inputs["key"]
        etag = answer.get("ETag", "").strip('"') or hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag
        self.log(f"{new.name}: s3://{inputs['bucket']}/{inputs['key']} ({len(body)} bytes)")
        return {**inputs, "id": new.id, "etag": etag, "versionId": answer.get("VersionId", "")}

    def _delete_object(self, state: State) -> None:
        """As the provider does: every version of the key (or the object, unversioned)."""
        s3, bucket, key = self.bed.s3(), state.inputs["bucket"], state.inputs["key"]
        listed = s3.list_object_versions(Bucket=bucket, Prefix=key)
        versions = [v for v in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])] if v["Key"] == key]
        for version in versions:
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
        if not versions:
            s3.delete_object(Bucket=bucket, Key=key)

    # -- logs and alarms -----------------------------------------------------------------
    def _aws(self, name: str, what: str, call, **arguments):
        """One call to moto; AWS's refusal fails the step as the provider reports it."""
        import botocore.exceptions

        try:
            return call(**arguments)
        except botocore.exceptions.ClientError as error:
            found = error.response.get("Error", {})
            raise EngineError(f"{name}: {what}: {found.get('Code')}: {found.get('Message')}") from None

    def _put_log_group(self, new: State, old: State | None) -> dict:
        """CreateLogGroup (an existing group is AWS's ResourceAlreadyExistsException), then
        its retention: PutRetentionPolicy, or DeleteRetentionPolicy for "never expire"."""
        inputs, logs = new.inputs, self.bed.logs()
        group = (old.outputs["name"] if old else None) or inputs.get("name") or _auto_name(new.name, inputs)
        what = f"creating CloudWatch Logs Log Group ({group})"
        if old is None:
            tags = {"tags": inputs["tags"]} if inputs.get("tags") else {}
            self._aws(new.name, what, logs.create_log_group, logGroupName=group, **tags)
        days = int(inputs.get("retentionInDays") or 0)
        if days:
            self._aws(new.name, what, logs.put_retention_policy, logGroupName=group, retentionInDays=days)
        elif old is not None:
            self._aws(new.name, what, logs.delete_retention_policy, logGroupName=group)
        new.id = group
        arn = f"arn:aws:logs:{BED_REGION}:{ACCOUNT}:log-group:{group}"
        return {**inputs, "id": group, "name": group, "arn": arn, "retentionInDays": days}

    def _delete_log_group(self, state: State) -> None:
        if state.inputs.get("skipDestroy"):
            return  # the provider only forgets it
        logs = self.bed.logs()
        with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
            logs.delete_log_group(logGroupName=state.id)

    def _put_topic(self, new: State, old: State | None) -> dict:
        """CreateTopic (idempotent, as SNS's is for the same attributes); the id is its ARN."""
        inputs, sns = new.inputs, self.bed.sns()
        topic = (old.outputs["name"] if old else None) or inputs.get("name") or _auto_name(new.name, inputs)
        tags = [{"Key": k, "Value": v} for k, v in (inputs.get("tags") or {}).items()]
        arn = self._aws(new.name, f"creating SNS Topic ({topic})", sns.create_topic, Name=topic, Tags=tags)["TopicArn"]
        if inputs.get("displayName"):
            sns.set_topic_attributes(TopicArn=arn, AttributeName="DisplayName", AttributeValue=inputs["displayName"])
        new.id = arn
        return {**inputs, "id": arn, "arn": arn, "name": topic, "owner": ACCOUNT}

    def _delete_topic(self, state: State) -> None:
        self.bed.sns().delete_topic(TopicArn=state.id)

    def _put_subscription(self, new: State, old: State | None) -> dict:
        """Subscribe (its every identifying input replaces it: an update only echoes). An
        e-mail subscription stays pending until someone confirms it, which nobody does here."""
        inputs, sns = new.inputs, self.bed.sns()
        if old is None:
            what = f"creating SNS Topic Subscription ({inputs['topic']})"
            answer = self._aws(
                new.name, what, sns.subscribe,
                TopicArn=inputs["topic"], Protocol=inputs["protocol"], Endpoint=inputs["endpoint"],
                ReturnSubscriptionArn=True,
            )  # fmt: skip
            new.id = answer["SubscriptionArn"]
        pending = inputs["protocol"] in ("email", "email-json", "http", "https")
        return {**inputs, "id": new.id, "arn": new.id, "ownerId": ACCOUNT, "pendingConfirmation": pending}

    def _delete_subscription(self, state: State) -> None:
        self.bed.sns().unsubscribe(SubscriptionArn=state.id)

    def _put_alarm(self, new: State, old: State | None) -> dict:
        """PutMetricAlarm. On AWS an update leaves the alarm's state as it was; moto starts
        it over, so the bed puts the state back (the evaluator would notify otherwise)."""
        inputs, cloudwatch = new.inputs, self.bed.cloudwatch()
        name = inputs["name"]
        before = cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"] if old is not None else []
        self._aws(new.name, f"creating CloudWatch Metric Alarm ({name})", cloudwatch.put_metric_alarm, **_alarm(inputs))
        if before and not before[0].get("StateReason", "").startswith("Unchecked"):
            state = {k: before[0][k] for k in ("StateValue", "StateReason")}
            cloudwatch.set_alarm_state(AlarmName=name, **state, StateReasonData=before[0].get("StateReasonData", "{}"))
        new.id = name
        return {**inputs, "id": name, "arn": f"arn:aws:cloudwatch:{BED_REGION}:{ACCOUNT}:alarm:{name}"}

    def _delete_alarm(self, state: State) -> None:
        self.bed.cloudwatch().delete_alarms(AlarmNames=[state.id])

    # -- commands ------------------------------------------------------------------------
    def _run_command(self, state: State, script: str) -> dict:
        inputs = state.inputs
        started = time.monotonic()
        try:
            code, stdout, stderr = ssh_run(inputs["connection"], script, inputs.get("stdin"), self.log, state.name)
        except SSHError as error:
            raise EngineError(str(error)) from None
        return self._finish(state, script, code, stdout, stderr, time.monotonic() - started)

    def _run_local(self, state: State, script: str) -> dict:
        """local.Command: the interpreter (default /bin/sh -c) here, in `dir`, with `environment`."""
        inputs = state.inputs
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [*(inputs.get("interpreter") or ["/bin/sh", "-c"]), script],
                cwd=inputs.get("dir") or self.project_dir,
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
        try:
            sftp_put(inputs["connection"], path, inputs["remotePath"], self.log, state.name)
        except SSHError as error:
            raise EngineError(str(error)) from None
        self.log(f"{state.name}: copied {path} to {inputs['remotePath']}")

    def delete(self, state: State) -> None:
        if state.type in (COMMAND, LOCAL) and state.inputs.get("delete"):
            self.log(f"delete hook of {state.name}")
            run = self._run_command if state.type == COMMAND else self._run_local
            run(state, state.inputs["delete"])
        elif state.type == INSTANCE and state.host:
            self._terminate_machine(state.host, state.outputs.get("privateIp"), state.id)
        elif state.type in self._kinds:
            self._kinds[state.type][1](state)
        elif state.type == EIP_ASSOCIATION:
            self.bed.addresses.disassociate(state.id)
        elif state.type == EIP:
            self._ec2(self.bed.addresses.release, state.id, name=state.name)
        elif state.type == VOLUME_ATTACHMENT:
            self._detach(state)
        elif state.type == VOLUME:
            self._ebs(self.bed.volumes.delete, state.id, name=state.name)
        elif state.type == DLM_POLICY:
            self.bed.lifecycle.delete(state.id)
        elif state.type == "aws:iam/role:Role":
            self.bed.iam_roles.discard(state.outputs.get("name", ""))
        elif state.type == BUCKET:
            raise EngineError(f"{state.name}: deleting the bucket is not something the bed's engine does")


def _eip_outputs(eip) -> dict:
    return {
        "allocationId": eip.allocation_id,
        "publicIp": eip.public_ip,
        "domain": "vpc",
        "arn": f"arn:aws:ec2:{BED_REGION}:123456789012:elastic-ip/{eip.allocation_id}",
    }


def _meta_data(instance_id: str, ip: str, public_key: str | None) -> dict:
    """What EC2's metadata service would tell cloud-init about this instance."""
    meta = {"instance-id": instance_id, "local-hostname": f"ip-{ip.replace('.', '-')}"}
    if public_key:
        meta["public-keys"] = [public_key.strip()]
    return meta


def _auto_name(name: str, inputs: dict) -> str:
    """What the provider names a resource the program did not name: its prefix (or the
    resource's name and a dash) and a suffix of its own."""
    prefix = inputs.get("namePrefix") or f"{name}-"
    return f"{prefix}{secrets.token_hex(4)[:7]}"


# PutMetricAlarm's arguments from the inputs pulumi-aws sends (camelCase; dimensions a map).
ALARM_ARGUMENTS = {
    "name": "AlarmName",
    "namespace": "Namespace",
    "metricName": "MetricName",
    "statistic": "Statistic",
    "extendedStatistic": "ExtendedStatistic",
    "period": "Period",
    "evaluationPeriods": "EvaluationPeriods",
    "datapointsToAlarm": "DatapointsToAlarm",
    "threshold": "Threshold",
    "comparisonOperator": "ComparisonOperator",
    "treatMissingData": "TreatMissingData",
    "alarmActions": "AlarmActions",
    "okActions": "OKActions",
    "insufficientDataActions": "InsufficientDataActions",
    "actionsEnabled": "ActionsEnabled",
    "alarmDescription": "AlarmDescription",
    "unit": "Unit",
}


def _alarm(inputs: dict) -> dict:
    arguments = {ALARM_ARGUMENTS[k]: v for k, v in inputs.items() if k in ALARM_ARGUMENTS and v is not None}
    for key in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if key in arguments:
            arguments[key] = int(arguments[key])
    arguments.setdefault("ActionsEnabled", True)  # the provider's default
    arguments.setdefault("TreatMissingData", "missing")
    if inputs.get("dimensions"):
        arguments["Dimensions"] = [{"Name": k, "Value": v} for k, v in inputs["dimensions"].items()]
    if inputs.get("tags"):
        arguments["Tags"] = [{"Key": k, "Value": v} for k, v in inputs["tags"].items()]
    return arguments


def _object_body(inputs: dict, name: str) -> bytes:
    if inputs.get("contentBase64") is not None:
        return base64.b64decode(inputs["contentBase64"])
    if inputs.get("content") is not None:
        return inputs["content"].encode()
    source = inputs.get("source")
    path = getattr(source, "path", None) or (source.get("path") if isinstance(source, dict) else None)
    if not path or not Path(path).is_file():
        raise EngineError(f"{name}: the bed puts objects from content, contentBase64 or a file asset only")
    return Path(path).read_bytes()
