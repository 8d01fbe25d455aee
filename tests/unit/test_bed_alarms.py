"""The bed's CloudWatch alarms (testbed/alarms.py) against moto on loopback, and the engine's
answers for the log group, the alarms' topic, its subscriptions and the metric alarms.
No root, no bed, no machines: seconds."""

from __future__ import annotations

import datetime
import json
import secrets
import time

import boto3
import pytest
from testbed import alarms as bed_alarms
from testbed import providers
from testbed.alarms import ALARM, INSUFFICIENT, OK, Alarms, judge
from testbed.records import EngineError, State

REGION = "eu-west-1"
NAMESPACE = "Swarm"
DIMENSIONS = [{"Name": "Stack", "Value": "swarm/dev"}]


@pytest.fixture(scope="module")
def moto_endpoint():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def make_client(endpoint: str):
    def client(service: str):
        return boto3.client(
            service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="t", aws_secret_access_key="t"
        )

    return client


@pytest.fixture
def aws(moto_endpoint):
    return make_client(moto_endpoint)


@pytest.fixture
def evaluator(aws):
    """An evaluator driven pass by pass (`evaluate`); alarms of earlier tests are gone."""
    cloudwatch = aws("cloudwatch")
    names = [a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]]
    if names:
        cloudwatch.delete_alarms(AlarmNames=names)
    return Alarms(aws, REGION)


@pytest.fixture
def topic(aws):
    return aws("sns").create_topic(Name=f"swarm-dev-alarms-{secrets.token_hex(3)}")["TopicArn"]


def put_alarm(aws, topic: str, *, name: str = "", actions: bool = True, **overrides) -> str:
    name = name or f"swarm-dev-night-{secrets.token_hex(3)}"
    arguments = {
        "AlarmName": name,
        "Namespace": NAMESPACE,
        "MetricName": "BackupFailed",
        "Dimensions": DIMENSIONS,
        "Statistic": "Maximum",
        "Period": 60,
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": [topic],
        "OKActions": [topic],
        "ActionsEnabled": actions,
        "AlarmDescription": "the night's backup failed",
        **overrides,
    }
    aws("cloudwatch").put_metric_alarm(**arguments)
    return name


def put_value(aws, value: float, ago: float = 0.0, metric: str = "BackupFailed") -> None:
    stamp = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=ago)
    aws("cloudwatch").put_metric_data(
        Namespace=NAMESPACE,
        MetricData=[{"MetricName": metric, "Dimensions": DIMENSIONS, "Value": value, "Timestamp": stamp}],
    )


def state_of(aws, name: str) -> str:
    return aws("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"]


# -- CloudWatch's rules, without moto -------------------------------------------------------
def rule(m: int, n: int, treat: str) -> dict:
    return {
        "EvaluationPeriods": n,
        "DatapointsToAlarm": m,
        "TreatMissingData": treat,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
    }


@pytest.mark.parametrize(
    ("values", "treat", "old", "expected"),
    [
        # 3 out of 5: 0 fine, 1 breaching, None missing
        ([0, None, 1, None, 1], "missing", OK, OK),
        ([0, 0, 0, None, None], "breaching", ALARM, OK),  # filled: 2 breaching of 5
        ([0, 0, None, None, None], "breaching", OK, ALARM),  # filled: 3 of 5
        ([None] * 5, "missing", OK, INSUFFICIENT),
        ([None] * 5, "ignore", ALARM, ALARM),
        ([None] * 5, "breaching", OK, ALARM),
        ([None] * 5, "notBreaching", ALARM, OK),
        ([0, 1, 1, None, 1], "missing", OK, ALARM),
        ([None, None, 1, None, None], "missing", OK, ALARM),
        ([None, None, 1, None, None], "ignore", OK, OK),
        ([None, None, 1, None, None], "breaching", OK, ALARM),
        ([None, None, 1, None, None], "notBreaching", ALARM, OK),
    ],
)
def test_judge_applies_m_out_of_n_and_the_treatment_of_missing_data(values, treat, old, expected):
    assert judge(rule(3, 5, treat), values, old)[0] == expected


