"""What the providers would answer the engine: which changes replace, what is computed.

The Pulumi engine asks a resource's provider to `Diff` old and new inputs; the provider
says which changed properties force a replacement (Terraform's `ForceNew` for
pulumi-aws, `replaceOnChanges` for pulumi-command, whose only such input is `triggers`:
pulumi-command `provider/pkg/provider/common/inputs.go`). Everything else is an update in
place. This table holds those answers for the types the program uses, from the
providers' schemas; a type it does not list is updated in place on any change.

It also says which outputs a provider computes, so that a preview (when providers run
nothing) hands the program unknowns for exactly those.
"""

from __future__ import annotations

from typing import Any

from pulumi.output import Unknown

COMMAND = "command:remote:Command"
LOCAL = "command:local:Command"
COPY = "command:remote:CopyToRemote"
INSTANCE = "aws:ec2/instance:Instance"
BUCKET = "aws:s3/bucket:Bucket"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
PARAMETER = "aws:ssm/parameter:Parameter"
OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"

# Input properties whose change replaces the resource (ForceNew / replaceOnChanges).
REPLACE_KEYS: dict[str, set[str]] = {
    COMMAND: {"triggers"},
    LOCAL: {"triggers"},
    COPY: {"triggers"},
    INSTANCE: {
        "ami",
        "availabilityZone",
        "keyName",
        "privateIp",
        "subnetId",
        "associatePublicIpAddress",
        "tenancy",
        "placementGroup",
        "hostId",
        "cpuOptions",
        "ebsBlockDevices",
        "ephemeralBlockDevices",
        "networkInterfaces",
        "launchTemplate",
    },
    "aws:ec2/keyPair:KeyPair": {"keyName", "keyNamePrefix", "publicKey"},
    "aws:ec2/eip:Eip": {"domain", "address", "customerOwnedIpv4Pool", "networkBorderGroup", "publicIpv4Pool"},
    # aws_eip_association has no update: every input is ForceNew.
    "aws:ec2/eipAssociation:EipAssociation": {"allocationId", "instanceId", "networkInterfaceId", "privateIpAddress"},
    # aws_ebs_volume: size, type, iops and throughput change in place (ModifyVolume).
    "aws:ebs/volume:Volume": {"availabilityZone", "encrypted", "kmsKeyId", "snapshotId", "outpostArn"},
    # aws_volume_attachment has no update: every input is ForceNew.
    "aws:ec2/volumeAttachment:VolumeAttachment": {"deviceName", "instanceId", "volumeId"},
    "tls:index/privateKey:PrivateKey": {"algorithm", "ecdsaCurve", "rsaBits"},
    "random:index/randomBytes:RandomBytes": {"length", "keepers"},
    "random:index/randomShuffle:RandomShuffle": {"inputs", "keepers", "resultCount", "seed"},
    "aws:ec2/vpc:Vpc": {"cidrBlock", "instanceTenancy", "ipv4IpamPoolId"},
    "aws:ec2/subnet:Subnet": {"vpcId", "cidrBlock", "availabilityZone", "availabilityZoneId"},
    "aws:ec2/securityGroup:SecurityGroup": {"name", "namePrefix", "description", "vpcId"},
    "aws:ec2/routeTable:RouteTable": {"vpcId"},
    "aws:ec2/routeTableAssociation:RouteTableAssociation": {"subnetId", "gatewayId"},
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": {"securityGroupId"},
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": {"securityGroupId"},
    BUCKET: {"bucket", "bucketPrefix", "forceDestroy"},
    "aws:s3/bucketVersioning:BucketVersioning": {"bucket", "expectedBucketOwner"},
    "aws:s3/bucketPolicy:BucketPolicy": {"bucket"},
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": {"bucket"},
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration": {"bucket"},
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": {"bucket"},
    "aws:iam/role:Role": {"name", "namePrefix", "path"},
    "aws:iam/instanceProfile:InstanceProfile": {"name", "namePrefix", "path"},
    "aws:iam/rolePolicy:RolePolicy": {"name", "namePrefix", "role"},
    "aws:iam/userPolicy:UserPolicy": {"name", "namePrefix", "user"},
    "aws:iam/accessKey:AccessKey": {"user", "pgpKey"},
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment": {"role", "policyArn"},
    # aws_dlm_lifecycle_policy: everything changes in place (UpdateLifecyclePolicy).
    "aws:dlm/lifecyclePolicy:LifecyclePolicy": set(),
    # aws_launch_template: any other change is a new version of the same template.
    LAUNCH_TEMPLATE: {"name", "namePrefix"},
    # aws_autoscaling_group: sizes, subnets, template, hooks (ignored after creation) in place.
    GROUP: {"name", "namePrefix"},
    # aws_ssm_parameter: a new value (or type) is PutParameter with Overwrite, a new version.
    PARAMETER: {"name"},
    # aws_s3_object: new content is a PutObject of the same key.
    OBJECT: {"bucket", "key"},
    # aws_cloudwatch_log_group: retention, KMS key, tags change in place.
    LOG_GROUP: {"name", "namePrefix", "logGroupClass"},
    # aws_sns_topic: attributes (display name, policy...) change in place.
    TOPIC: {"name", "namePrefix", "fifoTopic"},
    # aws_sns_topic_subscription: only its attributes (filter, raw delivery...) change in place.
    SUBSCRIPTION: {"topic", "protocol", "endpoint", "endpointAutoConfirms", "confirmationTimeoutInMinutes"},
    # aws_cloudwatch_metric_alarm: PutMetricAlarm overwrites everything but the name.
    METRIC_ALARM: {"name"},
}

