"""A local swarm from this program, on the test bed: try the product without AWS.

    scripts/sandbox [--managers 3] [--workers 2] [--hold SECONDS] [--cycle] [--check]

Starts the bed, runs the program against it as `pulumi up` would, puts a service and a
secret on the swarm, forwards the leader's Docker socket to a local one over SSH, prints
how to reach it, and gives a prompt:

    night     the nightly teardown: the backup hook, then every machine goes
    morning   the morning's `up`: fresh machines, the backup restored; then what came
              back (the join tokens' fingerprints, the services and secrets) and the status
    status    the status view (scripts/swarm status)
    quit      tear down as the nightly job does, and remove the bed (also Enter, Ctrl-D)

`--cycle` runs a night and a morning before the prompt; `--hold SECONDS` skips the prompt
and tears down after that long (both for scripts and the tests).
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

from testbed.bed import LOCAL_BUSYBOX, Bed, BedError, missing_prerequisites, wait_until
from testbed.engine import Engine, EngineError, abort_all
from testbed.verify import fp

STACK = "sandbox"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--managers", type=int, default=3, help="odd, 1 to 7 (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="0 or more (default 2)")
    parser.add_argument(
        "--hold", type=float, default=None, help="tear down after this many seconds instead of waiting for Enter"
    )
    parser.add_argument("--check", action="store_true", help="run 'docker node ls' through the forwarded socket")
    parser.add_argument("--cycle", action="store_true", help="a night and a morning before the prompt (or --hold)")
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
    from swarmcli import status

    saved = workdir / "outputs.json"
    saved.touch(mode=0o600)
    saved.write_text(json.dumps(outputs))
    try:
        status.render(status.summarize(STACK, outputs, status.collect(outputs)), status.console())
    except status.SwarmCliError as error:
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
    sandbox = None
    try:
        bed.start()
        engine = Engine(bed, bed.program_config(args.managers, args.workers), stack=STACK)
        print(
            f"sandbox: forming {args.managers} managers + {args.workers} workers (log: {engine.log_path})", flush=True
        )
        sandbox = Sandbox(bed, engine, args.workers)
        sandbox.morning(first=True)
        if args.check and not sandbox.check():
            return 1
        if args.cycle:
            sandbox.night()
            sandbox.morning()
        if args.hold is None:
            sandbox.prompt()
        else:
            time.sleep(args.hold)
        if sandbox.formed:
            print("sandbox: tearing down (the backup hook runs first)", flush=True)
            sandbox.night()
        return 0
    except (BedError, EngineError) as error:
        print(f"sandbox: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsandbox: interrupted; removing the bed", file=sys.stderr)
        return 130
    finally:
        abort_all()
        if sandbox is not None:
            sandbox.stop_forward()
        bed.close()
        print("sandbox: removed", flush=True)


DEMO_SERVICE, DEMO_SECRET = "hello", "sandbox-secret"
PROMPT_HELP = "night | morning | status | quit"


class Sandbox:
    """One stack on the bed through its days: mornings (`up`) and nights (`destroy`)."""

    def __init__(self, bed: Bed, engine: Engine, workers: int):
        self.bed, self.engine, self.workers = bed, engine, workers
        self.workdir = bed.root / "client"
        self.workdir.mkdir(mode=0o700)
        self.forward: subprocess.Popen | None = None
        self.outputs: dict = {}
        self.before_night: dict = {}
        self.formed = False

    def morning(self, first: bool = False) -> None:
        started = time.monotonic()
        if not first:
            print("sandbox: morning: fresh machines, last night's backup restored", flush=True)
        self.outputs = self.engine.up().outputs
        self.formed = True
        print(f"sandbox: swarm {'formed' if first else 'back'} in {time.monotonic() - started:.0f}s", flush=True)
        if first:
            self._put_demo()
        self._reach()
        if not first:
            self._what_came_back()
        show_status(self.outputs, self.workdir)

    def night(self) -> None:
        self.before_night = self._seen()
        self.stop_forward()
        started = time.monotonic()
        print("sandbox: night: manager 0 backs up, then every machine goes", flush=True)
        self.engine.destroy()
        self.formed = False
        latest = self.bed.s3().get_object(Bucket=self.outputs["stateBucket"], Key=f"swarm/{STACK}/backups/latest")
        key = latest["Body"].read().decode().split()[0]
        print(f"sandbox: night done in {time.monotonic() - started:.0f}s: {len(self.engine.hosts())} machines left; "
              f"backup {key} (latest) in s3://{self.outputs['stateBucket']}", flush=True)  # fmt: skip

    def _put_demo(self) -> None:
        """What a team would have on the swarm by evening: a service and a secret."""
        leader = self.engine.host_of("manager-0")
        leader.run(["docker", "secret", "create", DEMO_SECRET, "-"], input=b"kept through the night")
        replicas = str(max(1, self.workers))
        leader.docker("service", "create", "--detach", "--quiet", "--name", DEMO_SERVICE, "--replicas", replicas,
                      "--secret", DEMO_SECRET, "--endpoint-mode", "dnsrr", LOCAL_BUSYBOX, "sleep", "86400")  # fmt: skip
        print(f"sandbox: created service {DEMO_SERVICE} ({replicas} replicas) and secret {DEMO_SECRET}", flush=True)

    def _seen(self) -> dict:
        leader = self.engine.host_of("manager-0")
        return {
            "worker token": fp(self.outputs["workerJoinToken"]),
            "manager token": fp(self.outputs["managerJoinToken"]),
            "services": sorted(leader.docker("service", "ls", "--format", "{{.Name}}").split()),
            # The team's secrets: the mirror's key is the program's, and new every morning.
            "secrets": sorted(
                n
                for n in leader.docker("secret", "ls", "--format", "{{.Name}}").split()
                if not n.startswith("swarm-mirror-aws-")
            ),
        }

    def _what_came_back(self) -> None:
        now = self._seen()
        print("sandbox: what came back this morning:", flush=True)
        for name in ("worker token", "manager token", "services", "secrets"):
            same = "the same" if now[name] == self.before_night.get(name) else "CHANGED"
            shown = now[name] if isinstance(now[name], str) else " ".join(now[name]) or "none"
            print(f"  {name}: {same} ({shown})", flush=True)
        print(f"  bootstrap: {self.outputs.get('bootstrapResult')}", flush=True)

    def _reach(self) -> None:
        leader = self.outputs["managerPublicIps"][0]
        self.stop_forward()
        self.forward, ssh_config = forward_socket(
            self.workdir, self.outputs["sshPrivateKey"], self.outputs["sshUser"], leader
        )
        print(
            "\nReach it from this machine (as root):\n"
            f"  export DOCKER_HOST=unix://{self.workdir / 'docker.sock'}\n"
            "  docker node ls\n"
            f"  ssh -F {ssh_config} leader          # a shell on manager 0 (swarm-node, aliases)\n"
            f"Registry mirrors: {' '.join(self.outputs['registryMirrors'])}; state bucket "
            f"{self.outputs['stateBucket']} (moto at {self.bed.s3_endpoint})\n",
            flush=True,
        )

    def check(self) -> bool:
        docker = shutil.which("docker")
        socket = self.workdir / "docker.sock"
        listing = subprocess.run(
            [docker, "--host", f"unix://{socket}", "node", "ls"], capture_output=True, text=True, timeout=60
        )
        print(listing.stdout + listing.stderr, flush=True)
        return listing.returncode == 0

    def stop_forward(self) -> None:
        if self.forward is not None:
            self.forward.terminate()
            self.forward.wait(timeout=10)
            self.forward = None
        # The next morning forwards again to the same path (the host keys stay: they are
        # derived from the stack's seed, so known_hosts still holds).
        (self.workdir / "docker.sock").unlink(missing_ok=True)

    def prompt(self) -> None:
        print(f"sandbox: {PROMPT_HELP}", flush=True)
        while True:
            with _interruptible() as ended:
                line = input("sandbox> ").strip().lower()
            if ended.eof or line in ("", "quit", "exit", "q"):
                return
            if line == "night" and self.formed:
                self.night()
            elif line == "morning" and not self.formed:
                self.morning()
            elif line == "status" and self.formed:
                show_status(self.outputs, self.workdir)
            elif line in ("night", "morning", "status"):
                print(f"sandbox: it is {'day' if self.formed else 'night'}; {PROMPT_HELP}", flush=True)
            else:
                print(f"sandbox: {PROMPT_HELP}", flush=True)


class _interruptible:
    eof = False

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.eof = kind is EOFError  # no terminal: treat end of input as quit
        return self.eof


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("sandbox: run as root (it creates network namespaces, a bridge and iptables rules)", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
