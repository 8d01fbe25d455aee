"""The bed's instance-metadata service: IMDSv2 tokens and the instance role's credentials.

The hosts reach it at 169.254.169.254 through a DNAT rule, as EC2 instances do. Moto's
own metadata answer lacks `"Code": "Success"`, which the registry's AWS SDK insists on.

Each EC2 instance the engine creates is registered with what EC2 would know of it: its
`metadataOptions` and whether it has an instance profile. As on EC2, the token's answer
leaves with an IP TTL of the instance's hop limit, so with a limit of 1 it reaches the
host but dies at the first forwarding (a container behind Docker's bridge: the host
masquerades the request, then cannot forward the answer back); with tokens required a
request without one gets 401; an instance without a profile has no credentials (404).

It also tells each instance about itself under /latest/meta-data/: what EC2 knows from
the start (`instance-id`, `instance-life-cycle`, `placement/availability-zone`,
`local-ipv4`, `instance-type`) and what appears later, for an Auto Scaling group's
instances, from the bed's Auto Scaling (`dynamic`, asked at every request):
`spot/instance-action`, `events/recommendations/rebalance`,
`autoscaling/target-lifecycle-state`. A path that does not exist (yet) is a 404, as
on EC2. Directory listings are not served.
"""

from __future__ import annotations

import datetime
import json
import secrets
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROLE = "swarm-bed-node-role"
META_DATA = "/latest/meta-data/"


class MetadataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        super().__init__(address, handler)
        # ip -> {"hop_limit", "tokens_required", "role", "meta_data", "dynamic"}
        self.instances: dict[str, dict] = {}
        self.tokens: set[str] = set()
        self.lock = threading.Lock()

    def register(
        self,
        ip: str,
        *,
        hop_limit: int,
        tokens_required: bool,
        role: bool,
        meta_data: dict[str, str] | None = None,
        dynamic: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        """An instance at `ip`: `meta_data` maps paths under /latest/meta-data/ to answers;
        `dynamic()` adds the ones that change (called at each request, outside this lock)."""
        with self.lock:
            self.instances[ip] = {
                "hop_limit": hop_limit,
                "tokens_required": tokens_required,
                "role": role,
                "meta_data": dict(meta_data or {}),
                "dynamic": dynamic,
            }

    def forget(self, ip: str) -> None:
        with self.lock:
            self.instances.pop(ip, None)


def serve(address: str, port: int, region: str, credentials: dict) -> MetadataServer:
    class Handler(BaseHTTPRequestHandler):
        def _instance(self) -> dict:
            with self.server.lock:
                return dict(self.server.instances.get(self.client_address[0], {}))

        def _send(self, code: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):
            if self.path != "/latest/api/token":
                return self._send(404, "")
            hop_limit = self._instance().get("hop_limit")
            if hop_limit:
                self.connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hop_limit)
            token = secrets.token_urlsafe(24)
            with self.server.lock:
                self.server.tokens.add(token)
            return self._send(200, token)

        def do_GET(self):
            instance = self._instance()
            if instance.get("tokens_required"):
                with self.server.lock:
                    valid = self.headers.get("X-aws-ec2-metadata-token") in self.server.tokens
                if not valid:
                    return self._send(401, "")
            path = self.path.rstrip("/")
            now = datetime.datetime.now(datetime.UTC)
            if path.startswith("/latest/meta-data/iam/") and instance and not instance.get("role"):
                return self._send(404, "")
            if path == "/latest/meta-data/iam/security-credentials":
                return self._send(200, ROLE)
            if path == f"/latest/meta-data/iam/security-credentials/{ROLE}":
                document = {
                    "Code": "Success",
                    "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "Type": "AWS-HMAC",
                    "AccessKeyId": credentials["aws_access_key_id"],
                    "SecretAccessKey": credentials["aws_secret_access_key"],
                    "Token": "bed-session-token",
                    "Expiration": (now + datetime.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                return self._send(200, json.dumps(document), "application/json")
            if path == "/latest/meta-data/placement/region":
                return self._send(200, region)
            if path == "/latest/dynamic/instance-identity/document":
                return self._send(200, json.dumps({"region": region}), "application/json")
            if path.startswith(META_DATA):
                answer = _about(instance).get(path.removeprefix(META_DATA))
                if answer is not None:
                    return self._send(200, answer)
            return self._send(404, "")

        def log_message(self, *args):
            pass

    server = MetadataServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="bed-imds", daemon=True).start()
    return server


def _about(instance: dict) -> dict[str, str]:
    """What the instance may learn about itself now: its fixed meta-data and the dynamic part."""
    dynamic = instance.get("dynamic")
    return {**instance.get("meta_data", {}), **(dynamic() if dynamic else {})}
