"""Logs and alarms (`swarm:logs`): what outlives the nodes when they go at night.

`cloudwatch` (the default on EC2) sends every container's output (Docker's awslogs driver,
with `docker logs` and `docker service logs` still answering on the node) and the nodes'
own journals and agent verbs to one CloudWatch Logs group per stack, and raises alarms on
an SNS topic; both are kept through the night. `none` keeps everything on the nodes, as
before (the default with swarm:hosts, whose machines need a logs-only key to ship:
`swarm:logsAccessKeyId` / `swarm:logsSecretAccessKey`).

The alarms' thresholds are settings; an alarm is never removed by one (a kept resource
the program stopped registering would fail every later `up`): `backupAlarmHours 0` turns
that alarm's notifications off and keeps it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi

from components.settings.base import NAMESPACE, Reader

LOG_TARGETS = ("cloudwatch", "none")
# What CloudWatch Logs accepts for a group's retention (PutRetentionPolicy).
RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                  2922, 3288, 3653)  # fmt: skip
KEY_NAMES = ("logsAccessKeyId", "logsSecretAccessKey")
_URL = re.compile(r"^https?://[^\s/]+")
# Loose on purpose: SNS sends a confirmation, which is the real check of an address.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class LogSettings:
    group: str  # the CloudWatch Logs group: /swarm/<project>/<stack>
    namespace: str  # the CloudWatch metrics' namespace: Swarm/<project>/<stack>
    retention_days: int
    alarm_email: str | None
    morning_alarm_minutes: int
    backup_alarm_hours: int  # 0: that alarm is kept with its notifications off
    node_down_alarm_minutes: int
    logs_endpoint: str | None  # swarm:logsEndpoint: a stand-in of CloudWatch Logs (the test bed's)
    monitoring_endpoint: str | None  # swarm:monitoringEndpoint: a stand-in of CloudWatch
    # swarm:hosts: the logs-only key every host ships with (EC2 nodes use their roles)
    access_key_id: pulumi.Output[str] | None = None
    secret_access_key: pulumi.Output[str] | None = None

    @property
    def topic_name(self) -> str:
        return self.group.strip("/").replace("/", "-") + "-alarms"


def read_logs(
    r: Reader, config: pulumi.Config, where: tuple[str, str, str | None], hosts_mode: bool
) -> LogSettings | None:
    """swarm:logs and the settings that go with it (`where`: project, stack, region); None
    when logs stay on the nodes."""
    project, stack, region = where
    target = (r.string("logs") or ("none" if hosts_mode else "cloudwatch")).lower()
    if target not in LOG_TARGETS:
        r.problem("logs", f"must be cloudwatch or none (got {target!r})", "cloudwatch")
        return None
    if target == "cloudwatch" and not region:
        r.problems.append(
            f"{NAMESPACE}:logs cloudwatch needs the stack's region (its log group and alarms live there); "
            f"fix: pulumi config set aws:region eu-west-1 (or pulumi config set {NAMESPACE}:logs none)"
        )
    keys = _read_keys(r, config, hosts_mode, target)
    retention = r.integer("logRetentionDays", "30", lambda v: v in RETENTION_DAYS, "one of CloudWatch's " + _days())
    morning = r.integer("morningAlarmMinutes", "20", lambda v: 1 <= v <= 1440, "between 1 and 1440")
    backup_hours = r.integer("backupAlarmHours", "26", lambda v: v == 0 or 2 <= v <= 720, "0 (off) or 2 to 720")
    node_down = r.integer("nodeDownAlarmMinutes", "5", lambda v: 1 <= v <= 60, "between 1 and 60")
    email = r.string("alarmEmail")
    if email and not _EMAIL.match(email):
        r.problem("alarmEmail", f"is not an e-mail address (got {email!r})", "oncall@example.com")
    endpoints = {}
    for key, example in (
        ("logsEndpoint", "https://logs.eu-west-1.amazonaws.com"),
        ("monitoringEndpoint", "https://monitoring.eu-west-1.amazonaws.com"),
    ):
        endpoints[key] = r.string(key)
        if endpoints[key] and not _URL.match(endpoints[key]):
            r.problem(key, f"must be an http(s) URL (got {endpoints[key]!r})", example)
    if target == "none":
        if email:
            r.problems.append(
                f"{NAMESPACE}:alarmEmail has no alarms to send with swarm:logs none; fix: pulumi config set "
                f"{NAMESPACE}:logs cloudwatch (or pulumi config rm {NAMESPACE}:alarmEmail)"
            )
        return None
    return LogSettings(
        group=f"/{NAMESPACE}/{project}/{stack}",
        namespace=f"Swarm/{project}/{stack}",
        retention_days=retention,
        alarm_email=email,
        morning_alarm_minutes=morning,
        backup_alarm_hours=backup_hours,
        node_down_alarm_minutes=node_down,
        logs_endpoint=endpoints["logsEndpoint"],
        monitoring_endpoint=endpoints["monitoringEndpoint"],
        access_key_id=keys[0],
        secret_access_key=keys[1],
    )


def _days() -> str:
    return ", ".join(str(d) for d in RETENTION_DAYS)


def _read_keys(
    r: Reader, config: pulumi.Config, hosts_mode: bool, target: str
) -> tuple[pulumi.Output[str] | None, pulumi.Output[str] | None]:
    """The hosts' logs-only key: required with swarm:hosts and logs cloudwatch, refused elsewhere.
    Never the S3 keys: a worker that ships its logs must not be able to read a backup."""
    for key in KEY_NAMES:
        present = r.raw(key) is not None
        if not hosts_mode and present:
            r.problems.append(
                f"{NAMESPACE}:{key} is for machines you bring (swarm:hosts); EC2 nodes ship with their "
                f"instance role; fix: pulumi config rm {NAMESPACE}:{key}"
            )
        elif hosts_mode and target == "cloudwatch" and not present:
            r.problems.append(
                f"{NAMESPACE}:{key} is required with swarm:hosts and swarm:logs cloudwatch (a key that may only "
                f"write this stack's logs and metrics: README, Rights); fix: pulumi config set --secret "
                f"{NAMESPACE}:{key} <value> (or pulumi config set {NAMESPACE}:logs none)"
            )
        elif hosts_mode and target != "cloudwatch" and present:
            r.problems.append(
                f"{NAMESPACE}:{key} is not used with swarm:logs {target}; fix: pulumi config rm {NAMESPACE}:{key}"
            )
    if not (hosts_mode and target == "cloudwatch"):
        return None, None
    return config.get_secret(KEY_NAMES[0]), config.get_secret(KEY_NAMES[1])