def test_judge_compares_as_each_operator_says_and_explains_like_cloudwatch():
    below = {**rule(1, 1, "missing"), "ComparisonOperator": "LessThanThreshold", "Threshold": 2.0}
    state, reason = judge(below, [1.0], OK)
    assert state == ALARM
    assert reason.startswith("Threshold Crossed: 1 out of the last 1 datapoints [1.0] was less than the threshold")
    assert judge({**below, "ComparisonOperator": "LessThanOrEqualToThreshold"}, [2.0], OK)[0] == ALARM
    assert judge({**below, "ComparisonOperator": "GreaterThanThreshold"}, [2.0], ALARM)[0] == OK


# -- the evaluator against moto -------------------------------------------------------------
def test_a_datapoint_raises_the_alarm_and_its_message_reaches_the_topic(aws, evaluator, topic):
    name = put_alarm(aws, topic)
    assert evaluator.evaluate() == [(name, INSUFFICIENT, OK)], "a new alarm is judged, as on AWS"
    put_value(aws, 1.0)
    assert evaluator.evaluate() == [(name, OK, ALARM)]
    assert state_of(aws, name) == ALARM
    messages = evaluator.topic_messages(topic, timeout=10, count=2)
    assert [m["Subject"] for m in messages] == [f'OK: "{name}" in EU (Ireland)', f'ALARM: "{name}" in EU (Ireland)']
    body = json.loads(messages[1]["Message"])
    assert (body["AlarmName"], body["OldStateValue"], body["NewStateValue"]) == (name, OK, ALARM)
    assert body["NewStateReason"].startswith("Threshold Crossed: 1 out of the last 1 datapoints [1.0]")
    assert body["Trigger"]["MetricName"] == "BackupFailed" and body["Trigger"]["Namespace"] == NAMESPACE
    assert body["Trigger"]["Dimensions"] == [{"value": "swarm/dev", "name": "Stack"}]
    assert body["StateChangeTime"].endswith("+0000") and body["AlarmDescription"] == "the night's backup failed"
    assert evaluator.evaluate() == [], "no change, no message"


def test_the_alarm_returns_to_ok_when_its_periods_pass_and_tells_the_ok_actions(aws, evaluator, topic):
    quiet = aws("sns").create_topic(Name=f"swarm-dev-ok-{secrets.token_hex(3)}")["TopicArn"]
    name = put_alarm(aws, topic, OKActions=[quiet])
    put_value(aws, 1.0)
    assert evaluator.evaluate() == [(name, INSUFFICIENT, ALARM)]
    assert evaluator.evaluate(now=time.time() + 61) == [(name, ALARM, OK)], "the datapoint left the window"
    assert [m["Subject"].split(":")[0] for m in evaluator.topic_messages(topic, timeout=5)] == [ALARM]
    (ok,) = evaluator.topic_messages(quiet, timeout=5)
    assert (json.loads(ok["Message"])["OldStateValue"], json.loads(ok["Message"])["NewStateValue"]) == (ALARM, OK)


def test_no_data_stays_calm_or_insufficient_and_breaching_no_data_alarms(aws, evaluator, topic):
    calm = put_alarm(aws, topic, MetricName="Silent")
    unknown = put_alarm(aws, topic, MetricName="Silent", TreatMissingData="missing", OKActions=[])
    alarming = put_alarm(aws, topic, MetricName="Silent", TreatMissingData="breaching")
    changes = dict((name, new) for name, _, new in evaluator.evaluate())
    assert changes == {calm: OK, alarming: ALARM}
    assert (state_of(aws, calm), state_of(aws, unknown), state_of(aws, alarming)) == (OK, INSUFFICIENT, ALARM)
    assert evaluator.evaluate() == []


def test_m_out_of_n_needs_m_breaching_periods(aws, evaluator, topic):
    name = put_alarm(aws, topic, MetricName="Down", EvaluationPeriods=3, DatapointsToAlarm=2, Statistic="Sum")
    put_value(aws, 1.0, ago=130, metric="Down")  # the oldest of the three periods
    put_value(aws, 0.0, ago=70, metric="Down")
    evaluator.evaluate()
    assert state_of(aws, name) == OK, "1 of 3"
    put_value(aws, 0.5, ago=5, metric="Down")
    put_value(aws, 0.5, ago=3, metric="Down")  # Sum of the newest period: 1
    assert evaluator.evaluate() == [(name, OK, ALARM)], "2 of 3"


def test_actions_disabled_changes_the_state_and_tells_nobody(aws, evaluator, topic):
    name = put_alarm(aws, topic, actions=False, MetricName="Quiet")
    evaluator.watch(topic)
    put_value(aws, 5.0, metric="Quiet")
    assert evaluator.evaluate() == [(name, INSUFFICIENT, ALARM)]
    assert state_of(aws, name) == ALARM
    assert evaluator.published == [] and evaluator.topic_messages(topic, timeout=1) == []


