#!/usr/bin/env bash
# restore-drill.sh DIR: restore the backup in DIR into a throwaway single-node swarm, print
# what it holds, then remove every trace of it. `scripts/swarm backups drill` runs it as root
# on a test-bed host or on a machine you name. DIR (root-only) holds backup.tar.gz and, for
# an autolocked backup, swarm-keytool and its unlock key.
#
# The restored swarm is yesterday's, with its services and their secrets, and from the
# moment `swarm init --force-new-cluster` returns it hands this node its tasks (the drain
# that follows comes too late). So the drill runs its own dockerd, sealed: in a network
# namespace with nothing but loopback, on an empty data root. It holds no image and can pull
# none, so each task fails before Docker creates its container; the engine's event log,
# printed last, shows it. The machine's own Docker, its images and any swarm it is in are
# not touched.
set -euo pipefail
dir=${1:?usage: restore-drill.sh DIR}
die() { printf 'drill: %s\n' "$*" >&2; exit 1; }

if [[ ${SWARM_DRILL_SEALED:-} != 1 ]]; then
  for tool in unshare:util-linux ip:iproute2 dockerd:docker containerd:containerd; do
    command -v "${tool%%:*}" >/dev/null || die "${tool%%:*} is missing on this machine (package ${tool#*:})"
  done
  # The backup and its unlock key go whatever happens in there (or if it never starts).
  trap 'rm -rf "$dir"' EXIT
  SWARM_DRILL_SEALED=1 unshare --net --mount "$BASH" "$0" "$@"
  exit
fi

# In here: the mount namespace is private (unshare's default), so this /run, and whatever
# dockerd mounts, vanish with the drill's last process. An empty /run hides the machine's
# containerd and Docker sockets: the sealed dockerd starts a containerd of its own.
mount -t tmpfs -o mode=0755,size=64m swarm-drill /run
ip link set lo up
run=/run/swarm-drill
mkdir -p "$run"
export DOCKER_HOST=unix://$run/docker.sock
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
docker() { timeout 120 "$(type -P docker)" "$@"; }
SWARM_DIR=$dir/docker/swarm

stop_pid() { # PID: TERM, up to 30 s, then KILL
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$1" 2>/dev/null || true
}
daemon=''
cleanup() {
  if [[ -n $daemon ]]; then
    stop_pid "$daemon"
    # dockerd stops its containerd; if dockerd had to be killed, that containerd is left.
    if [[ -f $run/exec/containerd/containerd.pid ]]; then stop_pid "$(cat "$run/exec/containerd/containerd.pid")"; fi
  fi
}
trap cleanup EXIT

start=$(date +%s)
printf '{}\n' >"$dir/daemon.json" # none of the machine's daemon.json (mirrors, log drivers)
dockerd --config-file "$dir/daemon.json" --data-root "$dir/docker" --exec-root "$run/exec" \
  --pidfile "$run/docker.pid" -H "$DOCKER_HOST" --storage-driver vfs --bridge none --iptables=false \
  >"$dir/dockerd.log" 2>&1 &
daemon=$!
for _ in $(seq 150); do
  docker info >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || break
  sleep 0.2
done
docker info >/dev/null 2>&1 || die "the drill's dockerd did not start: $(tail -n 5 "$dir/dockerd.log")"

tar -xzf "$dir/backup.tar.gz" -C "$dir/docker"
lock=()
if [[ -f $dir/unlock ]]; then
  "$dir/swarm-keytool" unlock-state "$SWARM_DIR" <"$dir/unlock" >/dev/null
  lock=(--autolock)
fi
# The init prints the unlock key of an autolocked swarm: it goes nowhere.
docker swarm init --force-new-cluster "${lock[@]}" --advertise-addr 127.0.0.1 >/dev/null
self=$(docker info --format '{{.Swarm.NodeID}}')

# Let the swarm offer this node its tasks and see one refused for want of an image
# ("Rejected": it failed before its container was created), so the report shows what the
# seal stopped; at most 15 s, 5 s when nothing is meant to run here. Then drain.
for i in $(seq 30); do
  states=$(docker node ps "$self" --format '{{.CurrentState}}' 2>/dev/null) || states=''
  [[ $states == *Rejected* ]] && break
  ((i >= 10)) && [[ -z $(docker node ps "$self" --filter desired-state=running -q 2>/dev/null) ]] && break
  sleep 0.5
done
docker node update --availability drain "$self" >/dev/null

echo "== engine"
docker version --format '{{json .Server.Version}}'
for section in service secret config; do
  echo "== ${section}s"
  docker "$section" ls --format '{{json .}}'
done
echo "== networks"
docker network ls --filter scope=swarm --format '{{json .}}'
echo "== nodes"
docker node ls --format '{{json .}}'
echo "== tasks"
docker node ps "$self" --no-trunc --format '{{json .}}'
echo "== container events"
docker events --since "$start" --until "$(date +%s)" --filter type=container --format '{{json .}}'
