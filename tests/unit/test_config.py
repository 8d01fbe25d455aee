"""Configuration: defaults that work, and every bad value stopped before any resource exists."""

from __future__ import annotations

import base64
import gzip
import re

import pytest
import yaml
from harness import ROOT, SwarmMocks, run_program, subnet_mock

from components.settings import DEFAULTS, ConfigError, architecture_of_instance_type
from components.settings.base import KNOWN_KEYS

VPC = "vpc-0123456789abcdef0"

# (case, config, key the error must name)
BAD_CONFIGS = [
    ("even managers", {"managerCount": 4}, "managerCount"),
    ("zero managers", {"managerCount": 0}, "managerCount"),
    ("more than seven managers", {"managerCount": 9}, "managerCount"),
    ("managers not a number", {"managerCount": "three"}, "managerCount"),
    ("negative workers", {"workerCount": -1}, "workerCount"),
    ("missing sshAllowedCidrs", {"sshAllowedCidrs": None}, "sshAllowedCidrs"),
    ("autolock not a boolean", {"autolock": "yes"}, "autolock"),
    ("empty sshAllowedCidrs", {"sshAllowedCidrs": []}, "sshAllowedCidrs"),
    ("bad CIDR", {"sshAllowedCidrs": ["10.0.0.300/24"]}, "sshAllowedCidrs"),
    ("CIDR with host bits", {"sshAllowedCidrs": ["203.0.113.7/24"]}, "sshAllowedCidrs"),
    ("unknown architecture", {"architecture": "sparc"}, "architecture"),
    ("arm instance on x86", {"instanceType": "t4g.medium"}, "instanceType"),
    ("x86 instance on arm", {"architecture": "arm64", "instanceType": "m5.large"}, "instanceType"),
    ("not an instance type", {"instanceType": "huge"}, "instanceType"),
    ("VPC CIDR too small", {"vpcCidr": "10.0.0.0/28"}, "vpcCidr"),
    ("VPC CIDR not a CIDR", {"vpcCidr": "ten.0.0.0/16"}, "vpcCidr"),
    ("subnet too small for pinned managers", {"vpcCidr": "10.0.0.0/24", "azCount": 1, "managerCount": 7}, "vpcCidr"),
    ("retention under 7 days", {"backupRetentionDays": 3}, "backupRetentionDays"),
    ("mirror on a swarm port", {"mirrorPort": 2377}, "mirrorPort"),
    ("mirror not a boolean", {"mirror": "yes"}, "mirror"),
    ("unknown restore source", {"restoreFrom": "yesterday"}, "restoreFrom"),
    ("unsigned restores of whatever latest is", {"restoreUnsigned": True}, "restoreUnsigned"),
    ("unsigned restore not a boolean", {"restoreUnsigned": "1", "restoreFrom": "backups/a.tar.gz"}, "restoreUnsigned"),
    ("vpcId without subnets", {"vpcId": VPC}, "subnetIds"),
    ("subnets without vpcId", {"subnetIds": ["subnet-0123456789abcdef0"]}, "vpcId"),
    ("public key without private key", {"sshPublicKey": "ssh-ed25519 AAAAC3Nz mine"}, "sshPrivateKey"),
    ("bad ssh user", {"sshUser": "Root User"}, "sshUser"),
    ("bad bucket name", {"stateBucketName": "My_Bucket"}, "stateBucketName"),
    ("tags not a map", {"tags": "team=platform"}, "tags"),
    ("bad AMI id", {"amiId": "ubuntu-latest"}, "amiId"),
    ("zero root volume", {"rootVolumeSize": 0}, "rootVolumeSize"),
    ("unknown connectVia", {"connectVia": "bastion"}, "connectVia"),
    ("bad mirror upstream", {"mirrorUpstream": "docker.io"}, "mirrorUpstream"),
]


def config_error(config: dict, mocks: SwarmMocks | None = None) -> tuple[list[str], list]:
    with pytest.raises(ConfigError) as caught:
        run_program(config, mocks=mocks)
    return caught.value.problems, caught.value.registered


