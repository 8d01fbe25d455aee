#!/usr/bin/env python3
"""Installs the agent on a node: a root-owned release per digest, switched to atomically.

Pulumi's `install-agent` command (components/agent.py) sends the agent/ tree as a
tar.gz on stdin; root unpacks it into a fresh directory and runs this file from there:

    python3 -B <unpacked>/swarm_agent/install.py <unpacked> <digest>

It checks the tree against the digest the program computed (names, modes, contents:
what arrives is byte for byte the repository's agent/), moves it to
/usr/local/lib/swarm/releases/<digest>, points /usr/local/lib/swarm/current at it with
one rename (a verb running meanwhile finishes on the release it started from), links
swarm-node, swarm-keytool, the shell aliases and the completion to `current`, installs
the image-cleanup, registry-refresh, logs-shipping and health-report timers (and, not
enabled, the worker groups' watcher's), and removes every other release and what an older agent left
(the bash agent kept its files directly in /usr/local/lib/swarm): a module removed from
the repository is gone from the node. Nothing here restarts dockerd or touches the swarm.

Standard library only, and no import of the package: it runs before the package is in place.
The program imports `tree_digest` from here, so both sides compute the digest one way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

BASE = "/usr/local/lib/swarm"
LINKS = {  # where -> what, relative to the current release
    "/usr/local/sbin/swarm-node": "swarm-node",
    "/usr/local/sbin/swarm-keytool": "swarm_agent/keytool.py",
    "/etc/profile.d/swarm-aliases.sh": "shell/swarm-aliases.sh",
    "/usr/share/bash-completion/completions/swarm-node": "shell/swarm-node.bash-completion",
}
# On every node: the logs shipper and the health report too (a worker's report is nothing,
# and one list of units for every node keeps the installer simple).
TIMERS = ("swarm-image-cleanup.timer", "swarm-registry-auth.timer", "swarm-logs.timer", "swarm-health.timer")
# Installed but left as they are (not enabled): the worker groups' watcher runs only on a
# manager that `swarm-node groups-watch --configure` told which groups to watch.
IDLE_UNITS = ("swarm-groups.service", "swarm-groups.timer")
UNITS = (*(t.replace(".timer", ".service") for t in TIMERS), *TIMERS, *IDLE_UNITS)
UNIT_DIR = "/etc/systemd/system"
SYSTEMD_RUN = "/run/systemd/system"  # exists when systemd is PID 1
CRON_JOB = "/etc/cron.daily/swarm-image-cleanup"
# cron has no "every 4 hours from boot": the registry refresh runs at fixed hours instead.
CRON_REFRESH = "/etc/cron.d/swarm-registry-auth"
SKIPPED = ("__pycache__",)


def entries(root: str) -> list[tuple[str, int, str]]:
    """(relative path, mode, sha256) of every file under root, sorted; __pycache__ left out."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED)
        for name in files:
            if name.endswith(".pyc"):
                continue
            path = os.path.join(directory, name)
            if os.path.islink(path):
                raise SystemExit(f"install: {path} is a symbolic link; the agent ships plain files only")
            with open(path, "rb") as handle:
                sha = hashlib.sha256(handle.read()).hexdigest()
            mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
            found.append((os.path.relpath(path, root), mode, sha))
    return sorted(found)


def tree_digest(root: str) -> str:
    """sha256 over every file's path, mode (0755 or 0644) and contents."""
    h = hashlib.sha256()
    for rel, mode, sha in entries(root):
        h.update(f"{rel}\0{mode:o}\0{sha}\n".encode())
    return h.hexdigest()


def _symlink(target: str, where: str) -> None:
    """Point `where` at `target` with one rename, so it never is missing in between."""
    os.makedirs(os.path.dirname(where), exist_ok=True)
    tmp = f"{where}.swarm-new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, where)


