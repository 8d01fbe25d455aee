"""What the nodes leave behind (swarm:logs cloudwatch): a log group, an alarm topic and the
alarms on what the agent publishes, all kept through the night.

The nodes write (rights.py: ShipLogs, PublishMetrics); nothing here reads. The group, the
topic and the alarms are one protected component, a root resource like the state bucket,
so `pulumi destroy --exclude-protected` leaves them: the logs of a night and of a failed
morning are still there once the machines are gone, and a night's backup-failed alarm is
still evaluated after the machine that published it is deleted. The e-mail subscription is
not protected (its address may change) but retained on delete: SNS asks an address to
confirm once, and Subscribe with the same address next morning finds the confirmed one.

Every alarm is registered whatever the config says (a kept resource the program stopped
registering would fail every later `up`): a threshold of 0 turns notifications off. A log
group the state forgot (`swarm:logs none` and the steps that release it, then cloudwatch
again) is adopted, not made again: CloudWatch refuses a second group of the same name. The
topic and the alarms need no such care: creating either again is an update in AWS.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.settings import LogSettings, Settings

# How long the metrics the alarms read are looked at, and how often nodes publish them:
# health-report every minute on the managers, the rest once per morning, night or bootstrap.
MINUTE = 60


@dataclass(frozen=True)
class Alarm:
    key: str  # the resource's and the alarm's name suffix
    metric: str  # what the agent publishes (agent/swarm_agent/metrics.py)
    statistic: str
    comparison: str
    threshold: float
    period: int
    evaluation_periods: int
    what: str  # the alarm's description: what happened and where to look
    enabled: bool = True


def alarms_of(logs: LogSettings, stack: str) -> list[Alarm]:
    look = f"scripts/swarm logs {stack}"
    down = logs.node_down_alarm_minutes
    return [
        # One datapoint each, once: a 5-minute period keeps it in view however late an evaluation comes.
        Alarm("morning-failed", "MorningFailed", "Maximum", "GreaterThanOrEqualToThreshold", 1, 5 * MINUTE, 1,
              f"manager 0's bootstrap failed: the swarm did not come back this morning ({look} --verb bootstrap)"),
        Alarm("morning-slow", "MorningSeconds", "Maximum", "GreaterThanThreshold", logs.morning_alarm_minutes * 60,
              MINUTE, 1, f"manager 0 took more than {logs.morning_alarm_minutes} min from boot to a restored swarm"),
        Alarm("backup-failed", "BackupFailed", "Maximum", "GreaterThanOrEqualToThreshold", 1, 5 * MINUTE, 1,
              f"a backup failed (tonight's, before the teardown?): {look} --verb backup"),
        Alarm("backup-stale", "BackupAgeHours", "Maximum", "GreaterThanThreshold", max(logs.backup_alarm_hours, 1),
              60 * MINUTE, 1, f"the newest backup is older than {logs.backup_alarm_hours} h: a night did not back up",
              enabled=logs.backup_alarm_hours > 0),
        Alarm("quorum-lost", "QuorumLost", "Maximum", "GreaterThanOrEqualToThreshold", 1, MINUTE, 2,
              f"a manager sees no leader for 2 minutes: the swarm has lost its quorum ({look} --journal)"),
        Alarm("nodes-down", "NodesDown", "Minimum", "GreaterThanOrEqualToThreshold", 1, MINUTE, down,
              f"a node has been Down for {down} minutes (scripts/swarm status {stack})"),
    ]  # fmt: skip


def plan_log_group(settings: Settings) -> str | None:
    """The stack's log group if AWS already holds it, else None. A lookup only: called before
    anything is registered. In the state (every morning) the import is no import (Pulumi's
    step generator compares it with the ID in the state); forgotten, it is adopted."""
    if settings.logs is None:
        return None
    try:
        found = aws.cloudwatch.get_log_group(name=settings.logs.group)
    except Exception as error:  # the provider reports "nothing found" as a failed call
        message = str(error)
        if not any(s in message.lower() for s in ("couldn't find", "not found", "does not exist", "empty result")):
            # Without the right to look, go on: a group in the state is kept either way.
            pulumi.log.warn(
                f"could not look for this stack's log group {settings.logs.group} ({message[:300]}); give "
                "Pulumi's credentials logs:DescribeLogGroups (README, 'Logs and alarms')"
            )
        return None
    return found.name or None


class LogStore(pulumi.ComponentResource):
    group_name: pulumi.Output[str]
    group_arn: pulumi.Output[str]
    topic_arn: pulumi.Output[str]

    def __init__(
        self, name: str, settings: Settings, found: str | None = None, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__(
            "swarm:index:LogStore", name, None, pulumi.ResourceOptions.merge(pulumi.ResourceOptions(protect=True), opts)
        )
        logs = settings.logs
        assert logs is not None
        child = pulumi.ResourceOptions(parent=self)
        group = aws.cloudwatch.LogGroup(
            f"{name}-group",
            name=logs.group,
            retention_in_days=logs.retention_days,
            tags={**settings.tags, "Name": logs.group},
            opts=pulumi.ResourceOptions(parent=self, import_=found),
        )
        topic = aws.sns.Topic(f"{name}-alarms", name=logs.topic_name, tags=settings.tags, opts=child)
        for alarm in alarms_of(logs, settings.stack):
            aws.cloudwatch.MetricAlarm(
                f"{name}-{alarm.key}",
                name=f"{settings.cluster_name}-{alarm.key}",
                namespace=logs.namespace,
                metric_name=alarm.metric,
                statistic=alarm.statistic,
                comparison_operator=alarm.comparison,
                threshold=alarm.threshold,
                period=alarm.period,
                evaluation_periods=alarm.evaluation_periods,
                datapoints_to_alarm=alarm.evaluation_periods,
                # No data is the night, or a swarm that is fine: only what a node said counts.
                treat_missing_data="notBreaching",
                alarm_description=alarm.what,
                actions_enabled=alarm.enabled,
                alarm_actions=[topic.arn],
                ok_actions=[topic.arn],
                tags=settings.tags,
                opts=pulumi.ResourceOptions(parent=topic),
            )
        self.group_name = group.name
        self.group_arn = group.arn
        self.topic_arn = topic.arn
        self.register_outputs({"group_name": self.group_name, "topic_arn": self.topic_arn})


def alarm_subscription(name: str, settings: Settings, topic_arn: pulumi.Input[str], parent: pulumi.Resource) -> None:
    """swarm:alarmEmail: retained on delete, so the address confirms once, not every morning."""
    if settings.logs is None or not settings.logs.alarm_email:
        return
    aws.sns.TopicSubscription(
        f"{name}-alarm-email",
        topic=topic_arn,
        protocol="email",
        endpoint=settings.logs.alarm_email,
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True),
    )
