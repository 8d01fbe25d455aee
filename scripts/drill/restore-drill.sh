#!/usr/bin/env bash
# restore-drill.sh DIR [ADVERTISE_ADDR]: restore the backup in DIR into this machine's
# Docker as a throwaway single-node swarm, print what it holds, then leave that swarm and
# put the machine back as it was. `scripts/swarm backups drill` runs it as root on a test-bed
# host or on a machine you name. DIR (root-only) holds backup.tar.gz and, for an
# autolocked backup, swarm-keytool and its unlock key. The services come back drained:
# their definitions are listed, none of their tasks runs here.
set -euo pipefail
dir=${1:?usage: restore-drill.sh DIR [ADVERTISE_ADDR]}
addr=${2:-}
SWARM_DIR=/var/lib/docker/swarm
docker() { timeout 120 "$(type -P docker)" "$@"; }
die() { printf 'drill: %s\n' "$*" >&2; exit 1; }

state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null) || die "Docker does not answer on this machine"
[[ $state == inactive ]] ||
  die "this machine's Docker is in a swarm ($state): a drill needs a machine whose Docker is in none"
aside=''
cleanup() {
  docker swarm leave --force >/dev/null 2>&1 || true
  rm -rf "$SWARM_DIR" "$dir"
  if [[ -n $aside ]]; then mv "$aside" "$SWARM_DIR"; fi
}
trap cleanup EXIT
if [[ -e $SWARM_DIR ]]; then
  aside=$SWARM_DIR.drill-aside
  rm -rf "$aside"
  mv "$SWARM_DIR" "$aside"
fi
tar -xzf "$dir/backup.tar.gz" -C "${SWARM_DIR%/*}"
lock=()
if [[ -f $dir/unlock ]]; then
  "$dir/swarm-keytool" unlock-state "$SWARM_DIR" <"$dir/unlock" >/dev/null
  lock=(--autolock)
fi
# The init prints the unlock key of an autolocked swarm: it goes nowhere.
docker swarm init --force-new-cluster "${lock[@]}" ${addr:+--advertise-addr "$addr"} >/dev/null
self=$(docker info --format '{{.Swarm.NodeID}}')
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
