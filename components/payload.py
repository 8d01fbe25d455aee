"""The shell that leaves this repository for the nodes: user-data and stack bundles.

User-data is `scripts/node/user-data.sh` with its settings marker replaced by shell
assignments and the other files of `scripts/node/` carried inside as a base64 tarball;
EC2 receives it gzipped (cloud-init unpacks gzip user-data), which keeps it far below
EC2's 16 KiB limit.
Bundles are deterministic (sorted members, zero mtimes) so that an unchanged file never
looks like a change to Pulumi, and a changed one always does.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import re
import shlex
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.settings import NodePlan, Settings

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPTS = ROOT / "scripts" / "node"
STACK_FILES = ROOT / "scripts" / "stacks"
USER_DATA_TEMPLATE = NODE_SCRIPTS / "user-data.sh"
# The backups' cryptography (python3), installed on the managers by a command, not user-data.
KEYTOOL = ROOT / "scripts" / "manager" / "swarm_keytool.py"
SETTINGS_MARKER = "# @SWARM_SETTINGS@"
PAYLOAD_MARKER = "# @SWARM_PAYLOAD@"
# EC2 refuses user-data above 16 KiB.
USER_DATA_LIMIT = 16384
NODE_CLI = "/usr/local/sbin/swarm-node"


def bundle(directory: Path, exclude: tuple[str, ...] = ()) -> str:
    """base64 of a gzip tarball of the files directly in `directory`, byte-for-byte stable."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.name in exclude or path.name.startswith("."):
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size = len(data)
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.mtime = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode()


def digest(directory: Path) -> str:
    """sha256 over the names and contents of the files in `directory`."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def node_payload() -> str:
    """The node scripts as shell that writes each into "$lib.new": plain text in heredocs,
    without comment lines (EC2 takes 16 KiB of user-data, gzipped, and gzip packs text far
    better than base64 of a tarball). Built once per program run."""
    parts = []
    for path in sorted(NODE_SCRIPTS.iterdir()):
        if not path.is_file() or path.name == USER_DATA_TEMPLATE.name or path.name.startswith("."):
            continue
        text = for_the_nodes(path.read_text(), path.name)
        mode = "0755" if path.stat().st_mode & 0o111 else "0644"
        delimiter = "SWARM_FILE_" + hashlib.sha256(text.encode()).hexdigest()[:16]
        if delimiter in text:  # pragma: no cover - a sha256 prefix inside its own text
            raise RuntimeError(f"{path} contains its own heredoc delimiter")
        parts.append(f"payload_file {shlex.quote(path.name)} {mode} <<'{delimiter}'\n{text}{delimiter}\n")
    return "".join(parts)


_HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*$")


def _open_quote(code: str) -> bool:
    try:
        shlex.split(code, comments=True)
    except ValueError:
        return True
    return False


def for_the_nodes(text: str, name: str) -> str:
    """The file as the nodes get it: whole-line comments left out (the repository keeps
    them), but for the shebang and shellcheck directives, and in shell the indentation too,
    except inside heredocs: bash means the same by it (a unit test compares swarm-node's
    functions as bash reads them), and EC2's 16 KiB has no room for either."""
    shell = name.endswith((".sh", ".bash-completion")) or (text.startswith("#!") and "sh" in text.splitlines()[0])
    kept, heredoc, quoted = [], None, ""
    for line in text.splitlines():
        if heredoc is not None:
            kept.append(line)
            heredoc = None if line == heredoc else heredoc
            continue
        if not quoted and line.lstrip().startswith("#") and not line.startswith("#!") and "shellcheck " not in line:
            continue
        if shell:
            # A quoted string that spans lines (an awk program) keeps its lines whole.
            line = line if quoted else line.lstrip(" ")
            quoted = f"{quoted}\n{line}" if quoted else line
            quoted = quoted if _open_quote(quoted) else ""
            match = None if quoted else _HEREDOC.search(line)
            heredoc = match.group(1) if match else None
        kept.append(line)
    return "\n".join(kept) + "\n"


@functools.cache
def keytool_payload() -> str:
    """swarm-keytool as one line: base64 of its gzip (stable bytes, so no spurious diff)."""
    return base64.b64encode(gzip.compress(KEYTOOL.read_bytes(), compresslevel=9, mtime=0)).decode()


def stacks_payload() -> str:
    return bundle(STACK_FILES)


@functools.cache
def _user_data_template() -> str:
    template = USER_DATA_TEMPLATE.read_text()
    for marker in (SETTINGS_MARKER, PAYLOAD_MARKER):
        if marker not in template:
            raise RuntimeError(f"{USER_DATA_TEMPLATE} lost its marker {marker!r}")
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
    }


def render_user_data(values: Mapping[str, str | None], payload: str | None = None) -> str:
    """user-data.sh with `SWARM_*` assignments and the node scripts in place of its markers."""
    template = _user_data_template()
    lines = [f"{key}={shlex.quote('' if value is None else str(value))}" for key, value in values.items()]
    text = template.replace(SETTINGS_MARKER, "\n".join(lines), 1)
    return text.replace(PAYLOAD_MARKER, (payload if payload is not None else node_payload()).rstrip("\n"), 1)


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
