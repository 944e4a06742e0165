"""The create client's transport (coins_sync.enkash.fresh) against real loopback servers.

Each fault is a real server behaviour on 127.0.0.1, and each is checked through
``CoinsClient.create`` on a client built as apply builds it: what matters is what a
create becomes (created, surely not sent, or uncertain) and that it is never sent twice.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import ClientOptions, CoinsClient, Credentials, make_http_client
from coins_sync.enkash.fresh import FreshTransport
from coins_sync.enkash.wire import CREATE_PATH
from coins_sync.errors import OutcomeUnknownError, SettingsError, UnreachableError
from tests.loopback import (
    Behaviour,
    RawServer,
    Received,
    read_head,
    self_signed_certificate,
)

KEY = RuleKey(company_id="ACME", configuration="DEFAULT", event="GIFT")
TOKEN = Credentials(token="t0k3n-not-a-secret")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def answer(received: Received, number: int) -> bytes:
    doc = {
        "payload": {"coinConfigId": f"WCC{number}", **json.loads(received.body)},
        "response_code": 0,
        "response_message": "Success",
    }
    return json.dumps(doc).encode()


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], RawServer]]:
    servers: list[RawServer] = []

    def start(behaviour: Behaviour) -> RawServer:
        server = RawServer(behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def client_for(url: str, **options: float) -> CoinsClient:
    """A client built as apply builds it, with no retry waits."""
    opts = ClientOptions(api_url=url, backoff_initial=0.0, backoff_max=0.0, **options)
    return CoinsClient(
        make_http_client(opts),
        TOKEN,
        opts,
        create_http=make_http_client(opts, keepalive=False),
    )


# -- answers that work -------------------------------------------------------------------


def content_length(conn: socket.socket, received: Received) -> None:
    data = answer(received, 1)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )


def chunked_after_interim(conn: socket.socket, received: Received) -> None:
    data = answer(received, 2)
    half = len(data) // 2
    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (data[:half], data[half:]):
        conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        time.sleep(0.01)  # the body arrives in parts
    conn.sendall(b"0\r\n\r\n")


def until_close(conn: socket.socket, received: Received) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + answer(received, 3))


@pytest.mark.parametrize(
    ("behaviour", "number"), [(content_length, 1), (chunked_after_interim, 2), (until_close, 3)]
)
def test_a_create_is_read_whatever_the_framing_one_connection_each(
    serve: Callable[[Behaviour], RawServer], behaviour: Behaviour, number: int
) -> None:
    server = serve(behaviour)
    with client_for(server.url) as client:
        made = [client.create(KEY, amount) for amount in (5, 6, 7)]
    assert [m.coin_config_id for m in made] == [f"WCC{number}"] * 3
    assert [m.amount for m in made] == [5, 6, 7]
    assert server.count("POST", CREATE_PATH) == 3
    assert server.connections == 3  # a fresh connection for each create
    head, body = server.requests[0].head, server.requests[0].body
    assert b"\r\nconnection: close" in head.lower()
    assert b"\r\nauthorization: bearer t0k3n-not-a-secret" in head.lower()
    assert json.loads(body) == {**KEY.as_dict(), "amount": 5}


def test_the_create_client_runs_on_the_fresh_transport_unless_a_proxy_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opts = ClientOptions(api_url="https://coins.test")
    with make_http_client(opts, keepalive=False) as fresh:
        assert isinstance(fresh._transport, FreshTransport)
    with make_http_client(opts) as pooled:  # reads and PATCHes keep their pool
        assert not isinstance(pooled._transport, FreshTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with make_http_client(opts, keepalive=False) as proxied:
        # httpx's transport honours the proxy, and keeps no idle connection either
        assert not isinstance(proxied._transport, FreshTransport)
        pool = proxied._transport._pool  # type: ignore[attr-defined]
        assert pool._max_keepalive_connections == 0
        assert proxied._transport_for_url(httpx.URL("https://coins.test/x")) is not (
            proxied._transport
        )
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # for http only
    with make_http_client(opts, keepalive=False) as other_scheme:
        assert isinstance(other_scheme._transport, FreshTransport)


# -- faults: what a create becomes ---------------------------------------------------------


def hang_up(conn: socket.socket, received: Received) -> None:
    """Read the request, answer nothing."""


def half_body(conn: socket.socket, received: Received) -> None:
    data = answer(received, 4)
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data[:10])


def garbage(conn: socket.socket, received: Received) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


def silent(conn: socket.socket, received: Received) -> None:
    time.sleep(1.0)  # longer than the client's read timeout


def reset(conn: socket.socket, received: Received) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        (hang_up, "disconnected without sending a response"),
        (half_body, "probably created but its id is unknown"),
        (garbage, "may or may not have been created"),
        (silent, "may or may not have been created"),
        (reset, "may or may not have been created"),
    ],
)
def test_a_create_that_reached_the_server_is_uncertain_and_never_sent_again(
    serve: Callable[[Behaviour], RawServer], behaviour: Behaviour, words: str
) -> None:
    server = serve(behaviour)
    with (
        client_for(server.url, read_timeout=0.3) as client,
        pytest.raises(OutcomeUnknownError) as e,
    ):
        client.create(KEY, 5)
    assert words in str(e.value)
    assert server.count("POST", CREATE_PATH) == 1


def test_a_create_to_a_closed_port_is_surely_not_sent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as spare:
        url = f"http://127.0.0.1:{spare.getsockname()[1]}"
    # the port is closed now: every try is refused before anything is sent
    with client_for(url, max_retries=2) as client, pytest.raises(UnreachableError) as e:
        client.create(KEY, 5)
    assert "nothing was sent" in str(e.value)
    assert "on all 3 tries" in str(e.value)


def test_a_connect_timeout_is_surely_not_sent() -> None:
    # A listener that never accepts, its queue filled: Linux drops further SYNs, so the
    # connect times out and nothing is sent.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        address = listener.getsockname()
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        try:
            url = f"http://127.0.0.1:{address[1]}"
            with (
                client_for(url, connect_timeout=0.3, max_retries=0) as client,
                pytest.raises(UnreachableError) as e,
            ):
                client.create(KEY, 5)
        finally:
            for filler in fillers:
                filler.close()
    assert "timed out" in str(e.value)
    assert "nothing was sent" in str(e.value)


# -- TLS ----------------------------------------------------------------------------------


class Created(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        data = answer(Received("POST", self.path, b"", body, 1), 7)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_server() -> Iterator[tuple[str, Path]]:
    """An https server on 127.0.0.1 and the file of the CA that signed its certificate
    (itself)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as where:
        cert_file, key_file = self_signed_certificate(Path(where), "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Created)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield f"https://localhost:{server.server_address[1]}", cert_file
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


def test_a_create_over_tls_checks_the_certificate_with_httpx_settings(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca_file = tls_server
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # httpx's way to name a CA bundle
    with client_for(url) as client:
        made = client.create(KEY, 9)
    assert (made.coin_config_id, made.amount) == ("WCC7", 9)
    monkeypatch.delenv("SSL_CERT_FILE")  # the default bundle does not know this CA
    with client_for(url, max_retries=0) as client, pytest.raises(Exception) as e:
        client.create(KEY, 9)
    assert "TLS certificate was refused" in str(e.value)
    assert "nothing was sent" in str(e.value)


def test_a_tls_handshake_cut_short_is_surely_not_sent(
    serve: Callable[[Behaviour], RawServer],
) -> None:
    # The server hangs up before the handshake ends (it reads no HTTP request, so it
    # records none): the request was never written, so the create is surely not sent.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]

        def refuse_handshakes() -> None:
            for _ in range(2):
                with listener.accept()[0]:
                    pass

        thread = threading.Thread(target=refuse_handshakes, daemon=True)
        thread.start()
        with (
            client_for(f"https://127.0.0.1:{port}", max_retries=1) as client,
            pytest.raises(UnreachableError) as e,
        ):
            client.create(KEY, 5)
        thread.join(5)
    assert "nothing was sent" in str(e.value)


# -- review of issue 22: answers and failures the default transport handles too ------------


def early_answer(conn: socket.socket) -> None:
    """Read the request's head only, refuse it and hang up with its body unread: the
    client's write of the rest then fails with a reset (what a server that refuses a
    too-large body or a bad token before reading the body does)."""
    if read_head(conn) is None:
        return
    conn.sendall(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
    )


@pytest.mark.parametrize("keepalive", [False, True])
def test_an_answer_sent_before_the_whole_request_was_read_is_returned(keepalive: bool) -> None:
    # httpx's own transport reads the answer after a failed write; the fresh one must too,
    # or a refusal (surely not processed) turns into a write error (an uncertain create).
    body = b"x" * (3 * 1024 * 1024)  # more than the socket buffers hold
    with socket.socket() as listener:
        # a small receive window (set before listen, so accepted sockets keep it): the
        # client cannot have written the whole body by the time the server hangs up
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve_once() -> None:
            conn, _ = listener.accept()
            with conn:
                early_answer(conn)

        thread = threading.Thread(target=serve_once, daemon=True)
        thread.start()
        opts = ClientOptions(api_url=f"http://127.0.0.1:{port}")
        with make_http_client(opts, keepalive=keepalive) as http:
            assert isinstance(http._transport, FreshTransport) is not keepalive
            response = http.post("/upload", content=body, headers={"Connection": "close"})
        thread.join(10)
    assert (response.status_code, response.content) == (413, b"too large")


def test_a_host_name_that_cannot_be_encoded_is_refused_and_never_escapes_the_transport() -> None:
    # "a..b" has an empty label: the name cannot be looked up. The settings refuse such
    # an api_url before anything is journaled; and should one reach the transport anyway,
    # it is a ConnectError (nothing was sent), not a UnicodeError escaping the client
    # (which stopped the run and left the create uncertain although it was never sent).
    with pytest.raises(SettingsError, match="has no valid host name"):
        ClientOptions(api_url="http://a..b:8080")
    with (
        httpx.Client(transport=FreshTransport()) as http,
        pytest.raises(httpx.ConnectError),
    ):
        http.post("http://a..b:8080" + CREATE_PATH, content=b"{}")


def test_a_create_to_an_ipv6_literal_goes_out_and_is_read() -> None:
    # api_url http://[::1]:port: the transport connects to the bare address, and the
    # Host header keeps its brackets.
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    heads: list[bytes] = []

    def serve_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            while not body.endswith(b"}"):
                body += conn.recv(65536)
            heads.append(head)
            content_length(conn, Received("POST", CREATE_PATH, head, body, 1))

    with listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        thread = threading.Thread(target=serve_once, daemon=True)
        thread.start()
        with client_for(f"http://[::1]:{port}") as client:
            made = client.create(KEY, 5)
        thread.join(10)
    assert (made.coin_config_id, made.amount) == ("WCC1", 5)
    assert f"\r\nhost: [::1]:{port}\r\n".encode() in heads[0].lower() + b"\r\n"
