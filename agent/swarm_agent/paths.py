"""Every file and directory the agent reads or writes on a node, in one place.

Modules use them as `paths.NAME` (never `from paths import NAME`), so that the unit
tests point them all into a temporary directory by patching this module alone.
"""

ENV_FILE = "/etc/swarm/env"  # the node's settings (user-data writes it)
READY = "/etc/swarm/ready"  # user-data finished
FAILED = "/etc/swarm/failed"  # user-data broke: the line that did
CREDS_FILE = "/etc/swarm/aws-credentials"  # machines the user brings: their S3 keys, root-only
LOGS_CREDS_FILE = "/etc/swarm/logs-credentials"  # machines the user brings: a logs-only key, root-only
SIGNING_KEY = "/etc/swarm/backup-signing.key"  # the stack's backup signing key, managers only, root-only
STACK_DIR = "/etc/swarm/stacks"  # the mirror's compose files as last deployed
SWARM_DIR = "/var/lib/docker/swarm"  # the Raft state and certificates
RESTORE_DIR = "/var/lib/swarm/restore"  # backups pushed from the machine running Pulumi (target local)
WORK_DIR = "/var/tmp"  # noqa: S108 - each verb makes a private mkdtemp here; where a verb makes its private temporary directory
DOCKER_SOCKET = "/var/run/docker.sock"
# One lock for the verbs that stop dockerd or change the swarm (lock.py).
NODE_LOCK = "/run/swarm-node.lock"
# The last ECR refresh this node did (registry_auth.py): when, and what it said; read by
# `scripts/swarm status` on the leader.
REGISTRY_AUTH_RECORD = "/run/swarm-registry-auth.json"
DATA_MOUNT = "/var/data"  # swarm:dataVolumes (data.py): where a node's kept volume is mounted
DATA_RECORD = "/etc/swarm/data.json"  # this node's data volume (data.py): its ID and name, for each boot
SYS_BLOCK = "/sys/block"  # the kernel's disks (an EBS volume's NVMe serial is its ID)
UNIT_DIR = "/etc/systemd/system"
SYSTEMD_RUN = "/run/systemd/system"  # exists when systemd is PID 1
PROC = "/proc"
# When user-data began this machine's morning (epoch seconds): MorningSeconds (metrics.py).
USER_DATA_STARTED = "/var/lib/swarm/user-data.started"
# swarm:sharedFiles (shared.py): where the stack's EFS file system is mounted, the table
# every boot mounts it from, and what says which distribution (so which NFS client) this is.
SHARED_MOUNT = "/var/data/shared"
FSTAB = "/etc/fstab"
OS_RELEASE = "/etc/os-release"
# Worker groups (groups.py, group_join.py): the groups the leader watches (written by
# `groups-watch --configure`, no secrets), its last pass for `scripts/swarm status`, and
# dockerd's settings, where a group worker's engine labels (its claims) go.
GROUPS_CONFIG = "/etc/swarm/groups.json"
GROUPS_RECORD = "/run/swarm-groups.json"
DAEMON_JSON = "/etc/docker/daemon.json"
# Logs and metrics (logship.py, metrics.py, health.py): one shipper at a time; where the
# journal was shipped up to and which streams exist (kept across boots, as the journal is
# on a machine that stays); the health report's last look at the backups. journald's
# native socket, which the verbs' stderr lines are mirrored to (cli.py).
LOGS_LOCK = "/run/swarm-logs.lock"
LOGS_STATE = "/var/lib/swarm/logs.json"
HEALTH_RECORD = "/run/swarm-health.json"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
