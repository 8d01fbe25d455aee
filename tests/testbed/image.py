"""The bed's machine images: Debian root filesystems built with debootstrap, as AMIs.

An image is a release of Debian with what a cloud image of it carries for this product:
systemd, Docker from Debian's own packages (`docker.io`, and `docker-cli` where it is
separate), containerd, openssh-server, sudo, the AWS CLI, curl and cloud-init. Two
releases are kept, because people run both: Debian 13 (Docker 26.1, the default) and
Debian 12 (Docker 20.10). Two container images are baked into each image's Docker, as
into an AMI: `registry:2` (made from Debian's docker-registry binary) and a busybox for
test services; the bed cannot pull anything from Docker Hub.

Building takes about a minute per release. The result is cached under
`/var/cache/swarm-bed/images/<release>-<hash>/` (`SWARM_BED_CACHE` moves it), where the
hash covers the recipe, the files copied into the image, this module, and the binaries
the baked container images are made of; a changed recipe builds anew, and older builds
of the same release are removed. Hosts never write to an image: each boots from an
overlay of it (see `host.py`). `rm -r /var/cache/swarm-bed` frees the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = HERE / "image"
CACHE = Path(os.environ.get("SWARM_BED_CACHE", "/var/cache/swarm-bed")) / "images"
MIRROR = os.environ.get("SWARM_BED_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_TIMEOUT = 1200
LOCAL_BUSYBOX = "swarm-bed/busybox:latest"  # in every image, for test services

# debootstrap resolves only plain dependencies (not the virtual packages cloud-init and
# awscli need), so it lays down the base and apt installs the rest inside it.
BASE = ["systemd", "systemd-sysv", "dbus"]
COMMON = [
    "containerd",
    "openssh-server",
    "sudo",
    "awscli",
    "curl",
    "cloud-init",
    "iproute2",
    "iptables",
    "ca-certificates",
    "procps",
    "less",
    "locales",  # cloud-init's locale module needs update-locale, as on Debian's cloud images
    "e2fsprogs",  # mkfs.ext4 for a data volume, as AL2023 and Debian's cloud images have it
]


@dataclass(frozen=True)
class Recipe:
    release: str  # Debian suite
    packages: tuple[str, ...]
    docker: str  # what the release ships, for messages and the README
    # systemd 258 and later refuse to boot on cgroup v1 ("Detected unsupported legacy
    # cgroup hierarchy, refusing execution"), and this machine's controllers are v1: such
    # an image's hosts get a cgroup v2 hierarchy of their own from nspawn, without
    # controllers (they stay bound to the v1 hierarchies), so their containers run without
    # resource limits.
    unified_cgroups: bool = False
    # Bake the container images into containerd's image store too, so a host whose
    # daemon.json turns it on ("containerd-snapshotter") finds them (the stores are apart).
    containerd_store: bool = False


RECIPES = {
    "trixie": Recipe("trixie", ("docker.io", "docker-cli", *COMMON), "Docker 26.1"),
    "forky": Recipe(
        "forky", ("docker.io", "docker-cli", *COMMON), "Docker 28.5", unified_cgroups=True, containerd_store=True
    ),
    "bookworm": Recipe("bookworm", ("docker.io", *COMMON), "Docker 20.10"),
}
DEFAULT_IMAGE = os.environ.get("SWARM_BED_IMAGE", "trixie")


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    """A built image: the root filesystem and the /var/lib/docker every host starts from."""

    name: str
    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"

    @property
    def docker_seed(self) -> Path:
        return self.directory / "docker"

    @property
    def containerd_seed(self) -> Path:
        return self.directory / "containerd"

    @property
    def unified_cgroups(self) -> bool:
        return RECIPES[self.name].unified_cgroups

    def versions(self) -> dict:
        return json.loads((self.directory / "versions.json").read_text())


def _run(args: list[str], *, input: bytes | None = None, timeout: float = BUILD_TIMEOUT, log=None) -> str:
    result = subprocess.run(args, input=input, capture_output=True, timeout=timeout, check=False)
    if log is not None:
        log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
        raise ImageError(f"{' '.join(args[:4])} ... failed ({result.returncode}):\n{tail}")
    return result.stdout.decode(errors="replace")


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{HOST_PATH}:{os.environ.get('PATH', '')}")
    if path is None:
        raise ImageError(f"{name} is missing on this machine")
    return path


def recipe_hash(name: str) -> str:
    """What the cached image depends on: change any of it and the image is built anew."""
    recipe = RECIPES[name]
    h = hashlib.sha256(json.dumps([recipe.release, recipe.packages, BASE, MIRROR]).encode())
    for path in sorted(FILES.iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    # The code that makes an image's content (not the rest of this module).
    for function in (
        _build,
        _debootstrap_script,
        _bake_container_images,
        rootfs_tar,
        _busybox_files,
        _shared_libraries,
    ):
        h.update(inspect.getsource(function).encode())
    for function in (busybox_tar, registry_tar, _import_images):
        h.update(inspect.getsource(function).encode())
    for binary in ("busybox", "docker-registry"):
        h.update(Path(os.path.realpath(tool(binary))).read_bytes())
    return h.hexdigest()[:12]


def _debootstrap_script(release: str) -> list[str]:
    """debootstrap's script for `release`: its own, or sid's, which every Debian suite since
    wheezy links to (Debian 12's debootstrap predates forky and has no link for it)."""
    scripts = Path("/usr/share/debootstrap/scripts")
    if (scripts / release).exists() or not (scripts / "sid").exists():
        return []
    return [str(scripts / "sid")]


def image(name: str = DEFAULT_IMAGE, log=print) -> Image:
    """The image `name`, built first if the cache lacks this recipe's build."""
    if name not in RECIPES:
        raise ImageError(f"no image recipe {name!r}; known: {', '.join(RECIPES)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    directory = CACHE / f"{name}-{recipe_hash(name)}"
    with open(CACHE / f"{name}.lock", "w") as lock:
        # One build at a time per release, also across processes (a sandbox and a test run).
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / "ready").exists():
            _build(name, directory, log)
        for stale in CACHE.glob(f"{name}-*"):
            if stale != directory and stale.is_dir():
                log(f"image {name}: removing the outdated build {stale.name}")
                shutil.rmtree(stale, ignore_errors=True)
    return Image(name, directory)


def _build(name: str, directory: Path, log) -> None:
    recipe = RECIPES[name]
    work = directory.with_name(f".{directory.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    log(f"image {name}: building Debian {recipe.release} with debootstrap (about a minute; cached afterwards)")
    rootfs = work / "rootfs"
    with open(work / "build.log", "wb") as build_log:
        # In a mount namespace of its own: whatever debootstrap or apt mount goes with it.
        _run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                tool("debootstrap"),
                "--variant=minbase",
                f"--include={','.join(BASE)}",
                recipe.release,
                str(rootfs),
                MIRROR,
                *_debootstrap_script(recipe.release),
            ],
            log=build_log,
        )
        bootstrapped = time.monotonic()
        for unit in FILES.glob("*.service"):
            shutil.copy(unit, rootfs / "etc/systemd/system" / unit.name)
        (rootfs / "etc/cloud/cloud.cfg.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(FILES / "90-bed.cfg", rootfs / "etc/cloud/cloud.cfg.d/90-bed.cfg")
        out = _run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "chroot",
                str(rootfs),
                "bash",
                "-s",
                "--",
                *recipe.packages,
            ],
            input=(FILES / "build-rootfs.sh").read_bytes(),
            log=build_log,
        )
    packaged = time.monotonic()
    versions = {
        "release": recipe.release,
        "docker": _package_version(rootfs, "docker.io"),
        "cloud-init": _package_version(rootfs, "cloud-init"),
        "systemd": _package_version(rootfs, "systemd"),
        "debootstrap_seconds": round(bootstrapped - started, 1),
        "packages_seconds": round(packaged - bootstrapped, 1),
    }
    _bake_container_images(name, work, log)
    versions["bake_seconds"] = round(time.monotonic() - packaged, 1)
    versions["build_seconds"] = round(time.monotonic() - started, 1)
    (work / "versions.json").write_text(json.dumps(versions, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    work.rename(directory)
    (directory / "ready").touch()
    log(f"image {name}: built in {versions['build_seconds']:.0f}s ({out.strip().splitlines()[-1]})")


def _package_version(rootfs: Path, package: str) -> str:
    status = (rootfs / "var/lib/dpkg/status").read_text()
    for block in status.split("\n\n"):
        if f"Package: {package}\n" in block + "\n":
            for line in block.splitlines():
                if line.startswith("Version: "):
                    return line.removeprefix("Version: ")
    return ""


def _bake_container_images(name: str, work: Path, log) -> None:
    """Boot the new image once, `docker import` the two images, keep its /var/lib/docker."""
    from testbed.host import Host  # the image's first boot is an ordinary host's

    host = Host.standalone(f"bake-{name}", Image(name, work), work / "bake")
    try:
        host.create()
        host.boot()
        host.wait_booted(120)
        host.wait_docker(120)
        _import_images(host)
        if RECIPES[name].containerd_store:
            daemon = '{"features": {"containerd-snapshotter": true}}'
            host.run(["sh", "-c", f"echo '{daemon}' >/etc/docker/daemon.json && systemctl restart docker"])
            host.wait_docker(120)
            _import_images(host)
            host.run(["rm", "/etc/docker/daemon.json"])  # each node's user-data writes its own
        host.run(["systemctl", "stop", "docker.socket", "docker.service", "containerd.service"])
        host.power_off()
        seed = work / "docker"
        _run(["cp", "-a", str(host.docker_dir), str(seed)])
        _run(["cp", "-a", str(host.containerd_dir), str(work / "containerd")])
        # Per-machine state a real AMI would not carry either.
        for leftover in ("network", "swarm", "containers", "runtimes", "tmp"):
            shutil.rmtree(seed / leftover, ignore_errors=True)
    finally:
        host.wipe()


def _import_images(host) -> None:
    registry_entry = 'ENTRYPOINT ["/bin/registry", "serve", "/etc/docker/registry/config.yml"]'
    host.run(["docker", "import", "--change", registry_entry, "-", "registry:2"], input=registry_tar())
    host.run(["docker", "import", "--change", 'CMD ["sh"]', "-", LOCAL_BUSYBOX], input=busybox_tar())


# -- the container images (no Docker Hub here) ---------------------------------------------
def rootfs_tar(files: dict[str, str], links: dict[str, str]) -> bytes:
    """A tar of `files` (path in image -> file here) and symlinks, for `docker import`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, source in files.items():
            tar.add(source, arcname=arcname)
        for arcname, target in links.items():
            info = tarfile.TarInfo(arcname)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
        for directory in ("tmp", "etc/docker/registry", "var/lib/registry"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
    return buf.getvalue()


def _busybox_files() -> tuple[dict[str, str], dict[str, str]]:
    busybox = tool("busybox")
    applets = _run([busybox, "--list"]).split()
    return {"bin/busybox": busybox}, {f"bin/{a}": "busybox" for a in applets if a != "busybox"}


def _shared_libraries(binary: str) -> dict[str, str]:
    """The libraries `binary` loads, by the paths ldd reports (any architecture)."""
    libs = {}
    result = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30, check=False)
    for line in result.stdout.splitlines():
        for word in line.split():
            if word.startswith("/") and Path(word).exists():
                libs[word.lstrip("/")] = os.path.realpath(word)
    return libs


def busybox_tar() -> bytes:
    files, links = _busybox_files()
    return rootfs_tar(files, links)


def registry_tar() -> bytes:
    """registry:2 from Debian's docker-registry binary, its libraries and a busybox."""
    files, _ = _busybox_files()
    registry = tool("docker-registry")
    return rootfs_tar(
        {"bin/registry": registry, **files, **_shared_libraries(registry)},
        {"bin/sh": "busybox", "bin/wget": "busybox"},
    )


def image_archive(tag: str, *, created: str, labels: dict[str, str] | None = None) -> bytes:
    """A `docker load` archive of a one-file image made at `created` (RFC 3339): how an
    image pulled long ago looks to `docker image prune --filter until=...`."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = f"{tag}\n".encode()
        info = tarfile.TarInfo("made-by-the-bed")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "created": created,
            "config": {"Cmd": ["sh"], "Labels": labels or {}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, blob in (("layer/layer.tar", layer_bytes), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return out.getvalue()


def with_file(tar_bytes: bytes, name: str, data: bytes) -> bytes:
    """A copy of an uncompressed tar with one more regular file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


def remove_stale_builds(log=print) -> None:
    """Half-built images of killed runs (their lock is free, their directory unfinished)."""
    if not CACHE.is_dir():
        return
    for work in CACHE.glob(".*.building"):
        name = work.name[1:].rsplit("-", 1)[0]
        with open(CACHE / f"{name}.lock", "w") as lock, contextlib.suppress(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            log(f"image: removing the unfinished build {work.name}")
            shutil.rmtree(work, ignore_errors=True)
