"""SSH as pulumi-command dials it, for the engine's remote commands and file copies.

pulumi-command retries a failed dial `dialErrorLimit` times (so limit + 1 attempts), each
bounded by `perDialTimeout`, waiting 100 ms * 1.5^n (at most 5 s) between them; the bed
does the same with paramiko. With `hostKey` (an authorized_keys-style line), the server
must present exactly that key (x/crypto's FixedHostKey, asked for that key type first);
a mismatch is a dial error like any other, retried up to the limit, as pulumi-command
does. Without it, any key is accepted (InsecureIgnoreHostKey).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time

MAX_COMMAND_SECONDS = 1200  # no command of the program may take longer, in the bed
MAX_DIAL_SECONDS = 600  # an unlimited dialErrorLimit still ends
MISMATCH = "ssh: handshake failed: ssh: host key mismatch"  # x/crypto's error, as pulumi-command reports it


class SSHError(RuntimeError):
    pass


# Open SSH sessions, so an interrupted run can close them: a worker thread blocked on a
# wiped host would otherwise hold the interpreter open until its timeout.
_LIVE: set = set()
_LIVE_LOCK = threading.Lock()
_ABORT = threading.Event()


def abort_all() -> None:
    """Stop every dial and close every SSH session of every engine (an interrupted run)."""
    _ABORT.set()
    with _LIVE_LOCK:
        clients = list(_LIVE)
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


def generate_key(algorithm: str) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if algorithm != "ED25519":
        raise SSHError(f"the bed generates ED25519 keys only (asked for {algorithm})")
    key = ed25519.Ed25519PrivateKey.generate()
    return {
        "privateKeyOpenssh": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode(),
        "privateKeyPem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "publicKeyOpenssh": key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        + "\n",
    }


def _load_key(text: str):
    import paramiko

    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        with contextlib.suppress(paramiko.SSHException, ValueError):
            return kind.from_private_key(io.StringIO(text))
    raise SSHError("the connection's privateKey is not a key paramiko can read")


def _pin_host_key(client, conn: dict) -> None:
    """`hostKey` given: only that key is accepted from the server (RejectPolicy otherwise)."""
    import paramiko

    host_key = conn.get("hostKey")
    if not host_key:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        return
    fields = host_key.split()
    if len(fields) < 2:
        raise SSHError(f"hostKey is not an authorized_keys line: {host_key!r}")  # pulumi-command: a parse error
    port = int(conn.get("port", 22))
    name = conn["host"] if port == 22 else f"[{conn['host']}]:{port}"
    entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{name} {fields[0]} {fields[1]}")
    if entry is None or entry.key is None:
        raise SSHError(f"hostKey is not a key paramiko can read: {fields[0]}")
    client.get_host_keys().add(name, fields[0], entry.key)
    client.set_missing_host_key_policy(_mismatch_policy(paramiko))


def _mismatch_policy(paramiko):
    class Mismatch(paramiko.MissingHostKeyPolicy):
        """A key of another type than the pinned one: refused in x/crypto's words."""

        def missing_host_key(self, client, hostname, key):
            raise paramiko.SSHException(MISMATCH)

    return Mismatch()


def ssh_connect(conn: dict, log, name: str):
    """Dial as pulumi-command does: dialErrorLimit retries (so limit + 1 attempts), each
    bounded by perDialTimeout, waiting 100 ms * 1.5^n (at most 5 s) between them."""
    import paramiko

    limit = int(conn.get("dialErrorLimit", 10))
    per_dial = float(conn.get("perDialTimeout", 15)) or None
    key = _load_key(conn["privateKey"])
    attempt, delay, deadline = 0, 0.1, time.monotonic() + MAX_DIAL_SECONDS
    while True:
        if _ABORT.is_set():
            raise SSHError(f"{name}: the run was interrupted")
        attempt += 1
        client = paramiko.SSHClient()
        _pin_host_key(client, conn)
        try:
            client.connect(
                conn["host"],
                port=int(conn.get("port", 22)),
                username=conn.get("user", "root"),
                pkey=key,
                timeout=per_dial,
                # pulumi-command (x/crypto) bounds only the TCP connect: the banner, the key
                # exchange and the authentication have no deadline there. The bed waits as
                # long, up to its own bound for any one command, so that it ends at all.
                banner_timeout=MAX_COMMAND_SECONDS,
                auth_timeout=MAX_COMMAND_SECONDS,
                look_for_keys=False,
                allow_agent=False,
            )
            with _LIVE_LOCK:
                _LIVE.add(client)
            return client
        except (OSError, paramiko.SSHException) as error:
            client.close()
            if isinstance(error, paramiko.BadHostKeyException):  # the pinned type, another key
                error = paramiko.SSHException(MISMATCH)
            if (limit >= 0 and attempt > limit) or time.monotonic() > deadline:
                raise SSHError(
                    f"{name}: unable to connect to {conn['host']}:{conn.get('port', 22)} "
                    f"after {attempt} attempts (dialErrorLimit {limit}): {error}"
                ) from None
            if attempt in (1, 5) or attempt % 10 == 0:
                log(f"{name}: dial {attempt} to {conn['host']} failed ({error}); retrying")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)


def ssh_run(conn: dict, script: str, stdin: str | None, log, name: str) -> tuple[int, str, str]:
    client = ssh_connect(conn, log, name)
    try:
        channel = client.get_transport().open_session()
        channel.settimeout(MAX_COMMAND_SECONDS)
        channel.exec_command(script)
        if stdin:
            channel.sendall(stdin.encode())
        channel.shutdown_write()
        chunks: dict[str, list[bytes]] = {"out": [], "err": []}

        def pump(read, key):
            while True:
                data = read(65536)
                if not data:
                    return
                chunks[key].append(data)

        err_thread = threading.Thread(target=pump, args=(channel.recv_stderr, "err"), daemon=True)
        err_thread.start()
        pump(channel.recv, "out")
        err_thread.join(timeout=MAX_COMMAND_SECONDS)
        code = channel.recv_exit_status()
        return code, b"".join(chunks["out"]).decode(errors="replace"), b"".join(chunks["err"]).decode(errors="replace")
    finally:
        release(client)


def release(client) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(client)
    client.close()


def sftp_put(conn: dict, path: str, remote_path: str, log, name: str) -> None:
    client = ssh_connect(conn, log, name)
    try:
        with client.open_sftp() as sftp:
            sftp.put(path, remote_path)
    finally:
        release(client)
