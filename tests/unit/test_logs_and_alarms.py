"""Logs and alarms (swarm:logs) under mocks: one kept log group, alarm topic and six alarms
per stack on EC2 by default; every node told where to ship (dockerd's awslogs driver
through daemon.json, the agent through /etc/swarm/env); pinned workers get a role that
writes logs and nothing else; own hosts a logs-only key; bad settings refused first."""

from __future__ import annotations

import json

import pytest
from harness import SwarmMocks, run_program
from test_formation import user_data_of
from test_hosts import assignment, config_problems, hosts_config, run_hosts

LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
INSTANCE = "aws:ec2/instance:Instance"
PROFILE = "aws:iam/instanceProfile:InstanceProfile"
LOGS_KEY, LOGS_SECRET = "AKIAMOCKLOGSONLY0001", "mock/logs/only/secret/00000000000000000000"


def test_on_ec2_the_stack_keeps_a_log_group_a_topic_and_six_alarms():
    run = run_program({})
    (group,) = run.of_type(LOG_GROUP)
    assert group.inputs["name"] == "/swarm/swarm/dev" and group.inputs["retentionInDays"] == 30
    (topic,) = run.of_type(TOPIC)
    assert topic.inputs["name"] == "swarm-swarm-dev-alarms"
    alarms = {a.inputs["name"]: a.inputs for a in run.of_type(ALARM)}
    assert sorted(alarms) == [f"swarm-dev-{k}" for k in sorted(
        ["morning-failed", "morning-slow", "backup-failed", "backup-stale", "quorum-lost", "nodes-down"])]  # fmt: skip
    for alarm in alarms.values():
        assert alarm["namespace"] == "Swarm/swarm/dev" and alarm["treatMissingData"] == "notBreaching"
        assert len(alarm["alarmActions"]) == 1 and alarm["alarmActions"] == alarm["okActions"]
        assert alarm["actionsEnabled"] is True
    failed = alarms["swarm-dev-morning-failed"]
    assert (failed["metricName"], failed["statistic"], failed["threshold"]) == ("MorningFailed", "Maximum", 1)
    assert alarms["swarm-dev-morning-slow"]["threshold"] == 20 * 60
    assert alarms["swarm-dev-nodes-down"]["evaluationPeriods"] == 5
    # Kept through the night, all of them: a root component, protected like the state bucket.
    assert all(r.protect for r in [group, topic, *run.of_type(ALARM)])
    assert "SwarmCluster" not in run.named("swarm-dev-logs").urn  # not a child the cluster could drop
    assert run.outputs["logGroup"] == "/swarm/swarm/dev" and "alarmTopicArn" in run.outputs
    assert not run.of_type(SUBSCRIPTION)


def test_thresholds_are_settings_and_zero_keeps_the_alarm_with_notifications_off():
    run = run_program({"backupAlarmHours": 0, "morningAlarmMinutes": 45, "logRetentionDays": 90,
                       "alarmEmail": "oncall@example.com"})  # fmt: skip
    alarms = {a.inputs["name"]: a.inputs for a in run.of_type(ALARM)}
    assert alarms["swarm-dev-backup-stale"]["actionsEnabled"] is False
    assert alarms["swarm-dev-morning-slow"]["threshold"] == 45 * 60
    assert run.of_type(LOG_GROUP)[0].inputs["retentionInDays"] == 90
    (subscription,) = run.of_type(SUBSCRIPTION)
    assert subscription.inputs["protocol"] == "email" and subscription.inputs["endpoint"] == "oncall@example.com"
    # Not protected (the address may change); retained on delete instead (components/logs.py).
    assert not subscription.protect


def test_every_node_is_told_where_to_ship_and_dockerd_logs_non_blocking_through_awslogs():
    run = run_program({"logsEndpoint": "http://10.0.0.1:5000", "monitoringEndpoint": "http://10.0.0.1:5000"})
    for name in ("manager-0", "worker-0"):
        text = user_data_of(run, name)
        assert assignment(text, "SWARM_LOG_GROUP") == "/swarm/swarm/dev"
        assert assignment(text, "SWARM_METRICS_NAMESPACE") == "Swarm/swarm/dev"
        assert assignment(text, "SWARM_LOGS_ENDPOINT") == assignment(text, "SWARM_METRICS_ENDPOINT")
        assert '"log-driver\\": \\"awslogs\\"' in text and '\\"mode\\": \\"non-blocking\\"' in text
        assert "$SWARM_NODE_NAME/containers/{{.Name}}" in text


