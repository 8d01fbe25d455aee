"""The numbers the stack's alarms watch, sent to CloudWatch (SWARM_METRICS_NAMESPACE).

Each is a plain metric with no dimensions, so an alarm in Pulumi names it by namespace
and name alone, whichever node sent it. A metric never fails a verb: its call is bounded
and its failure is a note, since a night's backup that worked must not read as failed
because CloudWatch did not answer. Without a namespace nothing is sent and nothing said.

Who sends what: bootstrap (MorningFailed, MorningSeconds), backup (BackupFailed),
health-report (QuorumLost, NodesDown, BackupAgeHours).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from swarm_agent import env, paths, run
from swarm_agent.run import AgentError

CALL_TIMEOUT = 30  # s; the next report sends again
# CloudWatch's unit of each metric ("None" for the others: it has no hours).
UNITS = {"MorningSeconds": "Seconds", "NodesDown": "Count"}


def publish(node: env.NodeEnv, values: dict[str, float]) -> bool:
    """One put-metric-data of every value; True when CloudWatch took them."""
    namespace = node.metrics_namespace
    if not namespace or not values:
        return False
    data = [
        {"MetricName": name, "Value": float(value), "Unit": UNITS.get(name, "None")} for name, value in values.items()
    ]
    work = tempfile.mkdtemp(dir=paths.WORK_DIR, prefix="swarm-metrics.")
    try:
        document = os.path.join(work, "metrics.json")
        fd = os.open(document, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        result = _call(node, "--namespace", namespace, "--metric-data", f"file://{document}")
    except (AgentError, OSError) as error:  # aws missing, the disk full: still only a note
        result = run.Result("", str(error), 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.returncode != 0:
        said = (result.stderr or result.stdout or "no message").strip().splitlines() or ["no message"]
        where = node.metrics_endpoint or "AWS's CloudWatch"
        run.note(f"metrics: {', '.join(values)} not sent to {namespace} at {where}: {said[-1][:300]}")
        return False
    return True


def _call(node: env.NodeEnv, *args: str) -> run.Result:
    where = ["--region", node.region] if node.region else []
    if node.metrics_endpoint:
        where += ["--endpoint-url", node.metrics_endpoint]
    return run.call(
        "aws", "cloudwatch", "put-metric-data", *args, *where,
        timeout=CALL_TIMEOUT, env=node.logs_aws_env(), check=False,
    )  # fmt: skip


def report(values: dict[str, float]) -> bool:
    """`publish` with the node's settings, for a verb whose own loading of them may be what
    failed: no settings file, no metric (and no second message)."""
    try:
        node = env.load_any()
    except AgentError:
        return False
    return publish(node, values)


def morning_seconds() -> float | None:
    """Seconds since user-data began this machine's morning (it writes the time first
    thing): on EC2 the instance's boot, on machines you bring the morning's provisioning
    (the night destroyed that step, so it runs again). Not /proc/uptime: in a container
    (LXC, nspawn) it is the host's, days old. None where user-data left no time."""
    try:
        with open(paths.USER_DATA_STARTED) as handle:
            started = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, time.time() - started)
