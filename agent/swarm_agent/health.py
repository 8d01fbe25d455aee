"""health-report: what the stack's alarms read about the swarm, from its managers each minute.

- QuorumLost (every manager, 0 or 1): whether `docker node ls` answers here; it answers
  only where the managers have a leader.
- NodesDown (the leader): the nodes whose status is Down.
- BackupAgeHours (the leader, at most every 15 minutes, target s3): hours since
  backups/latest last changed; nothing before the first backup.

swarm-health.timer runs it every minute on every node (a worker reports nothing: one unit
list for every node). A manager whose dockerd is stopped (a backup) or whose lock a verb
holds reports nothing that minute: calling docker would start dockerd through its socket.
From the timer it speaks only when something is wrong; by hand it says what it sent.
"""

from __future__ import annotations

import datetime
import json
import os

from swarm_agent import dockerd, env, lock, metrics, nodefs, paths, run

BACKUP_EVERY = 15 * 60  # s between two looks at backups/latest
DOCKER_TIMEOUT = 30  # s: a swarm without quorum answers at once or after Raft's own timeout
S3_TIMEOUT = 30


def health_report(args) -> None:
    node = env.load_any()
    if node.get("SWARM_ROLE") != "manager":
        _say("health-report: a worker; the managers report")
        return
    if not node.metrics_namespace:
        _say("health-report: off (SWARM_METRICS_NAMESPACE is empty)")
        return
    try:
        with lock.held("health-report", 0):  # a backup, a bootstrap first; the next minute reports
            values = look(node)
    except lock.Busy as busy:
        _say(f"health-report: not now: {busy}")
        return
    if not values:
        return
    if "NodesDown" in values:  # the leader; S3 is asked outside the lock, which backups wait for
        age = backup_age(node)
        if age is not None:
            values["BackupAgeHours"] = age
    sent = metrics.publish(node, values)
    shown = " ".join(f"{name}={value:g}" for name, value in values.items())
    line = f"health-report: {shown} {'sent to' if sent else 'not sent to'} {node.metrics_namespace}"
    if values.get("QuorumLost") or values.get("NodesDown"):
        print(line)
    else:
        _say(line)


def look(node: env.NodeEnv) -> dict[str, float]:
    """What this manager sees now: QuorumLost, and NodesDown where it leads ({}: nothing to say)."""
    if _docker_stopped():
        _say("health-report: docker.service is not running (a backup?); nothing reported")
        return {}
    if not dockerd.is_active_manager():
        _say("health-report: not an active swarm manager here; nothing reported")
        return {}
    listing = run.docker(
        "node", "ls", "--format", "{{.Self}} {{.ManagerStatus}} {{.Status}}", check=False, timeout=DOCKER_TIMEOUT
    )
    if listing.returncode != 0:
        said = (listing.stderr or "no message").strip().splitlines() or ["no message"]
        print(f"health-report: this manager's swarm has no leader ('docker node ls': {said[-1][:300]})")
        return {"QuorumLost": 1}
    values: dict[str, float] = {"QuorumLost": 0}
    rows = [line.split() for line in listing.stdout.splitlines() if line.strip()]
    # A worker's row has no manager status: "false Ready"; this leader's: "true Leader Ready".
    if not any(row[0] == "true" and "Leader" in row[1:-1] for row in rows):
        return values
    values["NodesDown"] = sum(1 for row in rows if row[-1] == "Down")
    return values


def _docker_stopped() -> bool:
    if dockerd.has_systemd():
        return "docker.service" not in dockerd.active_units()  # docker.socket alone would start it
    return dockerd.is_down()


def backup_age(node: env.NodeEnv) -> float | None:
    """Hours since backups/latest was written; None when it is not time to look, there is
    no backup yet, or S3 did not say (a note). Listed, not read: the store's rule (store.py)."""
    if node.target != "s3" or not _time_to_look():
        return None
    latest = f"{node.prefix}backups/latest"
    where = ["--region", node.region] if node.region else []
    if node.get("SWARM_S3_ENDPOINT"):
        where += ["--endpoint-url", node.get("SWARM_S3_ENDPOINT")]
    result = run.call(
        "aws", *where, "s3api", "list-objects-v2", "--bucket", node.bucket, "--prefix", latest, "--output", "json",
        timeout=S3_TIMEOUT, env=node.aws_env(), check=False,
    )  # fmt: skip
    if result.returncode != 0:
        said = (result.stderr or "no message").strip().splitlines() or ["no message"]
        run.note(f"health-report: cannot list {node.store}backups/latest: {said[-1][:300]}")
        return None
    try:
        found = [o for o in (json.loads(result.stdout or "{}").get("Contents") or []) if o.get("Key") == latest]
        if not found:
            return None
        written = datetime.datetime.fromisoformat(str(found[0]["LastModified"]).replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        run.note(f"health-report: aws s3api list-objects-v2 answered other than its JSON for {latest}")
        return None
    return round(max(0.0, (_utc() - written).total_seconds() / 3600), 2)


def _time_to_look() -> bool:
    """At most every BACKUP_EVERY seconds (the S3 call costs a second of CPU and a request);
    the time of the last look is kept in /run, which goes with the boot as run.now()'s clock."""
    try:
        with open(paths.HEALTH_RECORD) as handle:
            last = float(json.load(handle)["backup_looked_at"])
    except (OSError, ValueError, KeyError, TypeError):
        last = None
    now = run.now()
    if last is not None and 0 <= now - last < BACKUP_EVERY:
        return False
    nodefs.replace(paths.HEALTH_RECORD, json.dumps({"backup_looked_at": now}) + "\n")
    return True


def _say(line: str) -> None:
    """A line for a person at the terminal; from the timer (every minute), nothing."""
    if not os.environ.get("INVOCATION_ID"):
        print(line)


def _utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