def test_the_running_evaluator_notices_within_its_pass_and_stops_at_once(aws, evaluator, topic, monkeypatch):
    monkeypatch.setattr(bed_alarms, "EVERY", 0.2)
    name = put_alarm(aws, topic, MetricName="Live", OKActions=[])
    evaluator.start()
    try:
        put_value(aws, 2.0, metric="Live")
        (message,) = evaluator.topic_messages(topic, timeout=10)
        assert message["Subject"] == f'ALARM: "{name}" in EU (Ireland)'
    finally:
        started = time.monotonic()
        evaluator.stop()
        assert time.monotonic() - started < 2 and not evaluator._thread.is_alive()


# -- the engine's resources, against moto ---------------------------------------------------
class FakeBed:
    """What Resources needs of a bed for these types: moto on loopback."""

    def __init__(self, endpoint: str, root):
        self.client, self.root = make_client(endpoint), root

    def logs(self):
        return self.client("logs")

    def sns(self):
        return self.client("sns")

    def cloudwatch(self):
        return self.client("cloudwatch")


@pytest.fixture
def resources(moto_endpoint, tmp_path):
    from testbed.resources import Resources

    lines: list[str] = []
    made = Resources(
        FakeBed(moto_endpoint, tmp_path), lines.append, lambda predicate: None,
        image=None, wait_for_boot=False, log_dir=tmp_path, project_dir=tmp_path,
    )  # fmt: skip
    made.lines = lines
    return made


def state(type_: str, name: str, inputs: dict, *, retain: bool = False) -> State:
    return State(f"urn:{name}", type_, name, "", inputs, {}, set(), [], "", True, False, retain_on_delete=retain)


def test_the_log_group_is_made_with_its_retention_and_an_existing_one_fails_as_on_aws(resources):
    group = f"/swarm/swarm/dev-{secrets.token_hex(3)}"
    made = state(providers.LOG_GROUP, "logs", {"name": group, "retentionInDays": 14, "tags": {"swarm:stack": "dev"}})
    resources.create(made)
    assert made.id == group and made.outputs["arn"] == f"arn:aws:logs:{REGION}:123456789012:log-group:{group}"
    logs = resources.bed.logs()
    (found,) = logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert found["retentionInDays"] == 14
    longer = state(providers.LOG_GROUP, "logs", {"name": group, "retentionInDays": 30})
    resources.update(made, longer)
    assert logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"][0]["retentionInDays"] == 30
    with pytest.raises(EngineError, match="ResourceAlreadyExistsException"):
        resources.create(state(providers.LOG_GROUP, "logs", {"name": group, "retentionInDays": 14}))
    assert providers.replace_keys(providers.LOG_GROUP, {}) >= {"name"}
    assert "retentionInDays" not in providers.replace_keys(providers.LOG_GROUP, {})


def test_the_topic_and_an_email_subscription_pending_until_a_delete_unsubscribes(resources):
    topic = state(providers.TOPIC, "alarms", {"name": f"swarm-dev-alarms-{secrets.token_hex(3)}"})
    resources.create(topic)
    assert topic.id == topic.outputs["arn"] and topic.outputs["arn"].endswith(":" + topic.outputs["name"])
    inputs = {"topic": topic.id, "protocol": "email", "endpoint": "ops@example.com"}
    email = state(providers.SUBSCRIPTION, "alarms-email", inputs)
    resources.create(email)
    assert email.outputs["arn"].startswith(topic.id + ":") and email.outputs["pendingConfirmation"] is True
    sns = resources.bed.sns()
    assert [s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=topic.id)["Subscriptions"]] == [
        "ops@example.com"
    ]
    resources.delete(email)
    assert sns.list_subscriptions_by_topic(TopicArn=topic.id)["Subscriptions"] == []
    assert providers.replace_keys(providers.SUBSCRIPTION, {}) >= {"topic", "protocol", "endpoint"}