def test_pinned_workers_hold_a_logs_only_role_and_none_without_logs():
    run = run_program({})
    policy = json.loads(run.named("swarm-dev-worker-rights").inputs["policy"])
    assert sorted(s["Sid"] for s in policy["Statement"]) == ["PublishMetrics", "ShipLogs"]
    workers = [i for i in run.of_type(INSTANCE) if i.inputs["tags"]["swarm:role"] == "worker"]
    assert {i.inputs["iamInstanceProfile"] for i in workers} == {"swarm-dev-worker-profile"}
    off = run_program({"logs": "none"})
    assert not off.of_type(LOG_GROUP) and not off.of_type(ALARM) and off.outputs["logGroup"] == ""
    assert [p.name for p in off.of_type(PROFILE)] == ["swarm-dev-node-profile"]
    assert all(not i.inputs.get("iamInstanceProfile") for i in off.of_type(INSTANCE)
               if i.inputs["tags"]["swarm:role"] == "worker")  # fmt: skip
    manager = json.loads(off.named("swarm-dev-node-state-access").inputs["policy"])
    assert not [s for s in manager["Statement"] if s["Sid"] in ("ShipLogs", "PublishMetrics")]
    assert assignment(user_data_of(off, "worker-0"), "SWARM_LOG_GROUP") == ""


def test_own_hosts_ship_with_a_logs_only_key_on_every_host_never_the_s3_keys():
    run = run_hosts(logs="cloudwatch", logsAccessKeyId=LOGS_KEY, logsSecretAccessKey=LOGS_SECRET)
    provisions = [r for r in run.resources if "provision-" in r.name]
    assert provisions and all(assignment(p.inputs["stdin"], "SWARM_LOGS_ACCESS_KEY_ID") == LOGS_KEY
                              for p in provisions)  # fmt: skip
    assert all(LOGS_SECRET not in p.inputs["create"] and "stdin" in p.secret_inputs for p in provisions)
    workers = [p for p in provisions if assignment(p.inputs["stdin"], "SWARM_ROLE") == "worker"]
    assert workers and all(assignment(p.inputs["stdin"], "SWARM_AWS_ACCESS_KEY_ID") is None for p in workers)
    assert run.of_type(LOG_GROUP) and all(not p.type.startswith("aws:iam/") for p in run.resources)
    # Off by default with swarm:hosts: they have no key to ship with.
    assert not run_hosts().of_type(LOG_GROUP)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"logs": "splunk"}, "swarm:logs must be cloudwatch or none (got 'splunk')"),
        ({"logRetentionDays": 10}, "swarm:logRetentionDays must be one of CloudWatch's 1, 3, 5"),
        ({"alarmEmail": "oncall"}, "swarm:alarmEmail is not an e-mail address"),
        ({"logs": "none", "alarmEmail": "a@b.io"}, "swarm:alarmEmail has no alarms to send with swarm:logs none"),
        ({"logsEndpoint": "logs.local"}, "swarm:logsEndpoint must be an http(s) URL"),
        ({"nodeDownAlarmMinutes": 0}, "swarm:nodeDownAlarmMinutes must be between 1 and 60"),
        ({"backupAlarmHours": 1}, "swarm:backupAlarmHours must be 0 (off) or 2 to 720"),
        ({"logsAccessKeyId": LOGS_KEY}, "swarm:logsAccessKeyId is for machines you bring"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_made(config, fragment):
    problems = config_problems(config)
    assert any(fragment in p for p in problems), problems
    assert all("fix: " in p for p in problems)


def test_own_hosts_with_cloudwatch_need_both_halves_of_the_logs_key():
    problems = config_problems(hosts_config(logs="cloudwatch"))
    assert any("swarm:logsAccessKeyId is required with swarm:hosts and swarm:logs cloudwatch" in p for p in problems)
    assert any("pulumi config set --secret swarm:logsSecretAccessKey" in p for p in problems)


class Mocks(SwarmMocks):
    """Records the ID each log group was registered to import (Pulumi's `import_`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.imports: dict[str, str] = {}

    def new_resource(self, args):
        if args.typ == LOG_GROUP:
            self.imports[args.name] = args.resource_id or ""
        return super().new_resource(args)


def test_a_log_group_the_state_forgot_is_adopted_not_made_again():
    """CloudWatch refuses a second group of a name: after `logs none` and the steps that
    forget the group, `logs cloudwatch` again adopts it (in the state, the import is none)."""
    held = Mocks(log_groups=["/swarm/swarm/dev"])
    run_program({}, mocks=held)
    assert held.imports == {"swarm-dev-logs-group": "/swarm/swarm/dev"}
    fresh = Mocks(log_groups=["/swarm/swarm/prod"])  # another stack's is not this one's
    run_program({}, mocks=fresh)
    assert fresh.imports == {"swarm-dev-logs-group": ""}
    assert [a["name"] for t, a in fresh.invokes if "getLogGroup" in t] == ["/swarm/swarm/dev"]
    off = Mocks(log_groups=["/swarm/swarm/dev"])
    run_program({"logs": "none"}, mocks=off)
    assert off.imports == {} and not [t for t, _ in off.invokes if "getLogGroup" in t]
