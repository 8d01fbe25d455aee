"""A local swarm from this program, on the test bed: try the product without AWS.

    scripts/sandbox [--managers 3] [--workers 2] [--hold SECONDS]

Starts the bed, runs the program against it as `pulumi up` would, forwards the leader's
Docker socket to a local one over SSH, prints how to reach the swarm, and waits (until
Enter, Ctrl-C, or --hold seconds). Then it tears down as the nightly job does (the backup
hook runs) and removes the bed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.bed import Bed, BedError, missing_prerequisites, wait_until
from testbed.engine import Engine, EngineError, abort_all

STACK = "sandbox"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--managers", type=int, default=3, help="odd, 1 to 7 (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="0 or more (default 2)")
    parser.add_argument(
        "--hold", type=float, default=None, help="tear down after this many seconds instead of waiting for Enter"
    )
    parser.add_argument("--check", action="store_true", help="run 'docker node ls' through the forwarded socket")
    args = parser.parse_args(argv)
    if args.managers < 1 or args.managers % 2 == 0 or args.managers > 7:
        parser.error(f"--managers must be odd, from 1 to 7 (got {args.managers})")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more (got {args.workers})")
    return args


def forward_socket(workdir: Path, key: str, user: str, host: str) -> tuple[subprocess.Popen, Path]:
    """ssh -L from a local unix socket to the leader's Docker socket, as DOCKER_HOST=ssh:// would."""
    key_file = workdir / "id_sandbox"
    key_file.touch(mode=0o600)
    key_file.write_text(key)
    socket = workdir / "docker.sock"
    ssh_config = workdir / "ssh_config"
    ssh_config.write_text(
        f"Host leader\n  HostName {host}\n  User {user}\n  IdentityFile {key_file}\n  IdentitiesOnly yes\n"
        f"  StrictHostKeyChecking accept-new\n  UserKnownHostsFile {workdir / 'known_hosts'}\n"
    )
    options = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=10"]
    forward = ["-L", f"{socket}:/var/run/docker.sock", "leader"]
    process = subprocess.Popen(["ssh", "-F", str(ssh_config), *options, *forward], stdin=subprocess.DEVNULL)
    wait_until("the forwarded Docker socket", lambda: socket.exists() or process.poll() is not None, 30)
    if not socket.exists():
        raise BedError(f"ssh -L to {host} exited with {process.returncode}")
    return process, ssh_config


def show_status(outputs: dict, workdir: Path) -> None:
    """What `scripts/swarm status sandbox --outputs FILE` shows (the file is written for it)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "swarm_cli.py"
    spec = importlib.util.spec_from_file_location("swarm_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    saved = workdir / "outputs.json"
    saved.touch(mode=0o600)
    saved.write_text(json.dumps(outputs))
    try:
        cli.render(cli.summarize(STACK, outputs, cli.collect(outputs)), cli.console())
    except cli.SwarmCliError as error:
        print(f"sandbox: status: {error}", flush=True)
    print(f"(again: scripts/swarm status {STACK} --outputs {saved})\n", flush=True)


def main(argv: list[str]) -> int:
    args = parse(argv)
    problems = missing_prerequisites()
    if problems:
        print("sandbox: cannot start the bed here:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM both end in the teardown below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    bed = Bed(log=lambda message: print(f"sandbox: {message}", flush=True))
    forward = None
    try:
        bed.start()
        engine = Engine(bed, bed.program_config(args.managers, args.workers), stack=STACK)
        print(
            f"sandbox: forming {args.managers} managers + {args.workers} workers (log: {engine.log_path})", flush=True
        )
        started = time.monotonic()
        outputs = engine.up().outputs
        print(f"sandbox: swarm formed in {time.monotonic() - started:.0f}s", flush=True)
        workdir = bed.root / "client"
        workdir.mkdir(mode=0o700)
        leader = outputs["managerPublicIps"][0]
        forward, ssh_config = forward_socket(workdir, outputs["sshPrivateKey"], outputs["sshUser"], leader)
        socket = workdir / "docker.sock"
        print(
            "\nReach it from this machine (as root):\n"
            f"  export DOCKER_HOST=unix://{socket}\n"
            "  docker node ls\n"
            f"  ssh -F {ssh_config} leader          # a shell on manager 0 (swarm-node, aliases)\n"
            f"Registry mirrors: {' '.join(outputs['registryMirrors'])}; state bucket {outputs['stateBucket']} "
            f"(moto at {bed.s3_endpoint})\n",
            flush=True,
        )
        show_status(outputs, workdir)
        if args.check:
            docker = shutil.which("docker")
            listing = subprocess.run(
                [docker, "--host", f"unix://{socket}", "node", "ls"], capture_output=True, text=True, timeout=60
            )
            print(listing.stdout + listing.stderr, flush=True)
            if listing.returncode != 0:
                return 1
        if args.hold is None:
            with _interruptible():
                input("Press Enter (or Ctrl-C) to tear the sandbox down... ")
        else:
            time.sleep(args.hold)
        print("sandbox: tearing down (the backup hook runs first)", flush=True)
        forward.terminate()
        forward.wait(timeout=10)
        forward = None
        engine.destroy()
        return 0
    except (BedError, EngineError) as error:
        print(f"sandbox: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsandbox: interrupted; removing the bed", file=sys.stderr)
        return 130
    finally:
        abort_all()
        if forward is not None:
            forward.terminate()
            forward.wait(timeout=10)
        bed.close()
        print("sandbox: removed", flush=True)


class _interruptible:
    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        return kind is EOFError  # no terminal: treat end of input as Enter


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("sandbox: run as root (it creates network namespaces, a bridge and iptables rules)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
