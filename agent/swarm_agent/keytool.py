#!/usr/bin/env python3
"""swarm-keytool: the cryptography of the backups, for swarm-node (python3 stdlib and the
libcrypto every python3 links; no pip on the nodes). Secrets travel on stdin and stdout,
never in argv.

  sign KEY SHA256            HMAC-SHA256 of "KEY SHA256" with the stack's signing key
  wrap-unlock KEY            stdin: the swarm's unlock key (SWMKEY-1-...); stdout: it,
                             encrypted and authenticated with the signing key, bound to KEY
  unwrap-unlock KEY          the reverse
  unlock-state DIR           stdin: the unlock key; rewrite DIR/certificates/swarm-node.key
                             without its encryption, so `docker swarm init
                             --force-new-cluster` can start from an autolocked backup

Why the last one: dockerd's `swarm init --force-new-cluster` starts swarmkit without the
unlock key, so it fails on an autolocked state, and afterwards `swarm unlock` has no node
to unlock (moby/moby#36852; daemon/cluster/swarm.go `Init` passes no lockKey). swarmkit
itself reads an unencrypted node key beside an autolocked cluster and encrypts it again
with the cluster's unlock key (ca/keyreadwriter.go `readKey`, manager `MaybeUpdateKEK`),
so the restored swarm comes back autolocked with the same key. The node key's formats are
swarmkit's: RFC 1423 PEM encryption (AES-256-CBC, key from EVP_BytesToKey-MD5) of the
key, and its raft-dek headers as MaybeEncryptedRecord protobufs sealed with NaCl secretbox.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import os
import re
import sys

SIGNING_KEY = "/etc/swarm/backup-signing.key"
UNLOCK_PREFIX = "SWMKEY-1-"
MASK32 = 0xFFFFFFFF


class KeytoolError(Exception):
    pass


def signing_key() -> bytes:
    try:
        with open(SIGNING_KEY) as f:
            return bytes.fromhex(f.read().strip())
    except (OSError, ValueError) as error:
        raise KeytoolError(f"the backup signing key is missing ({SIGNING_KEY}): run 'pulumi up'") from error


def sign(name: str, sha: str, key: bytes | None = None) -> str:
    return hmac.new(key or signing_key(), f"{name} {sha}".encode(), hashlib.sha256).hexdigest()


def parse_unlock_key(text: str) -> bytes:
    text = text.strip()
    if not text.startswith(UNLOCK_PREFIX):
        raise KeytoolError("stdin is not a swarm unlock key (SWMKEY-1-...)")
    body = text[len(UNLOCK_PREFIX) :]
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError as error:
        raise KeytoolError("stdin is not a swarm unlock key (SWMKEY-1-...)") from error


def format_unlock_key(raw: bytes) -> str:
    return UNLOCK_PREFIX + base64.b64encode(raw).decode().rstrip("=")


# The unlock key beside a backup: XOR with HMAC-SHA256(signing key, label, backup name) as
# a one-time pad (a PRF keyed by a secret, never the same name twice) and an HMAC tag.
# `key` is the signing key (default: this manager's copy).
def _pad(name: str, length: int, key: bytes) -> bytes:
    out, counter = b"", 0
    while len(out) < length:
        out += hmac.new(key, b"swarm unlock key\0%d\0%s" % (counter, name.encode()), hashlib.sha256).digest()
        counter += 1
    return out[:length]


def _tag(name: str, sealed: bytes, key: bytes) -> bytes:
    return hmac.new(key, b"swarm unlock tag\0" + name.encode() + b"\0" + sealed, hashlib.sha256).digest()


def wrap_unlock(name: str, unlock_key: str, key: bytes | None = None) -> str:
    key = key or signing_key()
    raw = parse_unlock_key(unlock_key)
    sealed = bytes(a ^ b for a, b in zip(raw, _pad(name, len(raw), key)))
    return (sealed + _tag(name, sealed, key)).hex()


def unwrap_unlock(name: str, wrapped: str, key: bytes | None = None) -> str:
    key = key or signing_key()
    try:
        blob = bytes.fromhex(wrapped.strip())
    except ValueError as error:
        raise KeytoolError("the wrapped unlock key is not hex") from error
    sealed, tag = blob[:-32], blob[-32:]
    if len(blob) <= 32 or not hmac.compare_digest(tag, _tag(name, sealed, key)):
        raise KeytoolError(f"the unlock key beside {name} does not verify with this stack's signing key")
    return format_unlock_key(bytes(a ^ b for a, b in zip(sealed, _pad(name, len(sealed), key))))


# --- NaCl secretbox (XSalsa20-Poly1305), open only ------------------------------------


def _rotl(v: int, c: int) -> int:
    return ((v << c) & MASK32) | (v >> (32 - c))


def _salsa_rounds(x: list[int]) -> list[int]:
    x = list(x)
    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),
                           (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14)):  # fmt: skip
            x[b] ^= _rotl((x[a] + x[d]) & MASK32, 7)
            x[c] ^= _rotl((x[b] + x[a]) & MASK32, 9)
            x[d] ^= _rotl((x[c] + x[b]) & MASK32, 13)
            x[a] ^= _rotl((x[d] + x[c]) & MASK32, 18)
    return x


SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


def _state(key: bytes, sixteen: bytes) -> list[int]:
    k = [int.from_bytes(key[i : i + 4], "little") for i in range(0, 32, 4)]
    n = [int.from_bytes(sixteen[i : i + 4], "little") for i in range(0, 16, 4)]
    return [SIGMA[0], *k[:4], SIGMA[1], *n, SIGMA[2], *k[4:], SIGMA[3]]


def _hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    x = _salsa_rounds(_state(key, nonce16))
    return b"".join(x[i].to_bytes(4, "little") for i in (0, 5, 10, 15, 6, 7, 8, 9))


def _salsa20_stream(key: bytes, nonce8: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        start = _state(key, nonce8 + counter.to_bytes(8, "little"))
        mixed = _salsa_rounds(start)
        out += b"".join(((a + b) & MASK32).to_bytes(4, "little") for a, b in zip(mixed, start))
        counter += 1
    return bytes(out[:length])


def _poly1305(key: bytes, message: bytes) -> bytes:
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:32], "little")
    p, acc = (1 << 130) - 5, 0
    for i in range(0, len(message), 16):
        acc = (acc + int.from_bytes(message[i : i + 16] + b"\x01", "little")) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def secretbox_open(box: bytes, nonce: bytes, key: bytes) -> bytes:
    """Go's secretbox.Open: box is the 16-byte Poly1305 tag then the ciphertext."""
    if len(key) != 32 or len(nonce) != 24 or len(box) < 16:
        raise KeytoolError("not a NaCl secretbox")
    stream = _salsa20_stream(_hsalsa20(key, nonce[:16]), nonce[16:], 32 + len(box) - 16)
    tag, ciphertext = box[:16], box[16:]
    if not hmac.compare_digest(tag, _poly1305(stream[:32], ciphertext)):
        raise KeytoolError("the unlock key does not open this swarm's keys (wrong key, or altered)")
    return bytes(a ^ b for a, b in zip(ciphertext, stream[32:]))


