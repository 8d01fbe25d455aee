"""The AWS side: resource counts, security groups, the state bucket, IAM, and the instances."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
from collections import Counter

import pytest
from harness import AMI, SwarmMocks, run_program, subnet_mock

from components.settings import AL2023_SSM_PARAMETER

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
INSTANCE = "aws:ec2/instance:Instance"


@pytest.fixture(scope="module")
def default_run():
    return run_program()


def counts(run) -> Counter:
    return Counter(r.type for r in run.resources)


@pytest.mark.parametrize(
    ("config", "managers", "workers", "vpcs", "subnets", "commands"),
    [
        # ready (which installs the agent) and retire per node (a lone manager has none:
        # nobody stays to do it; it hands itself over) + probe per other manager + backup
        # keys per manager + bootstrap + tokens + joins + reconcile + teardown marker +
        # backup + mirror + the store's round trip + registry-auth
        ({}, 3, 2, 1, 3, 5 + 5 + 2 + 3 + 1 + 1 + 4 + 1 + 1 + 1 + 1 + 1 + 1),
        ({"managerCount": 1, "workerCount": 0}, 1, 0, 1, 3, 1 + 1 + 0 + 1 + 1 + 1 + 0 + 1 + 1 + 1 + 1 + 1 + 1),
        (
            {"managerCount": 5, "workerCount": 7, "azCount": 2},
            5,
            7,
            1,
            2,
            12 + 12 + 4 + 5 + 1 + 1 + 11 + 1 + 1 + 1 + 1 + 1 + 1,
        ),
        ({"mirror": False, "backupOnDestroy": False}, 3, 2, 1, 3, 5 + 5 + 2 + 3 + 1 + 1 + 4 + 1 + 1 + 1 + 1 + 1),
    ],
    ids=["default", "single-manager", "5+7-over-2-azs", "no-mirror-no-backup"],
)
def test_resource_counts(config, managers, workers, vpcs, subnets, commands):
    run = run_program(config)
    c = counts(run)
    roles = Counter(r.inputs["tags"]["swarm:role"] for r in run.of_type(INSTANCE))
    assert roles == Counter({"manager": managers, "worker": workers} if workers else {"manager": managers})
    assert c["aws:ec2/vpc:Vpc"] == vpcs
    assert c["aws:ec2/subnet:Subnet"] == subnets
    assert c["command:remote:Command"] == commands
    assert c["aws:s3/bucket:Bucket"] == 1
    assert c["aws:ec2/keyPair:KeyPair"] == 1
    assert c["tls:index/privateKey:PrivateKey"] == 1


def test_existing_vpc_creates_no_network_only_groups():
    mocks = SwarmMocks(
        subnets={
            "subnet-0aaaaaaaaaaaaaaaa": subnet_mock("10.1.0.0/24", "eu-west-1a"),
            "subnet-0bbbbbbbbbbbbbbbb": subnet_mock("10.1.1.0/24", "eu-west-1b"),
        }
    )
    run = run_program(
        {"vpcId": "vpc-0123456789abcdef0", "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]},
        mocks=mocks,
    )
    c = counts(run)
    assert (
        c["aws:ec2/vpc:Vpc"] == 0
        and c["aws:ec2/subnet:Subnet"] == 0
        and c["aws:ec2/internetGateway:InternetGateway"] == 0
    )
    groups = run.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert {g.inputs["vpcId"] for g in groups} == {"vpc-0123456789abcdef0"}
    managers = sorted(
        (r.inputs["subnetId"], r.inputs["privateIp"])
        for r in run.of_type(INSTANCE)
        if r.inputs["tags"]["swarm:role"] == "manager"
    )
    assert managers == [
        ("subnet-0aaaaaaaaaaaaaaaa", "10.1.0.10"),
        ("subnet-0aaaaaaaaaaaaaaaa", "10.1.0.11"),
        ("subnet-0bbbbbbbbbbbbbbbb", "10.1.1.10"),
    ]
    assert run.outputs["subnetIds"] == ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]


def test_cluster_group_admits_swarm_ports_only_from_itself(default_run):
    cluster = default_run.named("swarm-dev-network-cluster")
    rules = [r for r in default_run.of_type(INGRESS) if r.inputs["securityGroupId"] == f"{cluster.name}-id"]
    seen = sorted((r.inputs["ipProtocol"], r.inputs.get("fromPort"), r.inputs.get("toPort")) for r in rules)
    assert seen == sorted(
        [
            ("tcp", 2377, 2377),
            ("tcp", 7946, 7946),
            ("udp", 7946, 7946),
            ("udp", 4789, 4789),
            ("50", None, None),
            ("tcp", 5000, 5000),
        ]
    )
    for rule in rules:
        assert rule.inputs["referencedSecurityGroupId"] == f"{cluster.name}-id"
        assert "cidrIpv4" not in rule.inputs and "cidrIpv6" not in rule.inputs


def test_ssh_only_from_allowed_cidrs_and_nothing_else_open():
    run = run_program({"sshAllowedCidrs": ["203.0.113.0/24", "2001:db8::/32"]})
    ssh = run.named("swarm-dev-network-ssh")
    rules = [r for r in run.of_type(INGRESS) if r.inputs["securityGroupId"] == f"{ssh.name}-id"]
    assert sorted(r.inputs.get("cidrIpv4") or r.inputs.get("cidrIpv6") for r in rules) == [
        "2001:db8::/32",
        "203.0.113.0/24",
    ]
    assert [r.inputs["cidrIpv6"] for r in rules if "cidrIpv6" in r.inputs] == ["2001:db8::/32"]
    assert all((r.inputs["ipProtocol"], r.inputs["fromPort"], r.inputs["toPort"]) == ("tcp", 22, 22) for r in rules)
    # No ingress rule anywhere admits a CIDR except the SSH ones.
    open_rules = [r for r in run.of_type(INGRESS) if ("cidrIpv4" in r.inputs or "cidrIpv6" in r.inputs)]
    assert sorted(r.name for r in open_rules) == sorted(r.name for r in rules)
    # Security groups carry no inline rules that would bypass the above.
    for group in run.of_type("aws:ec2/securityGroup:SecurityGroup"):
        assert not group.inputs.get("ingress")


def test_mirror_port_rule_follows_config():
    run = run_program({"mirror": False})
    assert not [r for r in run.of_type(INGRESS) if r.inputs.get("fromPort") == 5000]
    run = run_program({"mirrorPort": 5443})
    assert [r for r in run.of_type(INGRESS) if r.inputs.get("fromPort") == 5443]


def test_bucket_and_all_its_settings_are_protected(default_run):
    store = default_run.named("swarm-dev-state")
    assert store.protect
    bucket = default_run.of_type("aws:s3/bucket:Bucket")[0]
    settings = [r for r in default_run.resources if r.type.startswith("aws:s3/")]
    assert len(settings) == 6
    assert all(r.protect for r in settings)
    # Besides the bucket only the managers' Elastic IPs, the generated SSH key, the backups'
    # signing key, the host keys' seed and the AMI record (the last four in the state only),
    # and the logs (the group, the alarm topic, its six alarms) are kept; the teardown
    # removes every other one.
    protected = sorted(
        r.type for r in default_run.resources if r.protect and r.custom and not r.type.startswith("aws:s3/")
    )
    kept = [
        "aws:cloudwatch/logGroup:LogGroup",
        *["aws:cloudwatch/metricAlarm:MetricAlarm"] * 6,
        *["aws:ec2/eip:Eip"] * 3,
        *["random:index/randomBytes:RandomBytes"] * 2,
        "random:index/randomShuffle:RandomShuffle",
        "aws:sns/topic:Topic",
        "tls:index/privateKey:PrivateKey",
    ]
    assert protected == sorted(kept)
    assert bucket.inputs.get("forceDestroy") is False


def test_bucket_settings(default_run):
    def one(t):
        (r,) = default_run.of_type(t)
        return r.inputs

    assert one("aws:s3/bucketVersioning:BucketVersioning")["versioningConfiguration"]["status"] == "Enabled"
    sse = one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
    assert sse["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] in ("AES256", "aws:kms")
    pab = one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(
        pab[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    policy = json.loads(one("aws:s3/bucketPolicy:BucketPolicy")["policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "s3:*" and deny["Principal"] == "*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    bucket_arn = "arn:aws:s3:::swarm-dev-state-bucket-0a1b2c3"
    assert sorted(deny["Resource"]) == [bucket_arn, f"{bucket_arn}/*"]
    (rule,) = one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")["rules"]
    assert rule["status"] == "Enabled" and rule["noncurrentVersionExpiration"]["noncurrentDays"] == 30


@pytest.mark.parametrize("days", [7, 90])
def test_retention_is_configurable(days):
    run = run_program({"backupRetentionDays": days})
    (lifecycle,) = run.of_type("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    assert lifecycle.inputs["rules"][0]["noncurrentVersionExpiration"]["noncurrentDays"] == days


def test_node_policy_is_scoped_to_the_bucket_and_stack_prefix(default_run):
    policy_resource = default_run.named("swarm-dev-node-state-access")
    policy = json.loads(policy_resource.inputs["policy"])
    bucket_arn = "arn:aws:s3:::swarm-dev-state-bucket-0a1b2c3"
    ecr = "arn:aws:ecr:eu-west-1:123456789012:repository/*"  # the account read off the role's ARN
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            if statement["Action"] in (["ecr:GetAuthorizationToken"], ["cloudwatch:PutMetricData"]):
                assert resource == "*"  # the only resource AWS takes for it
                continue
            if statement["Sid"] == "ShipLogs":  # the stack's log group's streams
                assert resource == "arn:aws:logs:eu-west-1:123456789012:log-group:/swarm/swarm/dev:*"
                continue
            assert resource in (bucket_arn, f"{bucket_arn}/swarm/dev/*", ecr), resource
            assert (resource == ecr) == all(a.startswith("ecr:") for a in statement["Action"]), statement
        assert "*" not in statement["Action"] and "s3:*" not in statement["Action"]
        if "s3:GetObject" in statement["Action"]:
            assert statement["Resource"] == [f"{bucket_arn}/swarm/dev/*"]
        if "s3:ListBucket" in statement["Action"]:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == ["swarm/dev/", "swarm/dev/*"]
            # The morning lists versions to tell an emptied store from a new one, within the prefix.
            assert statement["Action"] == ["s3:ListBucket", "s3:ListBucketVersions"]
    listing = [s for s in policy["Statement"] if "s3:ListBucketVersions" in s["Action"]]
    assert len(listing) == 1 and listing[0]["Resource"] == [bucket_arn] and "Condition" in listing[0]
    role = default_run.of_type("aws:iam/role:Role")[0]
    assume = json.loads(role.inputs["assumeRolePolicy"])
    assert assume["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_every_instance_requires_imdsv2_and_encrypts_its_gp3_root(default_run):
    for instance in default_run.of_type(INSTANCE):
        metadata = instance.inputs["metadataOptions"]
        assert metadata["httpTokens"] == "required" and metadata["httpEndpoint"] == "enabled"
        # One hop: a container behind Docker's bridge gets no token (the mirror runs on
        # the host's network); managers carry theirs, workers their logs-only one.
        assert metadata["httpPutResponseHopLimit"] == 1
        role = instance.inputs["tags"]["swarm:role"]
        assert instance.inputs["iamInstanceProfile"] == f"swarm-dev-{'node' if role == 'manager' else 'worker'}-profile"
        root = instance.inputs["rootBlockDevice"]
        assert root["encrypted"] is True and root["volumeType"] == "gp3" and root["volumeSize"] == 30


def test_managers_pinned_and_spread_over_zones():
    run = run_program({"managerCount": 5})
    subnets = {s.urn: s for s in run.of_type("aws:ec2/subnet:Subnet")}
    by_id = {f"{s.name}-id": s.inputs for s in subnets.values()}
    managers = sorted(
        (r for r in run.of_type(INSTANCE) if r.inputs["tags"]["swarm:role"] == "manager"),
        key=lambda r: r.inputs["tags"]["Name"],
    )
    zones = [by_id[m.inputs["subnetId"]]["availabilityZone"] for m in managers]
    assert zones == ["eu-west-1a", "eu-west-1b", "eu-west-1c", "eu-west-1a", "eu-west-1b"]
    ips = [m.inputs["privateIp"] for m in managers]
    assert ips == ["10.42.0.10", "10.42.16.10", "10.42.32.10", "10.42.0.11", "10.42.16.11"]
    for manager, ip in zip(managers, ips, strict=True):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(by_id[manager.inputs["subnetId"]]["cidrBlock"])
        # A pinned address cannot be held by two machines: the old one goes first.
        assert manager.delete_before_replace
    workers = [r for r in run.of_type(INSTANCE) if r.inputs["tags"]["swarm:role"] == "worker"]
    assert all("privateIp" not in w.inputs for w in workers)
    assert run.outputs["managerPrivateIps"] == ips


def test_ami_from_al2023_ssm_parameter_matches_architecture():
    run = run_program({"architecture": "arm64"})
    assert ("aws:ssm/getParameter:getParameter", {"name": AL2023_SSM_PARAMETER["arm64"]}) in [
        (t, {"name": a.get("name")}) for t, a in run.invokes
    ]
    instance = run.of_type(INSTANCE)[0]
    assert instance.inputs["ami"] == AMI and instance.inputs["instanceType"] == "t4g.medium"


def test_ami_override_skips_the_lookup():
    run = run_program({"amiId": "ami-0fedcba9876543210"})
    assert not [t for t, _ in run.invokes if t == "aws:ssm/getParameter:getParameter"]
    assert {r.inputs["ami"] for r in run.of_type(INSTANCE)} == {"ami-0fedcba9876543210"}


def test_instances_are_not_replaced_by_a_new_ami_or_user_data(default_run):
    for instance in default_run.of_type(INSTANCE):
        assert set(instance.ignore_changes) >= {"ami", "userDataBase64"}


def test_stacks_never_collide():
    dev, prod = run_program(stack="dev"), run_program(stack="prod")
    dev_names = {r.name for r in dev.resources if r.custom}
    prod_names = {r.name for r in prod.resources if r.custom}
    assert not dev_names & prod_names
    assert dev.outputs["statePrefix"] == "swarm/dev/" and prod.outputs["statePrefix"] == "swarm/prod/"
    for run, stack in ((dev, "dev"), (prod, "prod")):
        (key_pair,) = run.of_type("aws:ec2/keyPair:KeyPair")
        assert stack in key_pair.name
        for r in run.resources:
            if r.custom and "tags" in r.inputs and r.type != "tls:index/privateKey:PrivateKey":
                assert r.inputs["tags"]["swarm:stack"] == stack, r.name


def test_user_tags_reach_every_taggable_resource():
    run = run_program({"tags": {"team": "platform", "cost-centre": "42"}})
    tagged = [r for r in run.resources if "tags" in r.inputs]
    assert len(tagged) > 10
    for r in tagged:
        assert r.inputs["tags"]["team"] == "platform" and r.inputs["tags"]["cost-centre"] == "42"


def test_own_ssh_key_is_used_and_not_exported():
    run = run_program(
        {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn mine", "sshPrivateKey": "PRIVATE-KEY-MARKER"},
        secret_keys=("sshPrivateKey",),
    )
    (key_pair,) = run.of_type("aws:ec2/keyPair:KeyPair")
    assert key_pair.inputs["publicKey"].startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn")
    assert "sshPrivateKey" not in run.outputs
    for command in run.commands():
        assert "privateKey" in command.secret_inputs or "connection" in command.secret_inputs
    # Everything after `ready` connects with your key; `ready` authorizes it first.
    assert run.command("-tokens").inputs["connection"]["privateKey"] == "PRIVATE-KEY-MARKER"
    ready = run.command("-ready-swarm-dev-manager-0")
    assert ready.inputs["connection"]["privateKey"] != "PRIVATE-KEY-MARKER"
    assert ready.inputs["create"].endswith("sudo /usr/local/sbin/swarm-node authorize-key")
    # stdin: the agent's bundle on the first line (the install reads it), then your key.
    assert ready.inputs["stdin"].split("\n", 1)[1].startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn")


def test_the_generated_key_stays_when_you_switch_to_your_own():
    """Dropping the protected key would fail every later `up`; a new key pair or key name
    must not replace (every) machine."""
    generated = run_program()
    own = run_program(
        {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn mine", "sshPrivateKey": "PRIVATE-KEY-MARKER"},
        secret_keys=("sshPrivateKey",),
    )
    for run in (generated, own):
        (key,) = run.of_type("tls:index/privateKey:PrivateKey")
        assert key.protect and key.name == "swarm-dev-nodes-ssh-key"
        for instance in run.of_type(INSTANCE):
            assert {"ami", "userDataBase64", "instanceType", "keyName"} <= set(instance.ignore_changes)
            # Every machine accepts the operator (generated) key from its first boot.
            user_data = gzip.decompress(base64.b64decode(instance.inputs["userDataBase64"])).decode()
            assert "SWARM_OPERATOR_KEY='ssh-ed25519 " in user_data


class RunningElsewhere(SwarmMocks):
    """Machines as they run since yesterday: in another subnet, without a public address
    (made with connectVia private), at the addresses they had then."""

    def new_resource(self, args):
        resource_id, state = super().new_resource(args)
        if args.typ == INSTANCE:
            state.update(subnetId="subnet-yesterday", publicIp="", privateIp=state["privateIp"])
        return resource_id, state


def test_connect_via_and_subnet_ids_replace_no_running_machine(caplog):
    """Both force a replacement, and every manager at once would lose the quorum: they wait
    for the machine's next replacement (the morning, or scripts/swarm roll), and until then
    Pulumi reaches the machine where it is (issue 19, item 18)."""
    run = run_program({"connectVia": "public"}, mocks=RunningElsewhere())
    for instance in run.of_type(INSTANCE):
        assert {"subnetId", "privateIp", "associatePublicIpAddress"} <= set(instance.ignore_changes)
    # No public address of its own yet: a worker is reached at its private one; a manager at
    # the Elastic IP its association gives the running machine now.
    assert run.command("-ready-swarm-dev-worker-0").inputs["connection"]["host"].startswith("10.99.")
    assert run.command("-ready-swarm-dev-manager-0").inputs["connection"]["host"].startswith("198.51.")  # an EIP
    without = run_program({"connectVia": "public", "elasticIps": False}, mocks=RunningElsewhere())
    assert without.command("-ready-swarm-dev-manager-0").inputs["connection"]["host"] == "10.42.0.10"
    warnings = [r.getMessage() for r in caplog.records if "swarm:subnetIds puts it in" in r.getMessage()]
    assert (
        warnings
        and "scripts/swarm roll" in warnings[0]
        and "swarm-dev-manager-0 runs in subnet-yesterday" in ("\n".join(warnings))
    )
