"""The registry mirror against a slow upstream, on the test bed.

A stack of 1 manager (which runs the mirror) + 2 workers is formed with its
`mirrorUpstream` on a host of its own, behind 200 ms of added delay on that host's link.
The bed's kernel has no netem, so the delay is `benchmarks/delayline.py`, a relay on the
upstream host in front of the bed's upstream registry that holds everything the registry
sends for 200 ms (and each new connection as long), as `tc netem delay 200ms` would.

For each sample a new image (busybox plus a unique file, so no cache has its blobs) is
pushed upstream; worker 0 pulls it (the mirror fetches it through
the slow link and caches it in S3), then worker 1 pulls it (served from the cache; the
mirror still asks the upstream which digest the tag names). Reported: the medians and
their ratio.

    sudo venv/bin/python benchmarks/mirror.py                   # 5 images, busybox-sized
    sudo venv/bin/python benchmarks/mirror.py --pad-mib 20      # each image 20 MiB bigger
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from testbed.bed import UPSTREAM_PORT, Bed, missing_prerequisites, wait_until  # noqa: E402
from testbed.engine import Engine  # noqa: E402


def timed(host, *args: str) -> float:
    started = time.monotonic()
    host.run(list(args), timeout=600)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5, help="images pulled (each once uncached, once cached)")
    parser.add_argument("--delay-ms", type=int, default=200)
    parser.add_argument("--pad-mib", type=int, default=0, help="random bytes added to every image's layer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problems = missing_prerequisites()
    if problems:
        sys.exit("mirror benchmark: the bed cannot start here:\n  " + "\n  ".join(problems))

    logs = Path(tempfile.mkdtemp(prefix="swarm-bench-mirror-"))
    with Bed() as bed:
        # The slow upstream: a host of its own whose relay holds back what the bed's
        # upstream registry (on the bridge) sends, as netem on the host's link would.
        address = str(bed.network[250 * 256 + 10])
        upstream = bed.create_host("upstream", address)
        upstream.start(
            ["python3", "-", "--listen", f"{address}:{UPSTREAM_PORT}", "--target",
             f"{bed.gateway}:{UPSTREAM_PORT}", "--delay", str(args.delay_ms / 1000)],
            logs / "delayline.log",
            input=Path(__file__).with_name("delayline.py").read_bytes(),
        )  # fmt: skip
        url = f"http://{address}:{UPSTREAM_PORT}"
        answers = lambda: upstream.run(["curl", "-sf", f"{url}/v2/"], check=False).returncode == 0  # noqa: E731
        wait_until("the slow upstream", answers, 30)

        config = {**bed.program_config(1, 2), "swarm:mirrorUpstream": url}
        engine = Engine(bed, config, stack="mirror", log_dir=logs)
        engine.up()
        first, second = engine.host_of("worker-0"), engine.host_of("worker-1")
        # The delay is there: one request is two round trips (connect, then the request).
        probe = timed(first, "curl", "-sf", "-o", "/dev/null", f"{url}/v2/")

        rows = []
        for i in range(args.samples):
            name = f"bench{i}"
            bed.push_upstream(f"library/{name}", os.urandom(args.pad_mib << 20) + name.encode())
            uncached = timed(first, "docker", "pull", "-q", name)
            cached = timed(second, "docker", "pull", "-q", name)
            rows.append({"image": name, "uncached_s": round(uncached, 2), "cached_s": round(cached, 2)})
            print(json.dumps(rows[-1]), flush=True)
        engine.destroy()

    uncached = statistics.median(r["uncached_s"] for r in rows)
    cached = statistics.median(r["cached_s"] for r in rows)
    result = {
        "delay_ms": args.delay_ms,
        "pad_mib": args.pad_mib,
        "probe_s": round(probe, 2),
        "uncached_median_s": uncached,
        "cached_median_s": cached,
        "ratio": round(uncached / cached, 1),
        "samples": rows,
    }
    print(f"\nmachine: {platform.node()}, {platform.machine()}; engine logs in {logs}")
    print(f"upstream delay {args.delay_ms} ms (a GET of /v2/ from a node: {probe:.2f} s)")
    print(f"first node, through the upstream: median {uncached:.2f} s over {len(rows)} images")
    print(f"second node, from the mirror's cache: median {cached:.2f} s; ratio {result['ratio']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
