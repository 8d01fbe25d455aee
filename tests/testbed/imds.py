"""The bed's instance-metadata service: IMDSv2 tokens and the instance role's credentials.

The hosts reach it at 169.254.169.254 through a DNAT rule, as EC2 instances do. Moto's
own metadata answer lacks `"Code": "Success"`, which the registry's AWS SDK insists on.
"""

from __future__ import annotations

import datetime
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROLE = "swarm-bed-node-role"


def serve(address: str, port: int, region: str, credentials: dict) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):
            if self.path == "/latest/api/token":
                return self._send(200, "bed-imdsv2-token")
            return self._send(404, "")

        def do_GET(self):
            path = self.path.rstrip("/")
            now = datetime.datetime.now(datetime.UTC)
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
            return self._send(404, "")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="bed-imds", daemon=True).start()
    return server
