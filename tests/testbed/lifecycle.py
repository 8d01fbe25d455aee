"""Data Lifecycle Manager on the bed: the snapshot policies a stack made, run when a test
says their hour has come.

What can break the product is modelled as DLM does it: a policy targets volumes by tag,
in whatever state they are (attached or not: at night no machine holds them); it runs
only while ENABLED; each run takes one snapshot per targeted volume, copies the volume's
tags onto it and adds the schedule's own; it then deletes the oldest snapshots it took of
that volume beyond the retain count, and never one it did not take (a deleted policy
prunes nothing). The clock is not modelled: `run()` is the schedule's time arriving.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from testbed.volumes import BlockVolumes

TAKEN_BY = "aws:dlm:lifecycle-policy-id"  # the tag DLM itself puts on what it takes


@dataclass
class Policy:
    policy_id: str
    enabled: bool
    target_tags: dict[str, str]
    keep: int
    copy_tags: bool = True
    tags_to_add: dict[str, str] = field(default_factory=dict)


class Lifecycle:
    def __init__(self, volumes: BlockVolumes):
        self.volumes = volumes
        self.policies: dict[str, Policy] = {}
        self._lock = threading.Lock()

    def put(self, policy_id: str, inputs: dict) -> None:
        """CreateLifecyclePolicy / UpdateLifecyclePolicy, from the resource's inputs."""
        details = inputs.get("policyDetails") or {}
        (schedule,) = details.get("schedules") or [{}]
        with self._lock:
            self.policies[policy_id] = Policy(
                policy_id,
                (inputs.get("state") or "ENABLED") == "ENABLED",
                dict(details.get("targetTags") or {}),
                int((schedule.get("retainRule") or {}).get("count") or 0),
                bool(schedule.get("copyTags")),
                dict(schedule.get("tagsToAdd") or {}),
            )

    def delete(self, policy_id: str) -> None:
        with self._lock:
            self.policies.pop(policy_id, None)

    def run(self) -> list[str]:
        """Every enabled policy's daily run: the snapshots it took, in order."""
        taken = []
        for policy in list(self.policies.values()):
            if not policy.enabled:
                continue
            for volume in self.volumes.describe(policy.target_tags):
                tags = {**(volume.tags if policy.copy_tags else {}), **policy.tags_to_add, TAKEN_BY: policy.policy_id}
                taken.append(self.volumes.snapshot(volume.volume_id, tags))
                self._prune(policy, volume.volume_id)
        return taken

    def _prune(self, policy: Policy, volume_id: str) -> None:
        mine = [
            s.snapshot_id
            for s in list(self.volumes.snapshots.values())
            if s.volume_id == volume_id and s.tags.get(TAKEN_BY) == policy.policy_id
        ]
        for snapshot_id in mine[: max(len(mine) - policy.keep, 0)]:
            self.volumes.delete_snapshot(snapshot_id)
