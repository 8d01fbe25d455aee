"""The agent's unit tests' stand-ins: fake docker, aws and systemctl executables scripted
by rules, a fake clock, and the env file user-data writes (the fixture: conftest.py)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import tarfile
from pathlib import Path

from swarm_agent import paths

FAKE_TOOL = Path(__file__).with_name("fake_tool.py")
TOOLS = ("docker", "aws", "systemctl", "service")

DEFAULT_ENV = {
    "SWARM_STACK": "dev",
    "SWARM_CLUSTER": "swarm-dev",
    "SWARM_NODE_NAME": "swarm-dev-manager-0",
    "SWARM_ROLE": "manager",
    "SWARM_ADVERTISE_ADDR": "10.42.0.10",
    "SWARM_BUCKET": "state-bucket",
    "SWARM_PREFIX": "swarm/dev/",
    "SWARM_REGION": "eu-west-1",
    "SWARM_S3_ENDPOINT": "",
    "SWARM_REGISTRY_MIRRORS": "http://10.42.0.10:5000",
    "SWARM_MIRROR_PORT": "5000",
    "SWARM_MIRROR_UPSTREAM": "https://registry-1.docker.io",
    "SWARM_BACKUP_KEEP": "14",
    "SWARM_SSH_USER": "admin",
    "SWARM_BACKUP_TARGET": "s3",
    "SWARM_MIRROR_STORAGE": "s3",
}


class Fakes:
    """Script the fake tools with `on(...)`; read what the agent called with `calls(...)`."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "fake"
        self.bin = root / "bin"
        self.dir.mkdir()
        self.bin.mkdir()
        self.rules: list[dict] = []
        self._save()
        for tool in TOOLS:
            shutil.copy(FAKE_TOOL, self.bin / tool)
            (self.bin / tool).chmod(0o755)

    def on(self, tool: str, *args: str, stdout: str = "", stderr: str = "", rc: int = 0, times=None, writes=()):
        """Answer `tool args...` (a prefix). `writes`: (argument index, bytes) pairs."""
        rule = {"tool": tool, "args": list(args), "stdout": stdout, "stderr": stderr, "rc": rc, "times": times}
        rule["writes"] = [[i, base64.b64encode(data).decode()] for i, data in writes]
        self.rules.append(rule)
        self._save()

    def _save(self) -> None:
        (self.dir / "rules.json").write_text(json.dumps(self.rules))

    def calls(self, tool: str | None = None) -> list[dict]:
        log = self.dir / "calls.jsonl"
        if not log.exists():
            return []
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [e for e in entries if tool is None or e["tool"] == tool]

    def argvs(self, tool: str) -> list[list[str]]:
        return [c["args"] for c in self.calls(tool)]

    def swarm(self, state="active", manager=True, node_id="node0", autolock=False, times=None) -> None:
        """What `docker info --format '{{json .Swarm}}'` answers."""
        info = {
            "LocalNodeState": state,
            "ControlAvailable": manager,
            "NodeID": node_id,
            "Cluster": {"Spec": {"EncryptionConfig": {"AutoLockManagers": autolock}}},
        }
        self.on("docker", "info", "--format", "{{json .Swarm}}", stdout=json.dumps(info) + "\n", times=times)

    def docker_up(self, version="26.1.5") -> None:
        self.on("docker", "info", "--format", "{{.ServerVersion}}", stdout=version + "\n")
        self.on("docker", "version", "--format", "{{.Server.Version}}", stdout=version + "\n")


def write_env(**overrides: str) -> None:
    values = {**DEFAULT_ENV, **overrides}
    Path(paths.ENV_FILE).parent.mkdir(parents=True, exist_ok=True)
    # As user-data writes it: bash's printf %q of each value.
    Path(paths.ENV_FILE).write_text("".join(f"{k}={_q(v)}\n" for k, v in values.items()))


def _q(value: str) -> str:
    if value == "":
        return "''"
    return "".join("\\" + c if not (c.isalnum() or c in "@%+=:,./-_") else c for c in value)


class Clock:
    """time.monotonic and time.sleep for the agent: sleeping moves the clock on at once."""

    def __init__(self):
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def make_tar(files: dict[str, bytes], gz: bool = True, links: tuple[str, ...] = ()) -> bytes:
    """A tar (gzipped unless gz is false) of `files`, plus symbolic links to /etc/shadow."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            tar.addfile(info)
    return raw.getvalue()
