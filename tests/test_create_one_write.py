"""A create's request leaves in one write: head and body together (issue 22).

Why it matters: when a server's listen queue overflows, Linux drops the last ACK of a
handshake, and with SYN cookies the connection can only be revived by a segment that
starts at the request's first byte. A body sent apart from its head then gets a reset
from a server that never accepted the connection, and the create is booked as uncertain
although nothing was stored. Measured against the sandbox with a 5-deep queue at
``-p 64`` (``tests/benchmarks/resets.py --backlog 5``): 51 uncertain creates in 10,000
with head and body in two writes, none in 10,000 with one.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import ClientOptions, CoinsClient, Credentials, make_http_client
from coins_sync.sandbox import SandboxOptions, SandboxServer

TOKEN = "t0k3n-not-a-secret"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def test_each_create_reaches_the_server_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    writes: list[bytes] = []
    with SandboxServer(SandboxOptions(port=0, token=TOKEN)) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        send, sendall = socket.socket.send, socket.socket.sendall

        def record(sock: socket.socket, data: Any) -> None:
            try:
                to_server = sock.getpeername()[1] == port
            except OSError:
                to_server = False
            if to_server:  # what the client writes (the sandbox writes to the client)
                writes.append(bytes(data))

        def recording_send(sock: socket.socket, data: Any, *args: Any) -> int:
            record(sock, data)
            return send(sock, data, *args)

        def recording_sendall(sock: socket.socket, data: Any, *args: Any) -> None:
            record(sock, data)
            sendall(sock, data, *args)

        monkeypatch.setattr(socket.socket, "send", recording_send)
        monkeypatch.setattr(socket.socket, "sendall", recording_sendall)
        options = ClientOptions(api_url=srv.url)
        with CoinsClient(
            make_http_client(options),
            Credentials(token=TOKEN),
            options,
            create_http=make_http_client(options, keepalive=False),  # as apply builds it
        ) as client:
            for amount in (5, 6, 7):
                client.create(RuleKey("ACME", "DEFAULT", f"GIFT_{amount}"), amount)
        monkeypatch.undo()
        stored = srv.configs()

    assert [c["amount"] for c in stored] == [5, 6, 7]
    assert len(writes) == 3, [w[:40] for w in writes]
    for amount, write in zip((5, 6, 7), writes, strict=True):
        head, _, body = write.partition(b"\r\n\r\n")
        assert head.startswith(b"POST /api/v0/enkash-coins/create-coins-config HTTP/1.1\r\n")
        assert json.loads(body)["amount"] == amount