# --- swarmkit's MaybeEncryptedRecord (protobuf: 1 algorithm, 2 data, 3 nonce) ----------

NOT_ENCRYPTED, SECRETBOX = 0, 1


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise KeytoolError("a truncated protobuf in the node key's headers")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def parse_record(data: bytes) -> dict[int, int | bytes]:
    fields: dict[int, int | bytes] = {1: NOT_ENCRYPTED, 2: b"", 3: b""}
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            fields[number], i = _varint(data, i)
        elif kind == 2:
            size, i = _varint(data, i)
            fields[number], i = data[i : i + size], i + size
        else:
            raise KeytoolError(f"an unexpected protobuf wire type {kind} in the node key's headers")
    return fields


def plain_record(data: bytes) -> bytes:
    """A NotEncrypted record, as gogoproto writes it (the zero algorithm left out)."""
    size, length = b"", len(data)
    while True:
        size += bytes([(length & 0x7F) | (0x80 if length > 0x7F else 0)])
        length >>= 7
        if not length:
            break
    return b"\x12" + size + data


def open_header(value: str, kek: bytes) -> str:
    record = parse_record(base64.b64decode(value))
    algorithm = record[1]
    if algorithm == NOT_ENCRYPTED:
        return value
    if algorithm != SECRETBOX:
        raise KeytoolError(f"the node key's raft DEK is sealed with algorithm {algorithm} (FIPS?), not NaCl secretbox")
    return base64.b64encode(plain_record(secretbox_open(record[2], record[3], kek))).decode()


