#!/usr/bin/env bash
# Node user-data: runs once as root via cloud-init (and is safe to run again). Python
# replaces the settings marker below with shlex-quoted SWARM_* assignments. It does only
# what must happen before the first SSH: hostname, Docker, the aws CLI and python3 from
# the distribution where missing, daemon.json (before Docker first starts) and
# /etc/swarm/env. The node agent (swarm-node) arrives over SSH afterwards
# (components/agent.py) and does all the swarm work. On EC2 cloud-init runs this at
# boot; on machines the user brings, Pulumi runs it over SSH (`sudo bash -s`) with the
# hosts' S3 credentials, if any, on stdin: they are written root-only and never reach
# /etc/swarm/env, a log or an argv.
set -euo pipefail
# @SWARM_SETTINGS@
: "${SWARM_STACK:?}" "${SWARM_CLUSTER:?}" "${SWARM_NODE_NAME:?}" "${SWARM_ROLE:?}"
: "${SWARM_ADVERTISE_ADDR=}" "${SWARM_BUCKET=}" "${SWARM_PREFIX:?}" "${SWARM_REGION=}"
: "${SWARM_S3_ENDPOINT=}" "${SWARM_REGISTRY_MIRRORS=}" "${SWARM_MIRROR_PORT:?}"
: "${SWARM_MIRROR_UPSTREAM:?}" "${SWARM_BACKUP_KEEP:?}" "${SWARM_SSH_USER:?}"
: "${SWARM_BACKUP_TARGET:=s3}" "${SWARM_MIRROR_STORAGE:=s3}" "${SWARM_CONTAINERD_STORE:=false}"
: "${SWARM_ECR_REFRESH:=true}" "${SWARM_ECR_ENDPOINT=}"
: "${SWARM_AWS_ACCESS_KEY_ID=}" "${SWARM_AWS_SECRET_ACCESS_KEY=}" "${SWARM_OPERATOR_KEY=}"
# Worker groups (components/groups.py): the machine joins by itself, with no Pulumi there.
: "${SWARM_GROUP=}" "${SWARM_MANAGER_ADDRS=}" "${SWARM_JOIN_TOKEN_PARAMETER=}" "${SWARM_SSM_ENDPOINT=}"
: "${SWARM_AUTOSCALING_ENDPOINT=}" "${SWARM_AGENT_SHA256=}" "${SWARM_AGENT_DIGEST=}"
: "${SWARM_LOG_GROUP=}" "${SWARM_LOGS_ENDPOINT=}" "${SWARM_METRICS_NAMESPACE=}" "${SWARM_METRICS_ENDPOINT=}"
: "${SWARM_LOGS_ACCESS_KEY_ID=}" "${SWARM_LOGS_SECRET_ACCESS_KEY=}"

PATH=$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umask 022
mkdir -p /etc/swarm
exec > >(tee -a /var/log/swarm-user-data.log) 2>&1
echo "user-data: start $(date -u +%FT%TZ) on $SWARM_NODE_NAME"
# The morning's start, for the morning-slow alarm (the agent's metrics.py).
mkdir -p /var/lib/swarm && date +%s >/var/lib/swarm/user-data.started
# A waiter polls for this file so a broken boot fails in seconds, not at its timeout.
set -E
trap 'echo "line $LINENO: $BASH_COMMAND (exit $?)" >/etc/swarm/failed' ERR
fail() { echo "$*" >/etc/swarm/failed; echo "user-data: $*" >&2; exit 1; }
rm -f /etc/swarm/failed /etc/swarm/ready
case $SWARM_BACKUP_TARGET in
  s3) [[ -n $SWARM_BUCKET && -n $SWARM_REGION ]] || fail "backup target s3 needs SWARM_BUCKET and SWARM_REGION" ;;
  local | none) ;;
  *) fail "unknown backup target '$SWARM_BACKUP_TARGET'" ;;
esac

# The hosts' own keys (machines the user brings): root-only, outside /etc/swarm/env. The S3
# keys (managers only) and the logs-only key (every host, with swarm:logs cloudwatch).
credentials() { # FILE ID SECRET: written when given, removed when not
  if [[ -n $2 ]]; then
    (
      umask 077
      # printf is a builtin: the keys never appear in a process list.
      printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$2" "$3" >"$1.new"
    )
    chown root:root "$1.new"
    mv "$1.new" "$1"
  else
    rm -f "$1"
  fi
}
credentials /etc/swarm/aws-credentials "$SWARM_AWS_ACCESS_KEY_ID" "$SWARM_AWS_SECRET_ACCESS_KEY"
logs_creds=/etc/swarm/logs-credentials
credentials $logs_creds "$SWARM_LOGS_ACCESS_KEY_ID" "$SWARM_LOGS_SECRET_ACCESS_KEY"
unset SWARM_LOGS_ACCESS_KEY_ID SWARM_LOGS_SECRET_ACCESS_KEY
unset SWARM_AWS_ACCESS_KEY_ID SWARM_AWS_SECRET_ACCESS_KEY

