"""Every right a node holds, in one place: the IAM statements of the managers' role.

Workers hold no role at all; machines you bring hold the S3 keys you give them, and the
README's table (Security: "Rights") says what those keys need: the same statements. A
capability that needs a new right on a node adds one `Right` here, and a row to that
table (a unit test holds the two to each other: tests/unit/test_rights.py); nothing
else in the program writes an IAM policy for the nodes.

Each right is scoped to the stack's own resources: the bucket's `swarm/<stack>/` prefix,
or the bucket itself where S3 only offers bucket-level actions (listing, conditioned on
the prefix; its location and multipart uploads, which the registry's S3 driver asks for).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Right:
    sid: str
    actions: tuple[str, ...]
    on: str  # "bucket" | "prefix": the bucket's ARN, or the objects under the stack's prefix
    why: str  # the README table's last column
    prefix_condition: bool = False  # only for keys under the stack's prefix (s3:prefix)


RIGHTS = (
    Right(
        "ListOwnPrefix",
        ("s3:ListBucket", "s3:ListBucketVersions"),
        "bucket",
        "the backups and the mirror's cache are found by listing; versions tell a morning an emptied "
        "store from a new one",
        prefix_condition=True,
    ),
    Right(
        "BucketMetadata",
        ("s3:GetBucketLocation", "s3:ListBucketMultipartUploads"),
        "bucket",
        "the mirror's registry S3 driver asks where the bucket is and lists its unfinished uploads",
    ),
    Right(
        "ObjectsUnderOwnPrefix",
        ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"),
        "prefix",
        "backups written, read back, restored and pruned; the mirror's cache",
    ),
)


def node_policy(bucket_arn: str, prefix: str) -> str:
    """The managers' role policy: RIGHTS, on this bucket and this stack's prefix only."""
    statements = []
    for right in RIGHTS:
        statement = {
            "Sid": right.sid,
            "Effect": "Allow",
            "Action": list(right.actions),
            "Resource": [bucket_arn if right.on == "bucket" else f"{bucket_arn}/{prefix}*"],
        }
        if right.prefix_condition:
            statement["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}}
        statements.append(statement)
    return json.dumps({"Version": "2012-10-17", "Statement": statements})
