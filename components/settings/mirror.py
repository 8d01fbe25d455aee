"""The registry pull-through mirror on the managers, the S3 endpoint it and the node
scripts use, which image store the nodes' Docker keeps pulled images in, and the refresh
of ECR's credentials in the services (agent/swarm_agent/registry_auth.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.settings.base import DEFAULTS, Reader

_URL = re.compile(r"^https?://[^\s/]+")
# name[:tag][@sha256:digest], as `docker service create` takes it.
_IMAGE = re.compile(
    r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9._-]+)*(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$"
)


@dataclass(frozen=True)
class Mirror:
    enabled: bool
    port: int
    upstream: str
    s3_endpoint: str | None
    image: str
    # Docker's containerd image store ("containerd-snapshotter"), Docker 29's default on
    # fresh installs: written either way into daemon.json, so every morning's engine keeps
    # images in the store the stack chose, whatever its release defaults to.
    containerd_store: bool
    # Fresh ECR credentials in the services on this account's ECR: at the end of each formation and
    # every 4 hours. None: not set (on by default wherever the nodes hold AWS rights).
    ecr_refresh: bool | None
    ecr_endpoint: str | None  # the ECR API's URL, when not AWS's own (the test bed's stand-in)


def read_mirror(r: Reader) -> Mirror:
    enabled = r.boolean("mirror")
    port = r.integer(
        "mirrorPort",
        "5000",
        lambda v: 1024 <= v <= 65535 and v not in (2377, 7946, 4789),
        "from 1024 to 65535 and not a swarm port (2377, 7946, 4789)",
    )
    upstream = r.string("mirrorUpstream") or DEFAULTS["mirrorUpstream"]
    if not _URL.match(upstream):
        r.problem("mirrorUpstream", f"must be an http(s) URL (got {upstream!r})", "https://registry-1.docker.io")
    s3_endpoint = r.string("s3Endpoint")
    if s3_endpoint and not _URL.match(s3_endpoint):
        r.problem("s3Endpoint", f"must be an http(s) URL (got {s3_endpoint!r})", "https://minio.example.com:9000")
    image = r.string("mirrorImage") or DEFAULTS["mirrorImage"]
    if not _IMAGE.match(image):
        r.problem("mirrorImage", f"is not an image reference (got {image!r})", DEFAULTS["mirrorImage"])
    ecr_endpoint = r.string("ecrEndpoint")
    if ecr_endpoint and not _URL.match(ecr_endpoint):
        r.problem(
            "ecrEndpoint", f"must be an http(s) URL (got {ecr_endpoint!r})", "https://api.ecr.eu-west-1.amazonaws.com"
        )
    # Pulumi.yaml declares it empty: unset means "wherever the nodes hold AWS rights".
    ecr_refresh = r.boolean("ecrRefresh") if str(r.raw("ecrRefresh") or "").strip() else None
    return Mirror(
        enabled, port, upstream, s3_endpoint, image, r.boolean("containerdImageStore"), ecr_refresh, ecr_endpoint
    )