# A group's machines share one launch template: each is named by its instance id.
imds() { curl -sf --max-time 2 --retry 5 --retry-connrefused -H "X-aws-ec2-metadata-token: $imds_token" \
  "http://169.254.169.254/latest/meta-data/$1"; }
if [[ -n $SWARM_GROUP ]]; then
  imds_token=$(curl -sf --max-time 2 --retry 5 --retry-connrefused -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token) ||
    fail "the metadata service gave no token"
  instance_id=$(imds instance-id) || fail "the metadata service gave no instance id"
  [[ $instance_id =~ ^i-[0-9a-f]{8,17}$ ]] || fail "bad instance id '$instance_id'"
  SWARM_NODE_NAME="$SWARM_GROUP-$instance_id"
  SWARM_ADVERTISE_ADDR=$(imds local-ipv4) || fail "the metadata service gave no address"
fi
if ! hostnamectl set-hostname "$SWARM_NODE_NAME" 2>/dev/null; then
  hostname "$SWARM_NODE_NAME"
  echo "$SWARM_NODE_NAME" >/etc/hostname
fi
# sudo warns on every call when the hostname does not resolve.
getent hosts "$SWARM_NODE_NAME" >/dev/null || echo "127.0.1.1 $SWARM_NODE_NAME" >>/etc/hosts
# cloud-init would otherwise rename the node on reboot, and swarm keys nodes by hostname.
if [[ -d /etc/cloud/cloud.cfg.d ]]; then
  echo 'preserve_hostname: true' >/etc/cloud/cloud.cfg.d/99-swarm-hostname.cfg
fi

# shellcheck disable=SC1091
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
  *" amzn "* | *" fedora "* | *" rhel "*)
    command -v dnf >/dev/null || fail "$PRETTY_NAME has no dnf"
    pkg() { dnf install -y "$@"; } ;;
  *" debian "* | *" ubuntu "*)
    apt_updated=0
    pkg() {
      ((apt_updated)) || { apt-get update -q; apt_updated=1; }
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
    } ;;
  *) fail "unsupported distribution '${PRETTY_NAME:-unknown}' (want Amazon Linux 2023, Debian or Ubuntu)" ;;
esac
if ! command -v docker >/dev/null; then
  if [[ $ID == amzn ]]; then pkg docker; else pkg docker.io; fi
fi
if [[ $SWARM_BACKUP_TARGET == s3 ]] && ! command -v aws >/dev/null; then
  if [[ $ID == amzn ]]; then pkg awscli-2
  # Ubuntu 24.04 dropped the awscli deb; the snap is the supported route there.
  elif ! pkg awscli; then snap install aws-cli --classic; fi
fi
# The node agent is python3 with its standard library.
command -v python3 >/dev/null || pkg python3

mirrors='' insecure=''
[[ $SWARM_CONTAINERD_STORE == true || $SWARM_CONTAINERD_STORE == false ]] ||
  fail "SWARM_CONTAINERD_STORE must be true or false"