def test_a_metric_alarm_is_put_an_update_keeps_its_state_and_a_delete_removes_it(resources, evaluator, topic):
    inputs = {
        "name": f"swarm-dev-morning-{secrets.token_hex(3)}",
        **{"namespace": NAMESPACE, "metricName": "RestoreFailed", "statistic": "Maximum", "period": 60},
        **{"evaluationPeriods": 1, "threshold": 1, "comparisonOperator": "GreaterThanOrEqualToThreshold"},
        **{"treatMissingData": "breaching", "alarmActions": [topic], "dimensions": {"Stack": "swarm/dev"}},
    }
    alarm = state(providers.METRIC_ALARM, "morning", inputs)
    resources.create(alarm)
    assert alarm.id == inputs["name"] and alarm.outputs["arn"].endswith(f":alarm:{inputs['name']}")
    cloudwatch = resources.bed.cloudwatch()
    (made,) = cloudwatch.describe_alarms(AlarmNames=[alarm.id])["MetricAlarms"]
    assert (made["Dimensions"], made["ActionsEnabled"], made["Period"]) == (DIMENSIONS, True, 60)
    assert evaluator.evaluate() == [(alarm.id, INSUFFICIENT, ALARM)]
    described = state(providers.METRIC_ALARM, "morning", {**inputs, "alarmDescription": "no restore"})
    resources.update(alarm, described)
    (after,) = cloudwatch.describe_alarms(AlarmNames=[alarm.id])["MetricAlarms"]
    assert (after["StateValue"], after["AlarmDescription"]) == (ALARM, "no restore")
    assert evaluator.evaluate() == [], "an update is no change of state (AWS keeps it; moto would not)"
    resources.delete(described)
    assert cloudwatch.describe_alarms(AlarmNames=[alarm.id])["MetricAlarms"] == []
    assert providers.replace_keys(providers.METRIC_ALARM, {}) == {"name"}


def test_the_engine_only_forgets_a_resource_it_retains_on_delete(moto_endpoint, resources, tmp_path):
    from testbed.engine import Engine

    engine = Engine(resources.bed, {}, stack="alarms", log_dir=tmp_path)
    engine.resources = resources
    sns = resources.bed.sns()
    kept, gone = (
        state(providers.TOPIC, name, {"name": f"swarm-{name}-{secrets.token_hex(3)}"}, retain=name == "kept")
        for name in ("kept", "gone")
    )
    for topic_state in (kept, gone):
        resources.create(topic_state)
        topic_state.protect = False
        engine.state[topic_state.urn] = topic_state
    engine.destroy()
    assert engine.state == {}
    topics = {t["TopicArn"] for t in sns.list_topics()["Topics"]}
    assert kept.id in topics and gone.id not in topics
    assert "retained (retainOnDelete)" in engine.log_path.read_text()


# -- the workers' role: the logs-only right reaches an instance only through its profile ------
class FakeHost:
    def __init__(self, name: str):
        self.key, self.zone = name, ""


class FakeAddresses:
    def launched(self, instance_id: str, ip: str, public: bool) -> str:
        return ""


def imds_get(port: int, source: str, path: str) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_an_instance_gets_credentials_from_whichever_profile_it_has_and_none_without(resources):
    from testbed.imds import serve

    server = serve("127.0.0.1", 0, REGION, {"aws_access_key_id": "k", "aws_secret_access_key": "s"})
    bed = resources.bed
    bed.imds, bed.gateway, bed.addresses = server, "127.0.0.1", FakeAddresses()
    bed.create_host = lambda name, ip, **_: FakeHost(name)
    subnet = State("urn:subnet", "aws:ec2/subnet:Subnet", "subnet", "subnet-0", {"cidrBlock": "127.0.0.0/24"},
                   {}, set(), [], "", False, False)  # fmt: skip
    resources.find = lambda predicate: subnet if predicate(subnet) else None
    try:
        made = {}
        for name, profile in (("manager", "swarm-dev-managers"), ("worker", "swarm-dev-workers"), ("own", None)):
            inputs = {
                "subnetId": "subnet-0",
                "iamInstanceProfile": profile,
                "metadataOptions": {"httpTokens": "optional"},
            }
            instance = state(providers.INSTANCE, name, {k: v for k, v in inputs.items() if v is not None})
            resources.create(instance)
            made[name] = instance.outputs["privateIp"]
        port = server.server_address[1]
        path = "/latest/meta-data/iam/security-credentials/"
        assert {name: imds_get(port, ip, path) for name, ip in made.items()} == {
            "manager": 200,
            "worker": 200,
            "own": 404,
        }
    finally:
        server.shutdown()
        server.server_close()
