"""The sandbox on a socket: a thin ``http.server`` adapter around :class:`SandboxApp`.

The adapter owns what only a socket has: reading a framed body, keep-alive, closing or
dropping a connection, and shutting down open connections on stop. Every answer comes
from the app.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from coins_sync.errors import CoinsSyncError
from coins_sync.sandbox.app import SandboxApp
from coins_sync.sandbox.messages import HttpError, SandboxRequest, SandboxResponse
from coins_sync.sandbox.options import SandboxOptions

__all__ = ["SandboxServer", "serve"]

logger = logging.getLogger(__name__)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen queue holds fresh connections until the accepting thread takes them.
    # Every create comes on a fresh connection, so it must hold the most one apply opens
    # (--parallelism 64) with room to spare. A shorter one overflows under such a burst:
    # Linux drops the handshake's last ACK, and with SYN cookies a request whose body
    # goes out apart from its head (httpx's own transport, as behind a proxy) is answered
    # with a reset: an uncertain create, although the sandbox never saw the request.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: SandboxApp) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    #: True while the accepting thread serves a connection itself (see process_request).
    serving_inline = False

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except RuntimeError:
            # No thread to spare (a loaded machine): serve this connection here, one
            # request and closed, instead of closing it unread. A connection closed with
            # the request unread is a reset the client can only take as "maybe
            # created", although nothing was stored.
            logger.warning("sandbox: no thread for a connection; serving it inline")
            self.serving_inline = True
            try:
                self.process_request_thread(request, client_address)
            finally:
                self.serving_inline = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "coins-sync-sandbox"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and body leave in one write
    timeout = 300  # idle keep-alive connections are closed after this many seconds

    @property
    def _server(self) -> _HTTPServer:
        return cast(_HTTPServer, self.server)

    def setup(self) -> None:
        super().setup()
        with self._server.connections_lock:
            self._server.connections.add(self.connection)

    def finish(self) -> None:
        with self._server.connections_lock:
            self._server.connections.discard(self.connection)
        super().finish()

    def handle(self) -> None:
        if self._server.serving_inline:  # the accepting thread: one request, then close
            self.close_connection = True
            self.handle_one_request()
            return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        app = self._server.app
        try:
            body = self._read_body(app.options.max_body)
        except HttpError as e:
            self._write(app.reject(self.path, e))
            return
        except Exception:
            logger.exception("sandbox failed to read a request for %s %s", method, self.path)
            self._write(app.reject(self.path, HttpError(500, "Internal server error", close=True)))
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), value)
        self._write(app.handle(SandboxRequest(method, self.path, headers, body)))

    def _read_body(self, max_body: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HttpError(
                411, "Chunked bodies are not supported; send Content-Length", close=True
            )
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError(raw_length)
        except ValueError:
            raise HttpError(400, "Invalid Content-Length", close=True) from None
        if length > max_body:
            # The body stays unread, so this connection cannot carry another request.
            raise HttpError(413, "Request body too large", close=True)
        return self.rfile.read(length)

    def _write(self, answer: SandboxResponse) -> None:
        if answer.close:
            self.close_connection = True
        if answer.drop_connection:
            return  # finish() closes the socket; the client sees no answer at all
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)


class SandboxServer:
    """A running (or ready-to-run) sandbox; the socket is bound on construction.

    Binding early makes ``url`` valid before serving, also with ``port=0``. ``app`` is
    the :class:`SandboxApp` that answers every request.
    """

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.app = SandboxApp(options)
        server_cls = _HTTPServer6 if ":" in options.host else _HTTPServer
        try:
            self._httpd = server_cls((options.host, options.port), self.app)
        except OSError as e:
            raise CoinsSyncError(
                f"sandbox cannot listen on {options.host}:{options.port}: {e.strerror or e}"
            ) from e
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._served = False
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:54321``."""
        host, port = self._httpd.server_address[:2]
        host_text = str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of counters: injected faults by kind, and stored creates/patches/gets.

        ``fail_after`` counts 502 answers and ``drop`` dropped connections; both happen
        after the config was stored, so together they count stored-but-unconfirmed calls.
        """
        return self.app.stats

    def configs(self) -> list[dict[str, Any]]:
        """Every stored config in creation order, duplicates included (copies)."""
        return self.app.configs()

    @property
    def open_connections(self) -> int:
        """How many client connections are open now (busy or idle keep-alive)."""
        with self._httpd.connections_lock:
            return len(self._httpd.connections)

    def start(self) -> None:
        """Serve in a background daemon thread and return at once."""
        with self._lock:
            if self._stopped or self._served:
                raise RuntimeError("a sandbox server can be started only once")
            self._served = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="coins-sync-sandbox",
                daemon=True,
            )
            self._thread.start()

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` or KeyboardInterrupt."""
        with self._lock:
            if self._stopped or self._served:
                raise RuntimeError("a sandbox server can be started only once")
            self._served = True
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving, close open connections and the socket; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            served = self._served
        if served:
            # shutdown() waits for serve_forever to notice; it would hang if never started.
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        with self._httpd.connections_lock:
            open_connections = list(self._httpd.connections)
        for conn in open_connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxServer(url={self.url!r}, options={self.options!r})"


def serve(options: SandboxOptions, ready: Callable[[str], None] | None = None) -> None:
    """Run a sandbox in the calling thread until KeyboardInterrupt, then stop cleanly.

    ``ready`` is called with the URL once the socket listens, so a caller can announce
    it (useful with ``port=0``); this function itself prints and logs nothing.
    """
    server = SandboxServer(options)
    try:
        if ready is not None:
            ready(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