def _place(unpacked: str, digest: str) -> str:
    releases = os.path.join(BASE, "releases")
    os.makedirs(releases, mode=0o755, exist_ok=True)
    release = os.path.join(releases, digest[:16])
    if os.path.isdir(release) and tree_digest(release) == digest:
        shutil.rmtree(unpacked)
        return release
    if os.path.lexists(release):
        shutil.rmtree(release)
    os.rename(unpacked, release)
    for directory, _, files in os.walk(release):
        os.chown(directory, 0, 0)
        os.chmod(directory, 0o755)  # noqa: S103 - root-owned, read by every verb
        for name in files:
            os.chown(os.path.join(directory, name), 0, 0)
    return release


def _clean(release: str) -> list[str]:
    """Remove every other release and anything else in BASE (an older agent's files)."""
    removed = []
    keep = {"releases", "current", "incoming"}
    for name in os.listdir(BASE):
        if name not in keep:
            path = os.path.join(BASE, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
            removed.append(name)
    releases = os.path.join(BASE, "releases")
    for name in os.listdir(releases):
        if os.path.join(releases, name) != release:
            shutil.rmtree(os.path.join(releases, name))
            removed.append(f"releases/{name}")
    return removed


def _units(current: str) -> str:
    """The timers; without systemd, cron for the daily image cleanup and the 4-hourly
    registry refresh (no journal to ship there, and no health report: it needs systemd)."""
    if os.path.isdir(SYSTEMD_RUN) and shutil.which("systemctl"):
        written = [unit for unit in UNITS if _write_unit(os.path.join(current, "units", unit))]
        # One reload, and only when a unit file changed: `enable` without --no-reload
        # would reload the manager a second time, about 0.2 s of CPU each, on every node
        # of a morning at once. Unchanged units need neither; the enable and start below
        # are idempotent and cheap (the timer is running from an earlier install or not).
        if written:
            subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=120)
        subprocess.run(["systemctl", "enable", "--no-reload", "--now", *TIMERS], check=True, timeout=120)
        return "timers" + (f" ({', '.join(written)} written)" if written else "")
    if os.path.isdir(os.path.dirname(CRON_JOB)):
        with open(CRON_JOB, "w") as job:
            job.write("#!/bin/sh\nexec /usr/local/sbin/swarm-node cleanup-images\n")
        os.chmod(CRON_JOB, 0o755)  # noqa: S103 - a root-owned cron job
        if os.path.isdir(os.path.dirname(CRON_REFRESH)):
            with open(CRON_REFRESH, "w") as job:
                job.write("17 */4 * * * root /usr/local/sbin/swarm-node registry-auth\n")
        return "cron"
    return "none (no systemd, no /etc/cron.daily)"


def _write_unit(source: str) -> bool:
    """Put one unit file in place if its contents differ; True when it was written."""
    target = os.path.join(UNIT_DIR, os.path.basename(source))
    with open(source, "rb") as handle:
        wanted = handle.read()
    if os.path.exists(target):
        with open(target, "rb") as handle:
            if handle.read() == wanted:
                return False
    with open(target + ".swarm-new", "wb") as out:
        out.write(wanted)
    os.replace(target + ".swarm-new", target)
    return True


def install(unpacked: str, digest: str) -> str:
    got = tree_digest(unpacked)
    if got != digest:
        raise SystemExit(f"install: the agent arrived with digest {got}, not {digest}; nothing was changed")
    current = os.path.join(BASE, "current")
    before = os.path.basename(os.path.realpath(current)) if os.path.lexists(current) else "none"
    release = _place(unpacked, digest)
    _symlink(os.path.relpath(release, BASE), current)
    for where, rel in LINKS.items():
        _symlink(os.path.join(current, rel), where)
    cleanup = _units(current)
    removed = _clean(release)
    return (
        f"install-agent: {digest[:16]} is current (was {before}); cleanup {cleanup}; "
        f"removed {', '.join(removed) if removed else 'nothing'}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3 or os.geteuid() != 0:
        raise SystemExit("usage (as root): install.py UNPACKED_DIR DIGEST")
    os.umask(0o022)
    try:
        print(install(sys.argv[1], sys.argv[2]))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as failed:
        # The release is in place and current; only the timers are not.
        raise SystemExit(f"install: {' '.join(failed.cmd)} failed ({failed}); the agent is installed") from None
