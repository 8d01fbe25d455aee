"""Logs and alarms that outlive the nodes, on the bed (moto plays CloudWatch Logs,
CloudWatch and SNS; the bed evaluates the alarms, as CloudWatch would).

One stack (1 manager + 1 worker, `swarm:logs` at its default, cloudwatch) through a day, a
night and a failed morning: a service prints lines on the worker, read with `docker
service logs` on the manager and `docker logs` on the worker (dual logging) while Docker's
awslogs driver sends them to the stack's group; the night backs up; the backup is then
replaced by a forged one with matching checksums, so the next morning's bootstrap
refuses it; the morning-failed alarm notifies its topic; the machines go; and
`scripts/swarm logs`, with nothing left but the kept group, reads back the failed
bootstrap's refusal, the night's backup and the service's lines from the day before.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import time

import pytest
from testbed.bed import BED_REGION, LOCAL_BUSYBOX, S3_CREDENTIALS, wait_until
from testbed.engine import EngineError, scenario_engine
from testbed.verify import bucket_of, read

pytestmark = pytest.mark.e2e

STACK = "logs"
GROUP = f"/swarm/swarm/{STACK}"
PREFIX = f"swarm/{STACK}/"
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
SERVICE = "chatter"
# Numbered lines, one a second, from a task on the worker.
CHATTER = 'i=0; while true; do echo "chatter line $i"; i=$((i+1)); sleep 1; done'


@pytest.fixture(scope="module")
def engine(bed, log_dir):
    # Its own part of the bed's /16 (third octets 160-191), shared in turn with the other modules.
    for engine in scenario_engine(bed, log_dir, STACK, (1, 1), (160, 19)):
        try:
            yield engine
        finally:
            engine.destroy()


@pytest.fixture(scope="module")
def day(engine):
    result = engine.up()
    leader = engine.host_of("manager-0")
    leader.docker("service", "create", "--detach", "--quiet", "--name", SERVICE, "--constraint",
                  "node.role==worker", "--no-resolve-image", LOCAL_BUSYBOX, "sh", "-c", CHATTER)  # fmt: skip
    return result


def swarm_logs(bed, *flags: str) -> str:
    """`scripts/swarm logs` as an operator runs it, with the group, region and endpoint given
    (the bed has no Pulumi CLI to read them from the stack's config)."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": S3_CREDENTIALS["aws_secret_access_key"]}  # fmt: skip
    command = [str(ROOT / "scripts" / "swarm"), "logs", "--group", GROUP, "--region", BED_REGION,
               "--endpoint", bed.s3_endpoint, "--since", "2h", *flags]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout


def streams(bed) -> list[str]:
    pages = bed.logs().get_paginator("describe_log_streams").paginate(logGroupName=GROUP)
    return [s["logStreamName"] for page in pages for s in page["logStreams"]]


def test_a_service_s_lines_reach_the_group_and_stay_readable_on_the_nodes(engine, day, bed):
    started = time.monotonic()
    worker = engine.host_of("worker-0")
    node = f"swarm-{STACK}-worker-0"
    stream = wait_until(
        "the service's stream in the stack's group",
        lambda: next((s for s in streams(bed) if s.startswith(f"{node}/containers/{SERVICE}.1.")), None),
        120,
    )
    wait_until("five lines in CloudWatch", lambda: "chatter line 4" in swarm_logs(bed, "--service", SERVICE), 120)
    engine.log(f"logs: a new service's fifth line readable with scripts/swarm logs {time.monotonic() - started:.1f} s "
               "after its create")  # fmt: skip
    events = bed.logs().get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)["events"]
    assert [e["message"] for e in events[:3]] == ["chatter line 0", "chatter line 1", "chatter line 2"]
    # Dual logging: Docker's own readers still answer on the nodes.
    container = worker.docker("ps", "-q", "--filter", f"name={SERVICE}.1.").split()[0]
    assert "chatter line 2" in worker.docker("logs", container)
    leader = engine.host_of("manager-0")
    assert "chatter line 2" in leader.docker("service", "logs", "--raw", SERVICE)
    # The nodes' own: the journal (cloud-init's user-data output among it) and the morning's verbs.
    manager = f"swarm-{STACK}-manager-0"
    assert {f"{manager}/journal", f"{manager}/agent/bootstrap", f"{node}/agent/join"} <= set(streams(bed))
    assert "user-data: ready" in swarm_logs(bed, "--node", node, "--journal", "--grep", "user-data: ready")


def test_after_a_night_and_a_failed_morning_the_logs_are_read_back_with_every_machine_gone(engine, day, bed):
    engine.destroy()  # the night: the backup, then every machine
    bucket = bucket_of(engine)
    key = read(bed, bucket, f"{PREFIX}backups/latest").decode().split()[0]
    # A backup with matching checksums that the managers never signed.
    forged = gzip.compress(gzip.decompress(read(bed, bucket, f"{PREFIX}{key}")) + b"\0" * 1024)
    digest = hashlib.sha256(forged).hexdigest()
    s3 = bed.s3()
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}{key}", Body=forged)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}{key}.sha256", Body=f"{digest}  {key.split('/')[-1]}\n".encode())
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}backups/latest", Body=f"{key} {digest}\n".encode())
    topic = next(t["TopicArn"] for t in bed.sns().list_topics()["Topics"] if t["TopicArn"].endswith(f"{STACK}-alarms"))
    bed.watch_topic(topic)

    with pytest.raises(EngineError) as failure:
        engine.up()
    failed_at = time.monotonic()
    assert "-bootstrap" in str(failure.value) and "its signature does not match" in str(failure.value)

    def raised() -> list[dict]:
        messages = bed.topic_messages(topic, timeout=5)
        return [json.loads(m["Message"]) for m in messages if m["Subject"].startswith("ALARM")]

    # The bed evaluates every kept alarm of the session's stacks in turn: a pass can be slow.
    alarms = wait_until("the morning-failed alarm on its topic", raised, 300)
    engine.log(f"logs: morning-failed on its topic {time.monotonic() - failed_at:.1f} s after the failed up returned")
    # That alarm, and no other: the day before was healthy, and the night is quiet.
    assert {a["AlarmName"] for a in alarms} == {f"swarm-{STACK}-morning-failed"}, alarms
    assert alarms[0]["NewStateValue"] == "ALARM" and alarms[0]["Trigger"]["MetricName"] == "MorningFailed"

    engine.destroy()
    assert engine.hosts() == [] and not [h for h in bed.hosts.values() if h.name.startswith(f"swarm-{STACK}-")]
    reading = time.monotonic()
    refusal = swarm_logs(bed, "--verb", "bootstrap", "--grep", "signature does not match")
    engine.log(f"logs: the failed bootstrap read back in {time.monotonic() - reading:.1f} s, no machine left")
    assert f"swarm-{STACK}-manager-0/agent/bootstrap" in refusal and "forged or altered" in refusal
    night = swarm_logs(bed, "--verb", "backup")
    assert f"swarm-{STACK}-manager-0/agent/backup" in night
    lines = swarm_logs(bed, "--service", SERVICE)
    assert "chatter line 0" in lines and "chatter line 4" in lines
    assert "SWMTKN" not in refusal + night + lines
