"""CloudWatch alarms on the bed: moto stores them, this evaluates them and notifies.

Moto keeps metric alarms and metric data but never evaluates an alarm nor acts on one;
CloudWatch does both. `Alarms` does it for moto's alarms in the bed's region: every
`EVERY` seconds it reads each alarm's metric over its last `EvaluationPeriods` periods
(one GetMetricStatistics per period), applies the statistic, the comparison, M out of N
(`DatapointsToAlarm`) and `TreatMissingData` (`judge`), and on a change of state sets it
in moto (SetAlarmState) and, with `ActionsEnabled`, publishes CloudWatch's notification
to each SNS topic among the new state's actions (moto's SNS delivers it on, to SQS).

`topic_messages` reads back what reached a topic, through an SQS queue the bed
subscribes to it (`watch`): a test sees the topic deliver, not only the bed publish.
The evaluator watches every topic before it first publishes there; anything else that
publishes to a topic needs `watch` first.

Kinder than CloudWatch, on purpose (the bed's waits are short): it evaluates every 2 s
where CloudWatch does about once a minute and a while after the period, and its periods
slide with the clock (the last one ends now) where CloudWatch's are aligned to the
minute. Left out: the evaluation range (CloudWatch looks back past N periods for real
datapoints before it fills missing ones), metric math and anomaly alarms, percentiles
(ExtendedStatistic), units, composite alarms, alarm actions other than SNS, and the
`AWS/DynamoDB` rule (its alarms always ignore missing data).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
import time
from collections.abc import Callable

OK, ALARM, INSUFFICIENT = "OK", "ALARM", "INSUFFICIENT_DATA"
EVERY = 2.0  # seconds between passes (CloudWatch: about a minute)
STOP_TIMEOUT = 10.0
UNCHECKED = "Unchecked"  # moto's reason for a new alarm, which it puts in OK (AWS: INSUFFICIENT_DATA)
ACCOUNT = "123456789012"
# What CloudWatch's notifications call a region (the Subject's "in ...", the Region field).
REGION_NAMES = {"eu-west-1": "EU (Ireland)", "us-east-1": "US East (N. Virginia)"}

COMPARISONS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (lambda v, t: v >= t, "greater than or equal to"),
    "GreaterThanThreshold": (lambda v, t: v > t, "greater than"),
    "LessThanThreshold": (lambda v, t: v < t, "less than"),
    "LessThanOrEqualToThreshold": (lambda v, t: v <= t, "less than or equal to"),
}


def judge(alarm: dict, values: list[float | None], old: str) -> tuple[str, str]:
    """The state CloudWatch's rules give `alarm` (a DescribeAlarms entry) for the values of
    its last N periods (oldest first, None where no datapoint came), and why.

    All missing: `missing` is INSUFFICIENT_DATA, `ignore` keeps the state, `breaching` is
    ALARM, `notBreaching` OK. Fewer real datapoints than N: `breaching`/`notBreaching`
    fill the gaps; `missing` and `ignore` judge the real ones alone, so fewer than M real
    datapoints alarm when all of them breach (`missing`), or keep the state (`ignore`)."""
    n = int(alarm["EvaluationPeriods"])
    m = int(alarm.get("DatapointsToAlarm") or n)
    treat = alarm.get("TreatMissingData") or "missing"
    threshold = float(alarm["Threshold"])
    crosses, words = COMPARISONS[alarm["ComparisonOperator"]]
    real = [v for v in values if v is not None]
    gaps = len(values) - len(real)
    if not real:
        verdict = {"missing": INSUFFICIENT, "ignore": old, "breaching": ALARM, "notBreaching": OK}[treat]
        if treat in ("missing", "ignore"):
            return verdict, f"Insufficient Data: {gaps} datapoint{'s were' if gaps != 1 else ' was'} unknown."
        return verdict, (
            f"Threshold Crossed: no datapoints were received for {gaps} period{'s' * (gaps != 1)} and "
            f"{gaps} missing datapoint{'s were' if gaps != 1 else ' was'} treated as [{treat[0].upper()}{treat[1:]}]."
        )
    breaching = sum(crosses(v, threshold) for v in real)
    counted = len(real)
    if treat in ("breaching", "notBreaching"):
        counted = len(values)
        breaching += gaps if treat == "breaching" else 0
    needed = min(m, counted)
    state = ALARM if breaching >= needed else OK
    if treat == "ignore" and state == ALARM and breaching < m:
        state = old
    shown = ", ".join(str(v) for v in reversed(real))
    if state == ALARM:
        return state, (
            f"Threshold Crossed: {breaching} out of the last {counted} datapoints [{shown}] "
            f"{'were' if breaching != 1 else 'was'} {words} the threshold ({threshold}) "
            f"(minimum {m} datapoint{'s' * (m != 1)} for OK -> ALARM transition)."
        )
    calm = counted - breaching
    return state, f"Threshold Crossed: {calm} datapoints [{shown}] were not {words} the threshold ({threshold})."


def notification(alarm: dict, old: str, new: str, reason: str, at: datetime.datetime, region: str) -> tuple[str, str]:
    """The Subject and the JSON Message CloudWatch publishes to an alarm's topics."""
    place = REGION_NAMES.get(region, region)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"
    message = {
        "AlarmName": alarm["AlarmName"],
        "AlarmDescription": alarm.get("AlarmDescription"),
        "AWSAccountId": ACCOUNT,
        "AlarmConfigurationUpdatedTimestamp": _iso(alarm.get("AlarmConfigurationUpdatedTimestamp")),
        "NewStateValue": new,
        "NewStateReason": reason,
        "StateChangeTime": stamp,
        "Region": place,
        "AlarmArn": alarm.get("AlarmArn"),
        "OldStateValue": old,
        "OKActions": alarm.get("OKActions", []),
        "AlarmActions": alarm.get("AlarmActions", []),
        "InsufficientDataActions": alarm.get("InsufficientDataActions", []),
        "Trigger": {
            "MetricName": alarm.get("MetricName"),
            "Namespace": alarm.get("Namespace"),
            "StatisticType": "Statistic",
            "Statistic": (alarm.get("Statistic") or "").upper(),
            "Unit": alarm.get("Unit"),
            "Dimensions": [{"value": d["Value"], "name": d["Name"]} for d in alarm.get("Dimensions", [])],
            "Period": alarm.get("Period"),
            "EvaluationPeriods": alarm.get("EvaluationPeriods"),
            "DatapointsToAlarm": alarm.get("DatapointsToAlarm"),
            "ComparisonOperator": alarm.get("ComparisonOperator"),
            "Threshold": alarm.get("Threshold"),
            "TreatMissingData": alarm.get("TreatMissingData") or "missing",
            "EvaluateLowSampleCountPercentile": "",
        },
    }
    return f'{new}: "{alarm["AlarmName"]}" in {place}', json.dumps(message)


