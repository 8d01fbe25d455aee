"""scripts/backups.py against an in-process S3 (moto), in the layout `swarm-node backup` writes."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import boto3
import pytest
from harness import ROOT
from moto import mock_aws

spec = importlib.util.spec_from_file_location("backups", ROOT / "scripts" / "backups.py")
backups = importlib.util.module_from_spec(spec)
sys.modules["backups"] = backups
spec.loader.exec_module(backups)

BUCKET, PREFIX = "swarm-dev-state", "swarm/dev/"


def put_backup(s3, name: str, data: bytes, latest: bool = True) -> str:
    key = f"backups/{name}.tar.gz"
    sha = hashlib.sha256(data).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=data)
    s3.put_object(Bucket=BUCKET, Key=PREFIX + key + ".sha256", Body=f"{sha}  {name}.tar.gz\n".encode())
    if latest:
        s3.put_object(Bucket=BUCKET, Key=PREFIX + "backups/latest", Body=f"{key} {sha}\n".encode())
    return key


@pytest.fixture
def s3(monkeypatch):
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "eu-west-1"),
    ):
        monkeypatch.setenv(var, value)
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-1")
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield client


def test_lists_newest_first_and_marks_latest(s3):
    put_backup(s3, "20261120T230000Z", b"monday")
    put_backup(s3, "20261121T230000Z", b"tuesday")
    listed = backups.list_backups(s3, BUCKET, PREFIX)
    assert [(b.key, b.latest) for b in listed] == [
        ("backups/20261121T230000Z.tar.gz", True),
        ("backups/20261120T230000Z.tar.gz", False),
    ]


def test_verifies_latest_and_an_older_one(s3):
    older = put_backup(s3, "20261120T230000Z", b"monday")
    put_backup(s3, "20261121T230000Z", b"tuesday")
    assert backups.verify(s3, BUCKET, PREFIX) == hashlib.sha256(b"tuesday").hexdigest()
    assert backups.verify(s3, BUCKET, PREFIX, older) == hashlib.sha256(b"monday").hexdigest()


def test_corrupted_backup_is_named(s3, capsys):
    key = put_backup(s3, "20261121T230000Z", b"tuesday")
    s3.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=b"bit rot")
    with pytest.raises(
        backups.BackupError, match=r"s3://swarm-dev-state/swarm/dev/backups/20261121T230000Z.tar.gz has sha256"
    ):
        backups.verify(s3, BUCKET, PREFIX)
    assert backups.main(["verify", "--bucket", BUCKET, "--prefix", PREFIX]) == 1
    assert "20261121T230000Z.tar.gz" in capsys.readouterr().err


def test_nothing_backed_up_yet(s3, capsys):
    with pytest.raises(backups.BackupError, match="nothing backed up yet"):
        backups.verify(s3, BUCKET, PREFIX)
    assert backups.main(["list", "--bucket", BUCKET, "--prefix", "swarm/dev"]) == 0
    assert "no backups under s3://swarm-dev-state/swarm/dev/backups/" in capsys.readouterr().out
