"""What leaves the repository for a node, in bytes: user-data (EC2 takes 16,384 gzipped)
and the agent's bundle (the first line of each node's `ready` stdin), for the largest config there is.

The largest config: 7 managers, `swarm:autolock true`, a 63-character bucket name and
three 200-character tags (every one of them lands in user-data or its env file).

    venv/bin/python benchmarks/payload.py
"""

from __future__ import annotations

import base64
import gzip
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "agent"), str(ROOT / "tests"), str(ROOT / "tests" / "unit")]

LARGEST = {
    "managerCount": 7,
    "autolock": True,
    "stateBucketName": "a" * 63,
    "tags": {"team": "v" * 200, "cost-centre": "c" * 200, "owner": "o" * 200},
}


def main() -> None:
    from harness import run_program

    from components.agent import agent_bundle, agent_digest
    from components.payload import USER_DATA_BUDGET, USER_DATA_LIMIT

    run = run_program(LARGEST)
    sizes = []
    for instance in run.of_type("aws:ec2/instance:Instance"):
        packed = base64.b64decode(instance.inputs["userDataBase64"])
        sizes.append((len(packed), len(gzip.decompress(packed)), instance.name))
    packed, plain, name = max(sizes)
    print(f"user-data, largest node ({name}): {packed:,} bytes gzipped ({plain:,} plain); "
          f"EC2's limit {USER_DATA_LIMIT:,}, the program's budget {USER_DATA_BUDGET:,}")  # fmt: skip
    bundle = agent_bundle()
    print(f"agent bundle {agent_digest()[:16]}: {len(base64.b64decode(bundle)):,} bytes tar.gz, "
          f"{len(bundle):,} as base64 on ready's stdin")  # fmt: skip


if __name__ == "__main__":
    main()
