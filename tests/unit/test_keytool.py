"""swarm-keytool, the backups' cryptography on the managers, checked against independent
implementations: PyNaCl (libsodium) for swarmkit's secretbox-sealed raft DEK, and
`cryptography` (OpenSSL) for the encrypted node keys. The bed checks it against Docker's
own autolocked state (tests/e2e/test_backups.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import io
import os

import nacl.secret
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from components.payload import KEYTOOL

spec = importlib.util.spec_from_file_location("swarm_keytool", KEYTOOL)
keytool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keytool)

KEK = bytes(range(32))
UNLOCK = keytool.format_unlock_key(KEK)


@pytest.fixture
def signing_key(tmp_path, monkeypatch):
    path = tmp_path / "backup-signing.key"
    path.write_text("ab" * 32 + "\n")
    monkeypatch.setattr(keytool, "SIGNING_KEY", str(path))
    return path


def test_unlock_keys_read_as_docker_prints_them():
    assert UNLOCK.startswith("SWMKEY-1-") and "=" not in UNLOCK
    assert keytool.parse_unlock_key(UNLOCK + "\n") == KEK
    with pytest.raises(keytool.KeytoolError, match="not a swarm unlock key"):
        keytool.parse_unlock_key("SWMTKN-1-abc")


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 200])
def test_secretbox_opens_what_libsodium_sealed(size):
    message = os.urandom(size)
    nonce = os.urandom(24)
    sealed = nacl.secret.SecretBox(KEK).encrypt(message, nonce)
    assert sealed.nonce == nonce
    assert keytool.secretbox_open(sealed.ciphertext, nonce, KEK) == message


def test_secretbox_refuses_a_wrong_key_or_an_altered_box():
    nonce = os.urandom(24)
    box = nacl.secret.SecretBox(KEK).encrypt(b"raft dek" * 4, nonce).ciphertext
    with pytest.raises(keytool.KeytoolError, match="does not open"):
        keytool.secretbox_open(box, nonce, bytes(32))
    altered = box[:-1] + bytes([box[-1] ^ 1])
    with pytest.raises(keytool.KeytoolError, match="does not open"):
        keytool.secretbox_open(altered, nonce, KEK)


def sealed_record(dek: bytes) -> str:
    """A raft-dek header as swarmkit writes it under a KEK: MaybeEncryptedRecord{1, box, nonce}."""
    nonce = os.urandom(24)
    box = nacl.secret.SecretBox(KEK).encrypt(dek, nonce).ciphertext
    record = b"\x08\x01" + b"\x12" + bytes([len(box)]) + box + b"\x1a" + bytes([len(nonce)]) + nonce
    return base64.b64encode(record).decode()


def node_key(encryption: str) -> tuple[bytes, str]:
    """(the key's unencrypted PKCS#8 DER, the PEM swarmkit would have on disk), with
    OpenSSL doing the encryption: PKCS#8 PBES2 (Docker 20.10 and 26), or RFC 1423."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fmt = serialization.PrivateFormat.PKCS8 if encryption == "pkcs8" else serialization.PrivateFormat.TraditionalOpenSSL
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(KEK)).decode()
    return der, pem


@pytest.mark.parametrize("encryption", ["pkcs8", "rfc1423"])
def test_unlock_state_opens_the_node_key_and_its_raft_dek(tmp_path, encryption):
    der, pem = node_key(encryption)
    kind, headers, body = keytool.read_pem(pem)
    headers.update({"kek-version": "7", "raft-dek": sealed_record(b"D" * 32), "raft-dek-needs-rotation": "true"})
    certificates = tmp_path / "swarm" / "certificates"
    certificates.mkdir(parents=True)
    (certificates / "swarm-node.key").write_text(keytool.write_pem(kind, headers, body))

    assert keytool.unlock_state(str(tmp_path / "swarm"), UNLOCK) == "unlocked"

    text = (certificates / "swarm-node.key").read_text()
    kind, headers, body = keytool.read_pem(text)
    assert "ENCRYPTED" not in kind and "Proc-Type" not in headers and "DEK-Info" not in headers
    # Older than any cluster's KEK version, so swarmkit seals the key again (even after a rotation).
    assert headers["kek-version"] == "0" and headers["raft-dek-needs-rotation"] == "true"
    # The DEK as swarmkit writes it without a KEK: a NotEncrypted record (field 2 only).
    assert keytool.parse_record(base64.b64decode(headers["raft-dek"])) == {1: 0, 2: b"D" * 32, 3: b""}
    reread = serialization.load_der_private_key(body, password=None)
    assert (
        reread.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        == der
    )
    assert (certificates / "swarm-node.key").stat().st_mode & 0o777 == 0o600
    assert keytool.unlock_state(str(tmp_path / "swarm"), UNLOCK) == "not locked"


def test_unlock_state_with_a_wrong_key_changes_nothing(tmp_path):
    _, pem = node_key("pkcs8")
    certificates = tmp_path / "swarm" / "certificates"
    certificates.mkdir(parents=True)
    (certificates / "swarm-node.key").write_text(pem)
    with pytest.raises(keytool.KeytoolError, match="wrong key"):
        keytool.unlock_state(str(tmp_path / "swarm"), keytool.format_unlock_key(bytes(32)))
    assert (certificates / "swarm-node.key").read_text() == pem


def test_the_unlock_key_beside_a_backup_is_bound_to_it_and_to_the_signing_key(signing_key):
    name = "backups/20261126T190000Z.tar.gz"
    wrapped = keytool.wrap_unlock(name, UNLOCK)
    assert "SWMKEY" not in wrapped and keytool.format_unlock_key(KEK)[9:] not in wrapped
    assert keytool.unwrap_unlock(name, wrapped) == UNLOCK
    with pytest.raises(keytool.KeytoolError, match="does not verify"):
        keytool.unwrap_unlock("backups/20261127T190000Z.tar.gz", wrapped)  # moved beside another backup
    flipped = wrapped[:10] + ("0" if wrapped[10] != "0" else "1") + wrapped[11:]
    with pytest.raises(keytool.KeytoolError, match="does not verify"):
        keytool.unwrap_unlock(name, flipped)
    signing_key.write_text("cd" * 32 + "\n")  # another stack's key
    with pytest.raises(keytool.KeytoolError, match="does not verify"):
        keytool.unwrap_unlock(name, wrapped)


def test_signatures_are_hmac_of_name_and_checksum(signing_key):
    expected = hmac.new(bytes.fromhex("ab" * 32), b"backups/x.tar.gz 0123", hashlib.sha256).hexdigest()
    assert keytool.sign("backups/x.tar.gz", "0123") == expected


def test_the_cli_keeps_secrets_off_argv(signing_key, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(UNLOCK + "\n"))
    assert keytool.main(["wrap-unlock", "backups/a.tar.gz"]) == 0
    wrapped = capsys.readouterr().out.strip()
    monkeypatch.setattr("sys.stdin", io.StringIO(wrapped + "\n"))
    assert keytool.main(["unwrap-unlock", "backups/a.tar.gz"]) == 0
    assert capsys.readouterr().out.strip() == UNLOCK
    assert keytool.main(["unwrap-unlock"]) == 2  # usage, no traceback
