"""Loopback servers for tests that need a real socket: a raw HTTP/1.1 server whose every
connection does what a test says, and a self-signed certificate for TLS servers."""

from __future__ import annotations

import datetime
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Received:
    """One request as the server read it, and its place in the order of arrival (1-based)."""

    method: str
    path: str
    head: bytes
    body: bytes
    number: int


#: What the server does once it has read a whole request: it gets the socket and the
#: request, and writes (or does not write) an answer. One request per connection.
Behaviour = Callable[[socket.socket, Received], None]


def read_head(conn: socket.socket) -> bytes | None:
    """Read until a request's head has arrived whole: the bytes so far (the head, its
    blank line and whatever of the body came with it), or None when the client hung up."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


class RawServer:
    """A loopback server that reads each request whole, records it, then does what
    ``behaviour`` says with the connection; the connection is closed after it."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[Received] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = read_head(conn)
            if data is None:
                return
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            with self.lock:
                received = Received(method, path, head, body, len(self.requests) + 1)
                self.requests.append(received)
            self.behaviour(conn, received)

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(r.method == method and r.path == path for r in self.requests)

    def close(self) -> None:
        self.stopping.set()
        self.acceptor.join(timeout=5)
        for thread in self.threads:
            thread.join(timeout=5)
        self.listener.close()


def self_signed_certificate(folder: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` signed by its own key (so it is its own CA), and the
    key: the files ``cert.pem`` and ``key.pem`` in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