# --- RFC 1423 PEM encryption, through the libcrypto python3 already links -------------


def _libcrypto() -> ctypes.CDLL:
    names = [ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"]
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise KeytoolError("libcrypto (OpenSSL) is not on this node")


def aes256cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    lib = _libcrypto()
    lib.EVP_CIPHER_CTX_new.restype = ctypes.c_void_p
    lib.EVP_aes_256_cbc.restype = ctypes.c_void_p
    lib.EVP_DecryptInit_ex.argtypes = [ctypes.c_void_p] * 5
    lib.EVP_DecryptUpdate.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int),
                                      ctypes.c_char_p, ctypes.c_int]  # fmt: skip
    lib.EVP_DecryptFinal_ex.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    lib.EVP_CIPHER_CTX_free.argtypes = [ctypes.c_void_p]
    ctx = lib.EVP_CIPHER_CTX_new()
    try:
        out, n, tail = ctypes.create_string_buffer(len(data) + 32), ctypes.c_int(0), ctypes.c_int(0)
        ok = lib.EVP_DecryptInit_ex(ctx, lib.EVP_aes_256_cbc(), None, key, iv) == 1
        start = ctypes.addressof(out)
        ok = ok and lib.EVP_DecryptUpdate(ctx, start, ctypes.byref(n), data, len(data)) == 1
        # The padding check: with a wrong key it fails (or, rarely, the DER check below does).
        ok = ok and lib.EVP_DecryptFinal_ex(ctx, start + n.value, ctypes.byref(tail)) == 1
        if not ok:
            raise KeytoolError("the unlock key does not decrypt this swarm's node key (wrong key)")
        return out.raw[: n.value + tail.value]
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)


def evp_bytes_to_key(password: bytes, salt: bytes, length: int = 32) -> bytes:
    out, block = b"", b""
    while len(out) < length:
        block = hashlib.md5(block + password + salt).digest()  # noqa: S324 - RFC 1423 says MD5
        out += block
    return out[:length]


PEM_RE = re.compile(r"-----BEGIN ([A-Z ]+)-----\n(.*?)-----END \1-----", re.S)


def read_pem(text: str) -> tuple[str, dict[str, str], bytes]:
    match = PEM_RE.search(text)
    if not match:
        raise KeytoolError("the node key is not PEM")
    kind, body = match.group(1), match.group(2)
    headers: dict[str, str] = {}
    if "\n\n" in body:
        head, body = body.split("\n\n", 1)
        for line in head.splitlines():
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
    return kind, headers, base64.b64decode("".join(body.split()))