for url in $SWARM_REGISTRY_MIRRORS; do
  [[ $url =~ ^https?://[A-Za-z0-9.-]+(:[0-9]+)?/?$ ]] || fail "bad mirror URL '$url'"
  mirrors+="${mirrors:+, }\"$url\""
  if [[ $url == http://* ]]; then
    hostport=${url#http://}
    insecure+="${insecure:+, }\"${hostport%/}\""
  fi
done
# swarm:logs cloudwatch: containers log to the stack's group (a stream per container,
# named by node) and still to a local cache that `docker logs` reads (dual logging);
# non-blocking: a CloudWatch outage never stops a container from starting.
logging='"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}'
if [[ -n $SWARM_LOG_GROUP ]]; then
  [[ -n $SWARM_REGION ]] || fail "swarm:logs cloudwatch needs SWARM_REGION"
  logging="\"log-driver\": \"awslogs\", \"log-opts\": {\"awslogs-group\": \"$SWARM_LOG_GROUP\",
    \"awslogs-region\": \"$SWARM_REGION\", \"tag\": \"$SWARM_NODE_NAME/containers/{{.Name}}\",
    \"mode\": \"non-blocking\"${SWARM_LOGS_ENDPOINT:+, \"awslogs-endpoint\": \"$SWARM_LOGS_ENDPOINT\"}}"
fi
# dockerd finds the hosts' logs-only key through its environment (EC2: the instance role).
dropin=/etc/systemd/system/docker.service.d/swarm-logs.conf
daemon_changed=0
if [[ -f $logs_creds ]]; then
  mkdir -p "${dropin%/*}"
  want="[Service]"$'\n'"Environment=AWS_SHARED_CREDENTIALS_FILE=$logs_creds"
  [[ $(cat "$dropin" 2>/dev/null) == "$want" ]] || { printf '%s\n' "$want" >"$dropin" && daemon_changed=1; }
elif [[ -f $dropin ]]; then
  rm -f "$dropin" && daemon_changed=1
fi
# No live-restore: swarm mode refuses to start with it.
mkdir -p /etc/docker
cat >/etc/docker/daemon.json.new <<EOF
{
  $logging,
  "registry-mirrors": [$mirrors],
  "insecure-registries": [$insecure],
  "features": {"containerd-snapshotter": $SWARM_CONTAINERD_STORE}
}
EOF
if cmp -s /etc/docker/daemon.json.new /etc/docker/daemon.json; then
  rm -f /etc/docker/daemon.json.new
else
  mv /etc/docker/daemon.json.new /etc/docker/daemon.json
  daemon_changed=1
fi

{
  for var in SWARM_STACK SWARM_CLUSTER SWARM_NODE_NAME SWARM_ROLE SWARM_ADVERTISE_ADDR \
    SWARM_BUCKET SWARM_PREFIX SWARM_REGION SWARM_S3_ENDPOINT SWARM_REGISTRY_MIRRORS \
    SWARM_MIRROR_PORT SWARM_MIRROR_UPSTREAM SWARM_BACKUP_KEEP SWARM_SSH_USER \
    SWARM_BACKUP_TARGET SWARM_MIRROR_STORAGE SWARM_CONTAINERD_STORE SWARM_ECR_REFRESH \
    SWARM_ECR_ENDPOINT SWARM_GROUP SWARM_MANAGER_ADDRS SWARM_JOIN_TOKEN_PARAMETER \
    SWARM_SSM_ENDPOINT SWARM_AUTOSCALING_ENDPOINT SWARM_LOG_GROUP SWARM_LOGS_ENDPOINT \
    SWARM_METRICS_NAMESPACE SWARM_METRICS_ENDPOINT; do
    printf '%s=%q\n' "$var" "${!var}"
  done
} >/etc/swarm/env.new
chmod 0644 /etc/swarm/env.new
mv /etc/swarm/env.new /etc/swarm/env

getent group docker >/dev/null || groupadd -r docker
if id -u "$SWARM_SSH_USER" >/dev/null 2>&1; then usermod -aG docker "$SWARM_SSH_USER"; fi
# The operator key (the one the program generated and keeps): every machine accepts it,
# so Pulumi still reaches the running ones after a switch to your own key pair.
if [[ -n $SWARM_OPERATOR_KEY ]]; then
  home=$(getent passwd "$SWARM_SSH_USER" | cut -d: -f6)
  [[ -n $home ]] || fail "no user $SWARM_SSH_USER for the operator key"
  install -d -m 0700 -o "$SWARM_SSH_USER" -g "$(id -gn "$SWARM_SSH_USER")" "$home/.ssh"
  read -r _ body _ <<<"$SWARM_OPERATOR_KEY"
  if ! grep -qF -- "$body" "$home/.ssh/authorized_keys" 2>/dev/null; then
    printf '%s\n' "$SWARM_OPERATOR_KEY" >>"$home/.ssh/authorized_keys"
    chown "$SWARM_SSH_USER:" "$home/.ssh/authorized_keys"
    chmod 0600 "$home/.ssh/authorized_keys"
  fi
fi

# Debian's, Ubuntu's and Docker's packages start dockerd through docker.socket: enable
# and start both (the agent's docker-service verb does the same later on).
if [[ -d /run/systemd/system ]]; then
  units=()
  for unit in docker.socket docker.service; do
    [[ $(systemctl show -P LoadState "$unit") == loaded ]] && units+=("$unit")
  done
  ((${#units[@]})) || fail "systemd has no docker.service"
  systemctl enable "${units[@]}"
  systemctl reset-failed "${units[@]}" 2>/dev/null || true
  if ((daemon_changed)); then systemctl daemon-reload && systemctl restart docker.service; fi
  systemctl start "${units[@]}"
else
  service docker "$( ((daemon_changed)) && echo restart || echo start)"
fi

# @SWARM_GROUP_JOIN@

rm -f /etc/swarm/failed
touch /etc/swarm/ready
echo "user-data: ready $(date -u +%FT%TZ)"
