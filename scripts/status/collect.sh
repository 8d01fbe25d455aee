#!/usr/bin/env bash
# collect.sh: what `scripts/swarm status` shows, read on the swarm's leader (run as root
# with this script on stdin). Read-only. Prints sections: `== name`, then JSON (one value
# per line, or one document). Every docker and aws call is bounded.
set -euo pipefail
docker() { timeout 60 "$(type -P docker)" "$@"; }
aws() { timeout 120 "$(type -P aws)" "$@"; }
# shellcheck disable=SC1091
. /etc/swarm/env

echo "== swarm"
docker info --format '{{json .Swarm}}'
echo "== nodes"
mapfile -t ids < <(docker node ls -q)
docker node inspect --format '{{json .}}' "${ids[@]}"
echo "== services"
docker service ls --format '{{json .}}'
echo "== ports"
mapfile -t services < <(docker service ls -q)
if ((${#services[@]})); then
  docker service inspect --format '{"name":{{json .Spec.Name}},"ports":{{json .Endpoint.Spec.Ports}}}' "${services[@]}"
fi

echo "== registry-auth"
# The last ECR refresh on this leader (agent/swarm_agent/registry_auth.py), if it made one.
cat /run/swarm-registry-auth.json 2>/dev/null || echo null
echo

echo "== groups"
# The worker groups as the leader's watcher last saw them (agent/swarm_agent/groups.py).
cat /run/swarm-groups.json 2>/dev/null || echo null
echo

[[ ${SWARM_BACKUP_TARGET:-s3} == s3 ]] || exit 0
args=(--region "$SWARM_REGION")
[[ -n ${SWARM_S3_ENDPOINT:-} ]] && args+=(--endpoint-url "$SWARM_S3_ENDPOINT")
[[ -f /etc/swarm/aws-credentials ]] && export AWS_SHARED_CREDENTIALS_FILE=/etc/swarm/aws-credentials
store="s3://$SWARM_BUCKET/$SWARM_PREFIX"
echo "== backups"
aws "${args[@]}" s3api list-objects-v2 --bucket "$SWARM_BUCKET" --prefix "${SWARM_PREFIX}backups/" \
  --query 'Contents[].{key: Key, size: Size, modified: LastModified}' --output json
echo "== latest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if aws "${args[@]}" s3 cp "${store}backups/latest" "$tmp/latest" --only-show-errors 2>/dev/null; then
  read -r key want <"$tmp/latest"
  name=${key#backups/}
  aws "${args[@]}" s3 cp "${store}backups/" "$tmp/" --recursive --exclude '*' --include "$name" \
    --include "$name.sha256" --include "$name.meta" --only-show-errors
  got=$(sha256sum "$tmp/$name" | cut -d' ' -f1)
  side=$(cut -d' ' -f1 "$tmp/$name.sha256" 2>/dev/null || true)
  signature=unsigned
  if [[ -s $tmp/$name.meta ]] && grep -q '^signature=' "$tmp/$name.meta"; then
    signature=unchecked
    if [[ -x /usr/local/sbin/swarm-keytool ]]; then
      signature=mismatch
      [[ $(sed -n "s/^signature=//p" "$tmp/$name.meta") == "$(/usr/local/sbin/swarm-keytool sign "$key" "$got")" ]] && signature=ok
    fi
  fi
  printf '{"key":"%s","sha256":"%s","matchesPointer":%s,"matchesSidecar":%s,"signature":"%s"}\n' \
    "$key" "$got" "$([[ $got == "$want" ]] && echo true || echo false)" \
    "$([[ $got == "$side" ]] && echo true || echo false)" "$signature"
else
  echo null
fi
echo "== mirror"
# (an empty cache is an `aws s3 ls` that fails: none yet)
{ aws "${args[@]}" s3 ls --recursive --summarize "${store}mirror/" 2>/dev/null || true; } |
  awk '/Total Objects:/ {o=$3} /Total Size:/ {s=$3} END {printf "{\"objects\":%d,\"bytes\":%d}\n", o, s}'