def write_pem(kind: str, headers: dict[str, str], der: bytes) -> str:
    lines = [f"-----BEGIN {kind}-----"]
    lines += [f"{name}: {headers[name]}" for name in sorted(headers)]
    if headers:
        lines.append("")
    encoded = base64.b64encode(der).decode()
    lines += [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    lines.append(f"-----END {kind}-----")
    return "\n".join(lines) + "\n"


def _der(data: bytes, i: int = 0) -> tuple[int, bytes, int]:
    """One DER element at i: (tag, contents, the index after it)."""
    tag, size = data[i], data[i + 1]
    i += 2
    if size & 0x80:
        count = size & 0x7F
        size, i = int.from_bytes(data[i : i + count], "big"), i + count
    return tag, data[i : i + size], i + size


def _children(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(data):
        tag, value, i = _der(data, i)
        out.append((tag, value))
    return out


OID_PBES2 = bytes.fromhex("2a864886f70d01050d")
OID_PBKDF2 = bytes.fromhex("2a864886f70d01050c")
OID_AES256CBC = bytes.fromhex("60864801650304012a")
PRFS = {bytes.fromhex("2a864886f70d0207"): "sha1", bytes.fromhex("2a864886f70d0209"): "sha256"}


def pkcs8_decrypt(der: bytes, password: bytes) -> bytes:
    """PBES2 with PBKDF2 and AES-256-CBC: swarmkit's ca/pkcs8 writes it with HMAC-SHA1 (the
    default, no PRF named); OpenSSL names HMAC-SHA256."""
    try:
        _, info, _ = _der(der)
        (_, algorithm), (_, encrypted) = _children(info)
        (_, oid), (_, params) = _children(algorithm)
        (_, kdf), (_, scheme) = _children(params)
        (_, kdf_oid), (_, kdf_params) = _children(kdf)
        (_, salt), (_, iterations), *optional = _children(kdf_params)
        (_, cipher_oid), (_, iv) = _children(scheme)
        prf = [PRFS.get(_children(value)[0][1], "?") for tag, value in optional if tag == 0x30] or ["sha1"]
    except (ValueError, IndexError) as error:
        raise KeytoolError("the node key is not a PKCS#8 EncryptedPrivateKeyInfo") from error
    if (oid, kdf_oid, cipher_oid) != (OID_PBES2, OID_PBKDF2, OID_AES256CBC) or prf[0] == "?":
        raise KeytoolError("the node key is not PBES2 with PBKDF2 and AES-256-CBC, as swarmkit writes it")
    key = hashlib.pbkdf2_hmac(prf[0], password, salt, int.from_bytes(iterations, "big"), 32)
    return aes256cbc_decrypt(key, iv, encrypted)


def unlock_state(state_dir: str, unlock_key: str) -> str:
    path = os.path.join(state_dir, "certificates", "swarm-node.key")
    with open(path) as f:
        kind, headers, der = read_pem(f.read())
    if kind == "ENCRYPTED PRIVATE KEY":
        kek = parse_unlock_key(unlock_key)
        der, kind = pkcs8_decrypt(der, kek), "PRIVATE KEY"
    elif "ENCRYPTED" in headers.get("Proc-Type", ""):
        kek = parse_unlock_key(unlock_key)
        cipher, _, iv_hex = headers.get("DEK-Info", "").partition(",")
        if cipher != "AES-256-CBC":
            raise KeytoolError(f"the node key is encrypted with {cipher or 'an unknown cipher'}, not AES-256-CBC")
        iv = bytes.fromhex(iv_hex)
        der = aes256cbc_decrypt(evp_bytes_to_key(kek, iv[:8]), iv, der)
    else:
        return "not locked"
    if not der.startswith(b"\x30"):
        raise KeytoolError("the unlock key does not decrypt this swarm's node key (wrong key)")
    plain = {k: v for k, v in headers.items() if k.lower() not in ("proc-type", "dek-info")}
    # swarmkit takes the cluster's KEK only if its version is newer than the key's
    # (manager/deks.go compareKEKs): after a rotation the key carries the cluster's own
    # version, and an open key at that version is refused ("same version ... different
    # KEK value"). Version 0 is older than any cluster's.
    if "kek-version" in plain:
        plain["kek-version"] = "0"
    for name in ("raft-dek", "raft-dek-pending"):
        if name in plain:
            plain[name] = open_header(plain[name], kek)
    tmp = path + ".swarm-keytool"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(write_pem(kind, plain, der))
    os.replace(tmp, path)
    return "unlocked"


def main(argv: list[str]) -> int:
    verb, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if verb == "sign" and len(args) == 2:
            print(sign(*args))
        elif verb == "wrap-unlock" and len(args) == 1:
            print(wrap_unlock(args[0], sys.stdin.readline()))
        elif verb == "unwrap-unlock" and len(args) == 1:
            print(unwrap_unlock(args[0], sys.stdin.readline()))
        elif verb == "unlock-state" and len(args) == 1:
            print(unlock_state(args[0], sys.stdin.readline()))
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    except KeytoolError as error:
        print(f"swarm-keytool: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