def _iso(value) -> str | None:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000") if value else None


class Alarms:
    """The evaluator (a daemon thread once `start`ed) and the topics' read-back."""

    def __init__(self, client: Callable[[str], object], region: str, log: Callable[[str], None] | None = None):
        """`client(service)` is a boto3 client for moto (cloudwatch, sns, sqs)."""
        self.region = region
        self.log = log or (lambda message: None)
        self.cloudwatch, self.sns, self.sqs = client("cloudwatch"), client("sns"), client("sqs")
        self.published: list[tuple[str, str, str]] = []  # (topic ARN, subject, message), as sent
        self._queues: dict[str, str] = {}  # topic ARN -> the watching queue's URL
        self._received: dict[str, list[dict]] = {}  # topic ARN -> SNS envelopes read back
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Alarms:
        self._thread = threading.Thread(target=self._run, name="bed-alarms", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)

    def _run(self) -> None:
        while not self._stop.wait(EVERY):
            try:
                self.evaluate()
            except Exception as error:  # moto going away at close, or a bad alarm: next pass
                self.log(f"alarms: evaluation failed: {type(error).__name__}: {error}")

    def evaluate(self, now: float | None = None) -> list[tuple[str, str, str]]:
        """One pass over every alarm: (name, old state, new state) for each that changed."""
        now = time.time() if now is None else now
        changed = []
        pages = self.cloudwatch.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"])
        for alarm in (a for page in pages for a in page.get("MetricAlarms", [])):
            if not alarm.get("MetricName") or alarm.get("ExtendedStatistic"):
                continue  # metric math and percentiles are not modelled (module docstring)
            unchecked = alarm.get("StateReason", "").startswith(UNCHECKED)
            old = INSUFFICIENT if unchecked else alarm["StateValue"]
            new, reason = judge(alarm, self._values(alarm, now), old)
            if new != old or unchecked:  # moto's first OK is only a placeholder: replace it
                self._change(alarm, old, new, reason, now)
            if new != old:
                changed.append((alarm["AlarmName"], old, new))
        return changed

    def _values(self, alarm: dict, now: float) -> list[float | None]:
        """The statistic of each of the last N periods, oldest first (None: no datapoint)."""
        period, n = int(alarm["Period"]), int(alarm["EvaluationPeriods"])
        end = int(now) + 1  # moto drops the fraction of a second: a datapoint of this second counts
        values = []
        for i in range(n, 0, -1):
            start = datetime.datetime.fromtimestamp(end - i * period, datetime.UTC)
            points = self.cloudwatch.get_metric_statistics(
                Namespace=alarm["Namespace"],
                MetricName=alarm["MetricName"],
                Dimensions=alarm.get("Dimensions", []),
                StartTime=start,
                EndTime=start + datetime.timedelta(seconds=period),
                Period=period,
                Statistics=sorted({alarm["Statistic"], "SampleCount"}),
            )["Datapoints"]
            values.append(_combine(alarm["Statistic"], points))
        return values

    def _change(self, alarm: dict, old: str, new: str, reason: str, now: float) -> None:
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        self.cloudwatch.set_alarm_state(
            AlarmName=alarm["AlarmName"], StateValue=new, StateReason=reason, StateReasonData="{}"
        )
        if new == old:
            return  # the alarm only now says what it already was (INSUFFICIENT_DATA): no change
        self.log(f"alarms: {alarm['AlarmName']} {old} -> {new}: {reason}")
        if not alarm.get("ActionsEnabled", True):
            return
        actions = {ALARM: "AlarmActions", OK: "OKActions", INSUFFICIENT: "InsufficientDataActions"}[new]
        subject, message = notification(alarm, old, new, reason, at, self.region)
        for arn in alarm.get(actions, []):
            if not arn.startswith("arn:aws:sns:"):
                self.log(f"alarms: {alarm['AlarmName']}: action {arn} is not modelled on the bed")
                continue
            self.watch(arn)
            self.sns.publish(TopicArn=arn, Subject=subject, Message=message)
            with self._lock:
                self.published.append((arn, subject, message))

    # -- reading a topic back ------------------------------------------------------------
    def watch(self, topic_arn: str) -> str:
        """Subscribe the bed's SQS queue for `topic_arn` (once); its URL."""
        with self._lock:
            if topic_arn in self._queues:
                return self._queues[topic_arn]
        name = "bed-watch-" + hashlib.sha256(topic_arn.encode()).hexdigest()[:16]
        url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
        with self._lock:
            self._queues.setdefault(topic_arn, url)
            self._received.setdefault(topic_arn, [])
            return self._queues[topic_arn]

    def topic_messages(self, topic_arn: str, timeout: float = 0.0, count: int = 1) -> list[dict]:
        """Every SNS envelope (Subject, Message, TopicArn...) that reached `topic_arn` since
        it was watched, once at least `count` did or `timeout` seconds passed."""
        url = self.watch(topic_arn)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            with self._lock:
                if len(self._received[topic_arn]) >= count:
                    break
            wait = int(max(0, min(1, remaining)))
            answer = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
            for message in answer.get("Messages", []):
                with self._lock:
                    self._received[topic_arn].append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if remaining <= 0 and not answer.get("Messages"):
                break
        with self._lock:
            return list(self._received[topic_arn])


def _combine(statistic: str, points: list[dict]) -> float | None:
    """One period's statistic (moto may split a period it answers into several)."""
    values = [p[statistic] for p in points if statistic in p]
    if not values:
        return None
    if statistic == "Maximum":
        return max(values)
    if statistic == "Minimum":
        return min(values)
    if statistic in ("Sum", "SampleCount"):
        return sum(values)
    counts = [p.get("SampleCount", 1) for p in points]  # Average: weighted by each part's samples
    return sum(v * c for v, c in zip(values, counts, strict=False)) / sum(counts)