@pytest.mark.parametrize(("case", "config", "key"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_value_stops_before_any_resource_with_the_fix(case, config, key):
    problems, registered = config_error(config)
    assert registered == [], f"{case}: resources were registered before the error"
    lines = [p for p in problems if p.startswith(f"swarm:{key} ")]
    assert lines, f"{case}: no problem names swarm:{key}: {problems}"
    for line in lines:
        assert "\n" not in line
        assert "fix: pulumi config set " in line and f"swarm:{key}" in line.split("fix:")[1]


def test_all_problems_are_reported_at_once():
    problems, _ = config_error({"managerCount": 2, "workerCount": -3, "architecture": "mips"})
    keys = sorted(p.split()[0] for p in problems)
    assert keys == ["swarm:architecture", "swarm:managerCount", "swarm:workerCount"]


def test_missing_region_names_aws_region(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    problems, _ = config_error({"aws:region": None})
    assert any(p.startswith("aws:region ") and "pulumi config set aws:region" in p for p in problems)


def test_host_bits_hint_shows_the_network():
    problems, _ = config_error({"sshAllowedCidrs": ["203.0.113.7/24"]})
    assert "did you mean 203.0.113.0/24?" in problems[0]


def test_more_zones_than_the_region_has():
    problems, registered = config_error({"azCount": 4}, mocks=SwarmMocks(zones=["eu-west-1a", "eu-west-1b"]))
    assert registered == []
    assert problems[0].startswith("swarm:azCount ")


def test_existing_subnet_in_another_vpc():
    mocks = SwarmMocks(
        subnets={"subnet-0aaaaaaaaaaaaaaaa": subnet_mock("10.1.0.0/24", "eu-west-1a", "vpc-0ffffffffffffffff")}
    )
    problems, registered = config_error({"vpcId": VPC, "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"]}, mocks=mocks)
    assert registered == []
    assert problems[0].startswith("swarm:subnetIds ") and "vpc-0ffffffffffffffff" in problems[0]


def test_existing_subnet_too_small():
    mocks = SwarmMocks(subnets={"subnet-0aaaaaaaaaaaaaaaa": subnet_mock("10.1.0.0/28", "eu-west-1a")})
    problems, registered = config_error(
        {"vpcId": VPC, "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"], "managerCount": 7, "workerCount": 2}, mocks=mocks
    )
    assert registered == []
    assert problems[0].startswith("swarm:subnetIds ") and "too small" in problems[0]


def test_private_key_without_public_key():
    problems, _ = config_error({"sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----"})
    assert any(p.startswith("swarm:sshPublicKey ") for p in problems)


def test_comma_separated_cidrs_are_accepted():
    run = run_program({"sshAllowedCidrs": "203.0.113.0/24, 198.51.100.7/32"})
    ssh_rules = [
        r
        for r in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.inputs.get("fromPort") == 22
    ]
    assert sorted(r.inputs["cidrIpv4"] for r in ssh_rules) == ["198.51.100.7/32", "203.0.113.0/24"]


def test_pulumi_yaml_declares_the_same_defaults_as_the_program():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "swarm" and project["runtime"]["name"] == "python"
    declared = {k.split(":", 1)[1]: v for k, v in project["config"].items()}
    for key, default in DEFAULTS.items():
        assert declared[key]["default"] == default, key
    for key, spec in declared.items():
        if key in DEFAULTS:
            continue
        # Every key declares a default, empty if it has none: Pulumi requires a declared
        # key without one, and sshAllowedCidrs is not needed with swarm:hosts (the
        # program itself requires it on EC2).
        assert "default" in spec and spec["default"] in ("", []), key


def test_empty_strings_from_pulumi_yaml_mean_unset():
    run = run_program({"instanceType": "", "amiId": "", "vpcId": "", "subnetIds": [], "s3Endpoint": ""})
    instance = run.of_type("aws:ec2/instance:Instance")[0]
    assert instance.inputs["instanceType"] == "t3.medium"
    assert len(run.of_type("aws:ec2/vpc:Vpc")) == 1


@pytest.mark.parametrize(
    ("instance_type", "arch"),
    [
        ("t3.medium", "x86_64"),
        ("t4g.medium", "arm64"),
        ("m7gd.xlarge", "arm64"),
        ("c7gn.large", "arm64"),
        ("g4dn.xlarge", "x86_64"),
        ("g5g.xlarge", "arm64"),
        ("a1.large", "arm64"),
        ("m6i.large", "x86_64"),
        ("im4gn.large", "arm64"),
        ("nonsense", None),
    ],
)
def test_architecture_of_instance_type(instance_type, arch):
    assert architecture_of_instance_type(instance_type) == arch


def test_region_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-east-2")
    run = run_program({"aws:region": None})
    user_data = run.of_type("aws:ec2/instance:Instance")[0].inputs["userDataBase64"]
    assert "SWARM_REGION=us-east-2" in gzip.decompress(base64.b64decode(user_data)).decode()


@pytest.mark.parametrize(
    ("config", "fix"),
    [
        ({"managerCount": 4}, "pulumi config set swarm:managerCount 3"),
        ({"sshAllowedCidrs": None}, "pulumi config set --path 'swarm:sshAllowedCidrs[0]' 203.0.113.10/32"),
        ({"tags": "x"}, "pulumi config set --path 'swarm:tags.team' platform"),
        ({"subnetIds": ["subnet-0123456789abcdef0"]}, "pulumi config set swarm:vpcId vpc-0123456789abcdef0"),
        ({"backupRetentionDays": 1}, "pulumi config set swarm:backupRetentionDays 30"),
    ],
)
def test_fix_is_a_command_that_works(config, fix):
    problems, _ = config_error(config)
    assert any(p.endswith(f"fix: {fix}") for p in problems), problems


def test_a_pinned_restore_source_warns(caplog):
    def warned() -> bool:
        found = any("pulumi config rm swarm:restoreFrom" in r.getMessage() for r in caplog.records)
        caplog.clear()
        return found

    run_program()
    assert not warned()
    run_program({"restoreFrom": "backups/20261121T190000Z.tar.gz"})
    assert warned()


def test_nightly_workflow_runs_the_cycle_verbs():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly.yml").read_text())
    steps = workflow["jobs"]["cycle"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert 'scripts/swarm night --stack "$STACK"' in runs and 'scripts/swarm morning --stack "$STACK"' in runs
    crons = [entry["cron"] for entry in workflow[True]["schedule"]]  # YAML 1.1 reads `on` as True
    assert len(crons) == 2
    for step in steps:
        if "if" in step:
            assert any(cron in step["if"] for cron in crons)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("workercount", "workerCount"), ("managerCout", "managerCount"), ("backupOnDestory", "backupOnDestroy")],
)
def test_a_typo_in_a_key_stops_the_program_naming_the_closest_key(typo, meant):
    problems, registered = config_error({typo: 3})
    assert registered == []
    (line,) = [p for p in problems if p.startswith(f"swarm:{typo} ")]
    assert f"did you mean swarm:{meant}?" in line
    assert f"fix: pulumi config rm swarm:{typo} && pulumi config set swarm:{meant} <value>" in line


def test_a_key_like_no_other_is_refused_too():
    problems, _ = config_error({"frobnicate": "x"})
    assert problems == [
        "swarm:frobnicate is not a setting of this program (the settings are in the README's Configuration "
        "table); fix: pulumi config rm swarm:frobnicate"
    ]


def test_every_key_the_program_reads_or_declares_is_known():
    """KNOWN_KEYS must grow with the settings: a key read but not known would be refused."""
    readers = re.compile(r'\b(?:r\.(?:raw|string|string_list|string_map|boolean|integer)|config\.get\w*)\("(\w+)"')
    read = set()
    for path in (ROOT / "components" / "settings").glob("*.py"):
        read |= set(readers.findall(path.read_text()))
    assert len(read) > 20, read  # the pattern still finds the readers
    assert read <= KNOWN_KEYS, read - KNOWN_KEYS
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert {k.split(":", 1)[1] for k in project["config"]} <= KNOWN_KEYS
