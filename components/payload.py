"""What leaves this repository for the nodes at boot: user-data, and the stack bundles.

User-data is `components/user-data.sh` with its settings marker replaced by shell
assignments: only what must happen before the first SSH (the node agent itself comes
over SSH, components/agent.py). EC2 receives it gzipped (cloud-init unpacks gzip
user-data); EC2 refuses more than 16 KiB, and the program keeps it under half of that.
Bundles are deterministic (sorted members, zero mtimes) so that an unchanged file never
looks like a change to Pulumi, and a changed one always does.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import shlex
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pulumi

if TYPE_CHECKING:
    from components.settings import NodePlan, Settings

ROOT = Path(__file__).resolve().parent.parent
STACK_FILES = ROOT / "scripts" / "stacks"
USER_DATA_TEMPLATE = ROOT / "components" / "user-data.sh"
GROUP_JOIN = ROOT / "components" / "group-join.sh"
# The backups' cryptography: part of the agent, and shipped alone to a drill host.
KEYTOOL = ROOT / "agent" / "swarm_agent" / "keytool.py"
SETTINGS_MARKER = "# @SWARM_SETTINGS@"
GROUP_MARKER = "# @SWARM_GROUP_JOIN@"
# EC2 refuses user-data above 16 KiB; the program refuses above 8 KiB, so that what has
# to happen before the first SSH stays small and the agent is never pushed back into it.
USER_DATA_LIMIT = 16384
USER_DATA_BUDGET = 8192
NODE_CLI = "/usr/local/sbin/swarm-node"


def bundle(directory: Path, exclude: tuple[str, ...] = (), extra: dict[str, bytes] | None = None) -> str:
    """base64 of a gzip tarball of the files directly in `directory` (and `extra`, root-only
    files made here), byte-for-byte stable."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.name in exclude or path.name.startswith("."):
                continue
            _add(tar, path.name, path.read_bytes(), 0o755 if path.stat().st_mode & 0o111 else 0o644)
        for name, data in sorted((extra or {}).items()):
            _add(tar, name, data, 0o600)
    return base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def digest(directory: Path) -> str:
    """sha256 over the names and contents of the files in `directory`."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


MIRROR_CREDENTIALS = "aws-credentials"  # in the stack archive: the mirror's key, never kept on disk


def stacks_payload(mirror_key: tuple[pulumi.Output[str], pulumi.Output[str]] | None = None) -> pulumi.Input[str]:
    """The stack files for `mirror-deploy`'s stdin, with the mirror's own S3 key (a shared
    credentials file) when it has one: then the whole payload is a secret."""
    if mirror_key is None:
        return bundle(STACK_FILES)
    return pulumi.Output.secret(
        pulumi.Output.all(*mirror_key).apply(
            lambda key: bundle(STACK_FILES, extra={MIRROR_CREDENTIALS: credentials_file(*key)})
        )
    )


def credentials_file(access_key_id: str, secret_access_key: str) -> bytes:
    return f"[default]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret_access_key}\n".encode()


@functools.cache
def _user_data_template() -> str:
    template = USER_DATA_TEMPLATE.read_text()
    if SETTINGS_MARKER not in template:
        raise RuntimeError(f"{USER_DATA_TEMPLATE} lost its marker {SETTINGS_MARKER!r}")
    return template


def node_environment(settings: Settings, node: NodePlan, bucket_name: str) -> dict[str, str]:
    """What /etc/swarm/env says on a node; the verbs read nothing else."""
    return {
        "SWARM_STACK": settings.stack,
        "SWARM_CLUSTER": settings.cluster_name,
        "SWARM_NODE_NAME": node.name,
        "SWARM_ROLE": node.role,
        "SWARM_ADVERTISE_ADDR": node.private_ip or "",
        "SWARM_BUCKET": bucket_name,
        "SWARM_PREFIX": settings.state_prefix,
        "SWARM_REGION": settings.region or "",
        "SWARM_S3_ENDPOINT": settings.s3_endpoint or "",
        "SWARM_REGISTRY_MIRRORS": " ".join(settings.registry_mirrors),
        "SWARM_MIRROR_PORT": str(settings.mirror_port),
        "SWARM_MIRROR_UPSTREAM": settings.mirror_upstream,
        "SWARM_BACKUP_KEEP": str(settings.backup_keep),
        "SWARM_SSH_USER": node.user or settings.ssh_user,
        "SWARM_BACKUP_TARGET": settings.backup_target,
        "SWARM_MIRROR_STORAGE": settings.mirror_storage,
        "SWARM_CONTAINERD_STORE": "true" if settings.containerd_image_store else "false",
        "SWARM_ECR_REFRESH": "true" if settings.ecr_refresh else "false",
        "SWARM_ECR_ENDPOINT": settings.ecr_endpoint or "",
        # The managers' group watcher (swarm:workerGroups) asks Auto Scaling here.
        "SWARM_AUTOSCALING_ENDPOINT": getattr(settings.group_endpoints, "autoscaling", None) or "",
        # swarm:logs cloudwatch: dockerd's awslogs driver and the agent ship here ("" keeps logs on the node).
        "SWARM_LOG_GROUP": settings.logs.group if settings.logs else "",
        "SWARM_LOGS_ENDPOINT": (settings.logs.logs_endpoint or "") if settings.logs else "",
        "SWARM_METRICS_NAMESPACE": settings.logs.namespace if settings.logs else "",
        "SWARM_METRICS_ENDPOINT": (settings.logs.monitoring_endpoint or "") if settings.logs else "",
    }


def render_user_data(values: Mapping[str, str | None], group_join: bool = False) -> str:
    """user-data.sh with `SWARM_*` assignments in place of its marker; for a worker group's
    machines (`group_join`) also group-join.sh in place of the other: they fetch the agent
    and join by themselves. Every other machine's user-data never calls the agent."""
    lines = [f"{key}={shlex.quote('' if value is None else str(value))}" for key, value in values.items()]
    template = _user_data_template()
    if GROUP_MARKER not in template:
        raise RuntimeError(f"{USER_DATA_TEMPLATE} lost its marker {GROUP_MARKER!r}")
    joining = "".join(line for line in GROUP_JOIN.read_text().splitlines(True) if not line.startswith("# shellcheck"))
    template = template.replace(GROUP_MARKER, joining if group_join else "", 1)
    return template.replace(SETTINGS_MARKER, "\n".join(lines), 1)


def with_host_key(script: str, private_key: str, public_key: str) -> str:
    """EC2 user-data as MIME multipart: a cloud-config part whose `ssh_keys` cloud-init
    writes as the machine's ed25519 host key before sshd first starts (cc_ssh, in
    cloud-init's network stage), then the script, which runs in its final stage."""
    boundary = "SWARM-USER-DATA"
    indented = "".join(f"    {line}\n" for line in private_key.strip().splitlines())
    cloud_config = f"#cloud-config\nssh_keys:\n  ed25519_private: |\n{indented}  ed25519_public: {public_key}\n"
    part = 'Content-Type: {}; charset="us-ascii"\n\n{}'
    return (
        f'Content-Type: multipart/mixed; boundary="{boundary}"\nMIME-Version: 1.0\n\n'
        f"--{boundary}\n{part.format('text/cloud-config', cloud_config)}\n"
        f"--{boundary}\n{part.format('text/x-shellscript', script)}\n"
        f"--{boundary}--\n"
    )


def gzip_base64(text: str) -> str:
    """base64 of gzip(text), deterministic: what EC2's `user_data_base64` takes."""
    return base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()
