"""Every right a node holds is one statement in components/rights.py and one row of the
README's table (Security: Rights), and the managers' role is exactly those statements."""

from __future__ import annotations

import json
import re

from harness import ROOT

from components.rights import (
    ECR_RIGHTS,
    GROUP_RIGHTS,
    HOLDERS,
    NODE_HOLDERS,
    RIGHTS,
    ecr_repositories,
    group_scope,
    log_scope,
    node_policy,
)

BUCKET_ARN = "arn:aws:s3:::swarm-dev-state-bucket-0a1b2c3"
REPOSITORIES = "arn:aws:ecr:eu-west-1:123456789012:repository/*"
ROLE_ARN = "arn:aws:iam::123456789012:role/swarm-dev-groups"
GROUPS = group_scope(ROLE_ARN, "eu-west-1", "/swarm/swarm/dev/worker-join-token", "swarm-dev")
LOGS = log_scope(ROLE_ARN, "eu-west-1", "/swarm/swarm/dev", "Swarm/swarm/dev")
LOG_GROUP_STREAMS = "arn:aws:logs:eu-west-1:123456789012:log-group:/swarm/swarm/dev:*"


HOLDER_CELLS = {"managers": "managers", "the mirror": "mirror", "group workers": "groups", "every node": "nodes"}


