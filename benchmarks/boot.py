"""A bed machine's boot, per image: how long an "instance" takes to be usable.

For each image (Debian 13 with Docker 26.1, Debian 12 with Docker 20.10), hosts are
created as the engine creates EC2 instances (a NoCloud seed with meta-data and a
user-data script that only records the moment it ran) and timed from `create_host` to:

- *systemd*: `systemctl is-system-running` says running (or degraded),
- *ssh*: port 22 accepts a connection from this machine,
- *user-data*: cloud-init's final stage has run the user-data (boot-finished),
- *docker*: `docker info` answers (through docker.socket).

One host at a time (`--samples` of them), then `--parallel` hosts booted at once (the
size of a default morning), timed until the last has Docker ready. Medians are
reported; nothing is asserted.

    sudo venv/bin/python benchmarks/boot.py                         # both images, 5 + 5
    sudo venv/bin/python benchmarks/boot.py --images trixie --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from testbed.bed import Bed, missing_prerequisites, wait_until  # noqa: E402
from testbed.image import RECIPES  # noqa: E402

USER_DATA = b"#!/bin/sh\ndate +%s.%N >/run/user-data-ran\n"


def port_open(ip: str, port: int = 22) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def boot_one(bed: Bed, image: str, name: str, ip: str) -> dict:
    started = time.monotonic()
    meta = {"instance-id": f"i-{name}", "local-hostname": name}
    host = bed.create_host(name, ip, image=image, user_data=USER_DATA, meta_data=meta)
    marks = {"created": time.monotonic() - started}
    pending = {"systemd", "ssh", "user-data", "docker"}

    def probe():
        if "ssh" in pending and port_open(ip):
            marks["ssh"] = time.monotonic() - started
            pending.discard("ssh")
        if "systemd" in pending:
            state = host.run(["systemctl", "is-system-running"], check=False).stdout.decode().strip()
            if state in ("running", "degraded"):
                marks["systemd"] = time.monotonic() - started
                pending.discard("systemd")
        if "user-data" in pending and host.run(["test", "-e", "/run/user-data-ran"], check=False).returncode == 0:
            marks["user-data"] = time.monotonic() - started
            pending.discard("user-data")
        if "docker" in pending and host.run(["docker", "info"], check=False).returncode == 0:
            marks["docker"] = time.monotonic() - started
            pending.discard("docker")
        return not pending

    wait_until(f"{name} to boot", probe, 300, interval=0.1)
    bed.wipe_host(host.key)
    return {k: round(v, 2) for k, v in marks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--samples", type=int, default=5, help="hosts booted one at a time, per image")
    parser.add_argument("--parallel", type=int, default=5, help="hosts booted at once, per image")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    problems = missing_prerequisites()
    if problems:
        sys.exit("boot benchmark: the bed cannot start here:\n  " + "\n  ".join(problems))

    rows = []
    with Bed(log=lambda m: print(f"bed: {m}", flush=True)) as bed:
        addresses = iter(str(bed.network[230 * 256 + 10 + i]) for i in range(200))
        for image in args.images:
            built = bed.image(image).versions()
            singles = [boot_one(bed, image, f"boot-{image}-{i}", next(addresses)) for i in range(args.samples)]
            started = time.monotonic()
            names = [(f"par-{image}-{i}", next(addresses)) for i in range(args.parallel)]
            with ThreadPoolExecutor(max_workers=args.parallel) as pool:
                together = list(pool.map(lambda n, image=image: boot_one(bed, image, *n), names))
            row = {
                "image": image,
                "docker": built["docker"],
                "image_build_seconds": built["build_seconds"],
                "median": {
                    k: statistics.median(s[k] for s in singles) for k in ("systemd", "ssh", "user-data", "docker")
                },
                "parallel": args.parallel,
                "parallel_all_docker_ready": round(max(s["docker"] for s in together), 2),
                "parallel_wall": round(time.monotonic() - started, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmachine: {platform.machine()}, Python {platform.python_version()}")
    print(f"{'image':10} {'docker':28} {'systemd':>8} {'ssh':>6} {'user-data':>10} {'docker':>7} {'N at once':>10}")
    for r in rows:
        m = r["median"]
        print(
            f"{r['image']:10} {r['docker']:28} {m['systemd']:8.2f} {m['ssh']:6.2f} {m['user-data']:10.2f} "
            f"{m['docker']:7.2f} {r['parallel_all_docker_ready']:10.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