# Changes an instance takes in place only by being stopped and started (the provider does it).
INSTANCE_RESTART_KEYS = {"instanceType", "userDataBase64", "userData"}

# Outputs each type computes; a preview hands the program unknowns for them.
COMPUTED: dict[str, set[str]] = {
    COMMAND: {"stdout", "stderr"},
    LOCAL: {"stdout", "stderr"},
    INSTANCE: {"privateIp", "publicIp", "privateDns", "availabilityZone", "arn", "instanceState"},
    BUCKET: {"bucket", "arn", "region"},
    "aws:ec2/keyPair:KeyPair": {"keyName", "arn"},
    "aws:ec2/eip:Eip": {"allocationId", "publicIp", "arn"},
    "aws:ec2/eipAssociation:EipAssociation": {"publicIp", "privateIpAddress"},
    "aws:ebs/volume:Volume": {"arn"},
    "aws:ec2/volumeAttachment:VolumeAttachment": set(),
    "tls:index/privateKey:PrivateKey": {"privateKeyOpenssh", "privateKeyPem", "publicKeyOpenssh"},
    "random:index/randomBytes:RandomBytes": {"hex", "base64"},
    "random:index/randomShuffle:RandomShuffle": {"results"},
    "aws:iam/role:Role": {"name", "arn"},
    "aws:iam/instanceProfile:InstanceProfile": {"name", "arn"},
    "aws:iam/user:User": {"name", "arn", "uniqueId"},
    "aws:iam/accessKey:AccessKey": {"secret", "status"},
    LAUNCH_TEMPLATE: {"arn", "latestVersion", "defaultVersion", "name"},
    GROUP: {"arn", "name", "availabilityZones", "desiredCapacity"},
    PARAMETER: {"arn", "version"},
    OBJECT: {"etag", "versionId"},
}
DEFAULT_COMPUTED = {"arn"}

# Computed outputs that an update in place changes too (the provider plans them unknown):
# a preview of an update hands the program unknowns for these, the old values for the rest.
RECOMPUTED: dict[str, set[str]] = {
    COMMAND: {"stdout", "stderr"},
    LOCAL: {"stdout", "stderr"},
    LAUNCH_TEMPLATE: {"latestVersion", "defaultVersion"},
    PARAMETER: {"version"},
    OBJECT: {"etag", "versionId"},
}


def replace_keys(type_: str, inputs: dict) -> set[str]:
    keys = set(REPLACE_KEYS.get(type_, set()))
    if type_ == INSTANCE and inputs.get("userDataReplaceOnChange"):
        keys |= {"userDataBase64", "userData"}
    return keys


def changed_keys(old: dict, new: dict) -> set[str]:
    """Top-level input properties that differ (an unknown differs from anything)."""
    return {k for k in set(old) | set(new) if _differs(old.get(k), new.get(k))}


def _differs(a: Any, b: Any) -> bool:
    if has_unknown(a) or has_unknown(b):
        return True
    return a != b


def has_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, dict):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_unknown(v) for v in value)
    return False


def computed_keys(type_: str, inputs: dict) -> set[str]:
    keys = set(COMPUTED.get(type_, DEFAULT_COMPUTED))
    if type_ == INSTANCE and inputs.get("privateIp"):
        keys.discard("privateIp")  # pinned: known before the instance exists
    if type_ == BUCKET and inputs.get("bucket"):
        keys.discard("bucket")
    if type_ in (LAUNCH_TEMPLATE, GROUP) and inputs.get("name"):
        keys.discard("name")
    if type_ == GROUP and inputs.get("desiredCapacity") is not None:
        keys.discard("desiredCapacity")
    return keys


def recomputed_keys(type_: str) -> set[str]:
    """Which computed outputs an update in place may change (unknown in its preview)."""
    return RECOMPUTED.get(type_, set())