def readme_rights() -> dict[str, tuple[list[str], str]]:
    """Sid -> (the actions its row names, who holds it), from the README's Rights table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Rights", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    return {
        re.findall(r"`([^`]+)`", c[0])[0]: (re.findall(r"`([a-z0-9]+:[A-Za-z]+)`", c[1]), HOLDER_CELLS[c[3]])
        for c in cells
    }


def test_the_readme_table_and_the_rights_module_name_the_same_rights():
    table = readme_rights()
    assert sorted(table) == sorted(r.sid for r in RIGHTS)
    for right in RIGHTS:
        assert table[right.sid] == (list(right.actions), right.holder), right.sid


def test_each_policy_is_its_holder_s_rights_and_nothing_else():
    for holder in HOLDERS:
        rights = [r for r in RIGHTS if r.holder == holder or (r.holder == "nodes" and holder in NODE_HOLDERS)]
        policy = json.loads(
            node_policy(BUCKET_ARN, "swarm/dev/", holder, ecr_repositories=REPOSITORIES, groups=GROUPS, logs=LOGS)
        )
        assert rights and [s["Sid"] for s in policy["Statement"]] == [r.sid for r in rights]
        for statement, right in zip(policy["Statement"], rights, strict=True):
            assert statement["Effect"] == "Allow" and statement["Action"] == list(right.actions)
            assert not any("*" in action for action in statement["Action"])
            scope = "swarm/dev/" + right.under
            want = {"bucket": BUCKET_ARN, "ecr-token": "*", "ecr-repositories": REPOSITORIES, "any": "*",
                    "join-token": GROUPS.join_token, "stack-groups": GROUPS.stack_groups,
                    "log-group": LOG_GROUP_STREAMS, "metrics": "*"}  # fmt: skip
            assert statement["Resource"] == [want.get(right.on, f"{BUCKET_ARN}/{scope}*")]
            condition = statement.get("Condition")
            assert (condition == {"StringLike": {"s3:prefix": [scope, f"{scope}*"]}}) == right.prefix_condition
            if right.on == "metrics":  # "*" is all PutMetricData takes: the namespace narrows it
                assert condition == {"StringEquals": {"cloudwatch:namespace": "Swarm/swarm/dev"}}


def test_the_mirror_reaches_its_cache_and_not_one_backup():
    """The mirror's key, stolen from a registry that answers anyone on the managers' port:
    nothing under backups/, nothing of another stack, no listing beyond its cache."""
    policy = json.loads(node_policy(BUCKET_ARN, "swarm/dev/", "mirror"))
    for statement in policy["Statement"]:
        for resource in statement["Resource"]:
            assert resource == BUCKET_ARN or resource == f"{BUCKET_ARN}/swarm/dev/mirror/*", resource
        if "s3:ListBucket" in statement["Action"]:
            assert statement["Condition"]["StringLike"]["s3:prefix"] == ["swarm/dev/mirror/", "swarm/dev/mirror/*"]
    bucket_wide = {a for s in policy["Statement"] if s["Resource"] == [BUCKET_ARN] and "Condition" not in s
                   for a in s["Action"]}  # fmt: skip
    assert bucket_wide == {"s3:GetBucketLocation", "s3:ListBucketMultipartUploads"}
    # And the managers' role keeps what the backups need, without the registry's extras.
    managers = json.loads(node_policy(BUCKET_ARN, "swarm/dev/"))
    assert not {"s3:GetBucketLocation", "s3:ListBucketMultipartUploads"} & {
        a for s in managers["Statement"] for a in s["Action"]
    }


def test_nothing_else_in_the_program_writes_a_policy_for_the_nodes():
    writers = [
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "components").rglob("*.py")
        if re.search(r'"Statement"\s*:', path.read_text()) and path.name != "rights.py"
    ]
    # state.py holds the bucket's TLS-only policy and the role's trust policy; data.py the trust
    # policy of Data Lifecycle Manager's own role (dlm.amazonaws.com): none gives a node a right.
    assert sorted(writers) == ["components/data.py", "components/state.py"]
    state = (ROOT / "components" / "state.py").read_text()
    assert state.count('"Effect": "Allow"') == 1 and '"Action": "sts:AssumeRole"' in state
    data = (ROOT / "components" / "data.py").read_text()
    assert data.count('"Effect": "Allow"') == 1 and '"Principal": {"Service": "dlm.amazonaws.com"}' in data


def test_ecr_rights_are_pull_only_on_this_account_s_repositories_and_only_when_asked_for():
    """The token GetAuthorizationToken returns can do what the role may: pull, in this
    region and account. Without swarm:ecrRefresh the role holds no ECR right at all."""
    assert ecr_repositories("arn:aws:iam::123456789012:role/swarm-dev-node-role", "eu-west-1") == REPOSITORIES
    assert ecr_repositories("arn:aws-cn:iam::210987654321:role/r", "cn-north-1") == (
        "arn:aws-cn:ecr:cn-north-1:210987654321:repository/*"
    )
    policy = json.loads(node_policy(BUCKET_ARN, "swarm/dev/", ecr_repositories=REPOSITORIES))
    ecr = [s for s in policy["Statement"] if any(a.startswith("ecr:") for a in s["Action"])]
    assert {a for s in ecr for a in s["Action"]} == {
        "ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
        "ecr:BatchCheckLayerAvailability",
    }  # fmt: skip
    # "*" only for the one action that takes no other resource.
    assert [s["Action"] for s in ecr if s["Resource"] == ["*"]] == [["ecr:GetAuthorizationToken"]]
    without = json.loads(node_policy(BUCKET_ARN, "swarm/dev/"))
    assert not [s for s in without["Statement"] if any(a.startswith("ecr:") for a in s["Action"])]
    assert all(r.holder == "managers" for r in RIGHTS if r.on in ECR_RIGHTS)  # never the mirror's key


def test_group_rights_read_one_token_and_the_agent_and_the_managers_let_go_only_this_stack_s_groups():
    """A group worker's role reaches the join token and agent/ and nothing else: no backup,
    no listing, no Auto Scaling call. The managers' group rights exist only with groups."""
    workers = json.loads(node_policy(BUCKET_ARN, "swarm/dev/", "groups", groups=GROUPS))
    assert {(a, r) for s in workers["Statement"] for a in s["Action"] for r in s["Resource"]} == {
        ("ssm:GetParameter", "arn:aws:ssm:eu-west-1:123456789012:parameter/swarm/swarm/dev/worker-join-token"),
        ("s3:GetObject", f"{BUCKET_ARN}/swarm/dev/agent/*"),
    }
    managers = json.loads(node_policy(BUCKET_ARN, "swarm/dev/", groups=GROUPS))
    let_go = [s for s in managers["Statement"] if "autoscaling:CompleteLifecycleAction" in s["Action"]]
    assert let_go[0]["Resource"] == [
        "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:autoScalingGroupName/swarm-dev-*"
    ]
    without = json.loads(node_policy(BUCKET_ARN, "swarm/dev/"))
    assert not [s for s in without["Statement"] if any(a.startswith(("autoscaling:", "ssm:")) for a in s["Action"])]
    assert all(r.holder != "mirror" for r in RIGHTS if r.on in GROUP_RIGHTS)


def test_a_node_that_ships_logs_writes_its_stack_s_streams_and_metrics_and_reads_nothing():
    """The pinned workers' role (and an own host's logs-only key) holds the logs rights and
    nothing else: no backup, no reading a log back, no alarm; none of it without swarm:logs."""
    for holder in ("workers", "nodes"):
        policy = json.loads(node_policy(BUCKET_ARN, "swarm/dev/", holder, logs=LOGS))
        assert {(a, r) for s in policy["Statement"] for a in s["Action"] for r in s["Resource"]} == {
            ("logs:CreateLogStream", LOG_GROUP_STREAMS),
            ("logs:PutLogEvents", LOG_GROUP_STREAMS),
            ("cloudwatch:PutMetricData", "*"),
        }
        assert json.loads(node_policy(BUCKET_ARN, "swarm/dev/", holder))["Statement"] == []
    for holder in NODE_HOLDERS:
        statements = json.loads(node_policy(BUCKET_ARN, "swarm/dev/", holder))["Statement"]
        actions = {a for s in statements for a in s["Action"]}
        assert not {a for a in actions if a.startswith(("logs:", "cloudwatch:"))}
