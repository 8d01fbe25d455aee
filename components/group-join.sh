# shellcheck shell=bash
# Worker groups only (components/groups.py): spliced into user-data.sh at its
# SWARM_GROUP_JOIN marker, where Docker runs and /etc/swarm/env is written.
# shellcheck disable=SC2154  # fail and the SWARM_* settings come from user-data.sh
# A group worker fetches the agent from the state bucket with its role, checks the
# tarball against the sha256 its launch template pins before anything of it runs (whoever
# can write the bucket cannot hand it another agent), installs it as Pulumi's `ready`
# does, and joins (the token comes from SSM, never through here).
[[ $SWARM_AGENT_SHA256 =~ ^[0-9a-f]{64}$ ]] || fail "bad SWARM_AGENT_SHA256"
tarball=/run/swarm-agent.tar.gz
s3=(env AWS_METADATA_SERVICE_TIMEOUT=5 AWS_METADATA_SERVICE_NUM_ATTEMPTS=3 aws s3 cp --only-show-errors --region "$SWARM_REGION")
[[ -n $SWARM_S3_ENDPOINT ]] && s3+=(--endpoint-url "$SWARM_S3_ENDPOINT")
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  "${s3[@]}" "s3://$SWARM_BUCKET/${SWARM_PREFIX}agent/$SWARM_AGENT_SHA256.tar.gz" "$tarball" && break
  ((attempt < 10)) || fail "the agent could not be fetched from s3://$SWARM_BUCKET/${SWARM_PREFIX}agent/"
  sleep 3
done
echo "$SWARM_AGENT_SHA256  $tarball" | sha256sum -c --quiet - || fail "the agent's tarball does not match its pinned sha256"
mkdir -p /usr/local/lib/swarm/incoming  # install.py's BASE
incoming=$(mktemp -d /usr/local/lib/swarm/incoming/XXXXXXXX)
tar -xzf "$tarball" --no-same-owner -C "$incoming"
python3 -B "$incoming/swarm_agent/install.py" "$incoming" "$SWARM_AGENT_DIGEST"
rm -rf "$incoming" "$tarball"
/usr/local/sbin/swarm-node group-join || fail "group-join failed (see above)"
