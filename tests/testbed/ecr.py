"""Amazon ECR's stand-in: a private registry whose credentials expire, and the API that hands them out.

On AWS a node asks ECR's `GetAuthorizationToken` for a token (base64 of `AWS:<password>`,
valid 12 hours) and gives it to Docker, which then pulls from `<account>.dkr.ecr.<region>
.amazonaws.com` over TLS. Here Debian's docker-registry serves that name on the bridge's
address, port 443, with a certificate from a CA the bed makes at start, and requires the
current password from an htpasswd file; `rotate()` replaces the password and restarts the
registry, so the old one is refused from then on, as an expired token is. The token API
is a small AWS JSON 1.1 server on the bridge (it ignores SigV4, as moto does) that counts
the requests, so a test can see that a node asked. The hosts find the registry's name and
trust its CA through `surroundings()`, as an EC2 instance finds ECR through AWS's DNS and
trusts it through the public CAs.

`push_image` is the registry HTTP API as a client; the bed's upstream registry is fed
with it too.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.host import BedError, Surroundings, wait_until

ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-west-1"  # the bed's region (bed.BED_REGION)
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
REGISTRY_PORT = 443
API_PORT = 8170
REGISTRY_PID = "ecr/registry.pid"  # under the bed's root: reap_stale_beds kills it
TOKEN_LIFETIME = datetime.timedelta(hours=12)  # ECR's
CERTIFICATE_LIFETIME = datetime.timedelta(days=3)  # outlives any run, expires soon after
USER = "AWS"  # the only user name ECR's tokens carry
TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
# distribution checks the password on every request of a pull: a cheap cost keeps pulls
# fast (bcrypt's default, 12, costs about 0.25 s a request).
BCRYPT_ROUNDS = 6
REGISTRY_TIMEOUT = 30


class Ecr:
    """The private registry and the token API of one bed. `start`, then `close` (also
    after a failed start: it stops whatever runs)."""

    def __init__(self, root: Path, gateway: str):
        self.root = root  # the bed's: the busybox image to push is there
        self.dir = root / "ecr"
        self.gateway = gateway
        self.password = ""
        self.token_requests = 0
        self.registry: subprocess.Popen | None = None
        self.api: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def api_url(self) -> str:
        """What `aws ecr --endpoint-url` takes."""
        return f"http://{self.gateway}:{API_PORT}"

    @property
    def registry_url(self) -> str:
        # The address, not the name: this machine has no /etc/hosts line for it. The
        # certificate carries the address too.
        return f"https://{self.gateway}"

    @property
    def ca_certificate(self) -> str:
        return (self.dir / "ca.crt").read_text()

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        _write_certificates(self.dir, self.gateway)
        self._write_config()
        self._new_password()
        self._start_registry()
        self.api = _serve_api(self)

    def close(self) -> None:
        if self.api is not None:
            self.api.shutdown()
            self.api.server_close()
            self.api = None
        self._stop_registry()

    def surroundings(self) -> Surroundings:
        """ECR's name, which AWS's DNS resolves, and the bed's CA where Docker looks for a
        registry's own CA (ECR's certificate is from a public CA every image trusts)."""
        return Surroundings(
            hosts=(f"{self.gateway} {ECR_HOST}",),
            files={f"/etc/docker/certs.d/{ECR_HOST}/ca.crt": self.ca_certificate},
        )

    def rotate(self) -> None:
        """A new password; the old one is refused from now on, as an expired token is.
        Debian's docker-registry 2.8.2 rereads its htpasswd file when the file's mtime
        changes, at the next request; the restart makes the cut-off certain when this
        returns instead of resting on that (other builds read the file only at start)."""
        self._new_password()
        self._stop_registry()
        self._start_registry()

    def push(self, repository: str, tag: str = "latest") -> None:
        """The bed's busybox as `repository:tag`, with the current credentials."""
        push_image(
            self.registry_url,
            repository,
            (self.root / "busybox.tar").read_bytes(),
            tag,
            context=self.ssl_context(),
            authorization=self.authorization(),
        )

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dir / "ca.crt"))

    def authorization(self) -> str:
        """The Basic header Docker sends with the token's credentials."""
        return "Basic " + self.token()

    def token(self) -> str:
        """An `authorizationToken` as ECR's are: base64 of `AWS:<password>`."""
        return base64.b64encode(f"{USER}:{self.password}".encode()).decode()

    def count_token_request(self) -> None:
        with self._lock:
            self.token_requests += 1

    # -- the registry ------------------------------------------------------------------
    def _write_config(self) -> None:
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")}},
            "http": {
                "addr": f"{self.gateway}:{REGISTRY_PORT}",
                "secret": secrets.token_hex(16),  # else each start warns it made one
                "tls": {"certificate": str(self.dir / "server.crt"), "key": str(self.dir / "server.key")},
            },
            "auth": {"htpasswd": {"realm": ECR_HOST, "path": str(self.dir / "htpasswd")}},
        }
        # JSON is YAML: docker-registry reads it as its config.
        (self.dir / "registry.yml").write_text(json.dumps(config, indent=1))

    def _new_password(self) -> None:
        password = secrets.token_urlsafe(24)
        # distribution's htpasswd accepts bcrypt hashes only.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
        # Renamed into place: a registry that rereads the file never sees half of it.
        staged = self.dir / "htpasswd.new"
        staged.write_text(f"{USER}:{hashed}\n")
        os.chmod(staged, 0o600)
        staged.replace(self.dir / "htpasswd")
        self.password = password

    def _start_registry(self) -> None:
        with open(self.dir / "registry.log", "ab") as log:
            self.registry = subprocess.Popen(
                [shutil.which("docker-registry"), "serve", str(self.dir / "registry.yml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        (self.root / REGISTRY_PID).write_text(str(self.registry.pid))
        wait_until("the private registry to refuse anonymous requests", self._refuses_anonymous, REGISTRY_TIMEOUT)

    def _refuses_anonymous(self) -> bool:
        if self.registry.poll() is not None:
            log = (self.dir / "registry.log").read_text(errors="replace")[-2000:]
            raise BedError(f"the private registry exited ({self.registry.returncode}):\n{log}")
        try:
            with urllib.request.urlopen(f"{self.registry_url}/v2/", timeout=2, context=self.ssl_context()):  # noqa: S310 - bed-local
                raise BedError("the private registry answers without credentials")
        except urllib.error.HTTPError as error:
            error.close()
            return error.code == 401
        except OSError:
            return False  # not listening yet

    def _stop_registry(self) -> None:
        if self.registry is not None and self.registry.poll() is None:
            self.registry.terminate()
            try:
                self.registry.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.registry.kill()
                self.registry.wait(timeout=10)


# -- the certificates --------------------------------------------------------------------------
def _write_certificates(directory: Path, gateway: str) -> None:
    """ca.crt, and server.crt and server.key for ECR_HOST and the bridge's address."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarm bed ECR stand-in CA")])
    ca = (
        _certificate(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ECR_HOST)])
    names = [x509.DNSName(ECR_HOST), x509.IPAddress(ipaddress.ip_address(gateway))]
    server = (
        _certificate(server_name, ca_name, server_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "server.crt").write_bytes(server.public_bytes(pem))
    key = server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (directory / "server.key").write_bytes(key)
    os.chmod(directory / "server.key", 0o600)


def _certificate(subject: x509.Name, issuer: x509.Name, public_key, now: datetime.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# -- the token API -----------------------------------------------------------------------------
def _serve_api(ecr: Ecr) -> ThreadingHTTPServer:
    """ECR's API as the AWS CLI speaks it (JSON 1.1): GetAuthorizationToken, nothing else."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            target = self.headers.get("X-Amz-Target", "")
            if target != TARGET_PREFIX + "GetAuthorizationToken":
                operation = target.removeprefix(TARGET_PREFIX) or "(none)"
                return self._send(400, {"__type": "UnknownOperationException", "message": f"{operation} is unknown"})
            ecr.count_token_request()
            data = {
                "authorizationToken": ecr.token(),
                "expiresAt": time.time() + TOKEN_LIFETIME.total_seconds(),
                "proxyEndpoint": f"https://{ECR_HOST}",
            }
            return self._send(200, {"authorizationData": [data]})

        def _send(self, code: int, document: dict) -> None:
            body = json.dumps(document).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-amzn-RequestId", secrets.token_hex(16))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # quiet, and a log line must never carry a token

    server = ThreadingHTTPServer((ecr.gateway, API_PORT), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bed-ecr-api", daemon=True).start()
    return server


# -- the registry API, as a client -------------------------------------------------------------
def push_image(
    registry: str,
    repository: str,
    layer_tar: bytes,
    tag: str = "latest",
    *,
    context: ssl.SSLContext | None = None,
    authorization: str | None = None,
) -> None:
    """Push a one-layer image of `layer_tar` (a root filesystem) as `repository:tag` to the
    registry at `registry` (its base URL) with the registry HTTP API."""
    layer = gzip.compress(layer_tar, mtime=0)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
        }
    ).encode()
    auth = {"Authorization": authorization} if authorization else {}
    base = f"{registry}/v2/{repository}"
    for blob in (layer, config):
        with _request("POST", f"{base}/blobs/uploads/", headers=auth, context=context) as response:
            location = response.headers["Location"]
        location = location if location.startswith("http") else registry + location
        separator = "&" if "?" in location else "?"
        # The content type matters: with urllib's form default the registry parses the body as a form.
        octets = {**auth, "Content-Type": "application/octet-stream"}
        with _request("PUT", f"{location}{separator}digest={_digest(blob)}", blob, octets, context):
            pass
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": _digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": _digest(layer),
                }
            ],
        }
    ).encode()
    headers = {**auth, "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}
    with _request("PUT", f"{base}/manifests/{tag}", manifest, headers, context):
        pass


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _request(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict | None = None,
    context: ssl.SSLContext | None = None,
):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310 - bed-local
    return urllib.request.urlopen(request, timeout=30, context=context)  # noqa: S310 - bed-local URLs only
