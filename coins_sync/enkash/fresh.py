"""One request per connection: the transport of the client that sends creates.

A create and a token request must go out on a fresh connection (see
:mod:`~coins_sync.enkash.client`). httpx's default transport can do that only through
its connection pool, which is built for reuse: each request then pays for the pool's
bookkeeping, and the request's head and body go out in two writes (each one more
hand-off of the GIL among many sending threads).

:class:`FreshTransport` does the one thing the create client needs: open a connection
(TLS with httpx's own certificate settings for ``https``), write the whole request in
one go, read the answer with `h11 <https://h11.readthedocs.io>`_ (the HTTP/1.1 state
machine httpx itself runs on) and close. It raises the same httpx exceptions as the
default transport at the same moments, which is what the create's safety rests on (see
:func:`~coins_sync.enkash.retry.transport_failure`):

* ``ConnectError`` / ``ConnectTimeout``: the connection (or its TLS handshake) failed, or
  the host name cannot be looked up at all, so nothing was sent;
* ``WriteError`` / ``WriteTimeout``: the request may have been sent in part. After a
  ``WriteError`` the answer is read all the same, as httpx's transport does: a server may
  refuse a request (a 413, a 401) before it has read all of it and hang up, and its
  answer then says what became of the request;
* ``ReadError`` / ``ReadTimeout`` / ``RemoteProtocolError``: the request was sent and the
  answer was lost or malformed. A read error while the body streams surfaces from the
  response's ``iter_bytes``, as with the default transport.

Writing the request in one go also closes a way a create became uncertain against a
healthy server (issue 22, reproduced with ``tests/benchmarks/resets.py``): when the
server's listen queue overflows, Linux answers with a SYN cookie and drops the segments
it cannot queue; a request sent as head then body had its body arrive first, fail the
cookie check and draw a reset, and the client had to book "reset after the request was
sent" for a request the server never accepted. Sent whole, the request is resent from
its first byte and is only delayed (``tests/test_create_one_write.py``).

It does not speak to proxies: :func:`~coins_sync.enkash.options.make_http_client` uses
it only when the environment names no proxy for the API's scheme, and httpx's default
transport (which honours ``HTTP_PROXY`` and the like) otherwise.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import Final

import h11
import httpx

__all__ = ["FreshTransport"]

_READ_SIZE: Final = 65536
_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}


class FreshTransport(httpx.BaseTransport):
    """An ``httpx`` transport that opens a new connection for every request and closes
    it after the answer. ``ssl_context`` is used for ``https`` URLs (httpx's default
    one, built on first use, when None)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS[scheme]
        body = request.read()
        connection = h11.Connection(h11.CLIENT)
        try:
            head = connection.send(
                h11.Request(
                    method=request.method,
                    target=url.raw_path,
                    headers=list(request.headers.raw),
                )
            )
            data = connection.send(h11.Data(data=body)) if body else b""
            end = connection.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            raise httpx.LocalProtocolError(str(e)) from e
        sock = self._connect(host, port, scheme == b"https", timeouts.get("connect"))
        try:
            answer: h11.Response | None
            try:
                _write(
                    sock, b"".join((head or b"", data or b"", end or b"")), timeouts.get("write")
                )
            except httpx.WriteError:
                # A server may answer before it has read the whole request (a 413, a 401)
                # and hang up, so that the rest of the write fails: its answer is still
                # readable, and httpx's own transport returns it. Without one, the write
                # error stands (the request may have been sent in part).
                answer = _early_answer(connection, sock, timeouts.get("read"))
                if answer is None:
                    raise
            else:
                answer = _response(connection, sock, timeouts.get("read"))
        except BaseException:
            sock.close()
            raise
        return httpx.Response(
            answer.status_code,
            headers=answer.headers.raw_items(),
            stream=_Body(connection, sock),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
        )

    def _connect(self, host: str, port: int, tls: bool, timeout: float | None) -> socket.socket:
        """A connected socket (TLS done for ``https``); any failure is a Connect* error:
        nothing of the request was sent."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as e:
            raise httpx.ConnectTimeout(str(e) or "timed out") from e
        except (OSError, UnicodeError) as e:  # UnicodeError: a name IDNA cannot encode
            raise httpx.ConnectError(str(e)) from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                if self._ssl_context is None:
                    self._ssl_context = httpx.create_ssl_context()
                sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
        except TimeoutError as e:
            sock.close()
            raise httpx.ConnectTimeout(str(e) or "timed out") from e
        except OSError as e:  # ssl.SSLError included: a refused certificate, for one
            sock.close()
            raise httpx.ConnectError(str(e)) from e
        return sock


def _write(sock: socket.socket, data: bytes, timeout: float | None) -> None:
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
    except TimeoutError as e:
        raise httpx.WriteTimeout(str(e) or "timed out") from e
    except OSError as e:
        raise httpx.WriteError(str(e)) from e


def _response(
    connection: h11.Connection, sock: socket.socket, timeout: float | None
) -> h11.Response:
    """The answer's head (Read* and RemoteProtocolError as :func:`_receive`)."""
    sock.settimeout(timeout)
    answer = _receive(connection, sock, (h11.Response,))
    assert isinstance(answer, h11.Response)  # _receive returns only those
    return answer


def _early_answer(
    connection: h11.Connection, sock: socket.socket, timeout: float | None
) -> h11.Response | None:
    """The answer the server sent before its end of the connection failed our write, or
    None when there is none to read."""
    try:
        return _response(connection, sock, timeout)
    except (httpx.TransportError, OSError):
        return None


def _receive(
    connection: h11.Connection, sock: socket.socket, wanted: tuple[type[h11.Event], ...]
) -> h11.Event:
    """The next event of one of the ``wanted`` kinds (an interim 1xx answer is skipped),
    reading from ``sock`` as needed. Errors are httpx's Read* and RemoteProtocolError."""
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as e:
            raise httpx.RemoteProtocolError(str(e)) from e
        if event is h11.NEED_DATA:
            try:
                chunk = sock.recv(_READ_SIZE)
            except TimeoutError as e:
                raise httpx.ReadTimeout(str(e) or "timed out") from e
            except OSError as e:
                raise httpx.ReadError(str(e)) from e
            if not chunk and connection.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            try:
                connection.receive_data(chunk)
            except h11.RemoteProtocolError as e:
                raise httpx.RemoteProtocolError(str(e)) from e
            continue
        if isinstance(event, wanted):
            return event
        if isinstance(event, h11.InformationalResponse):
            continue
        raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} from the server")


class _Body(httpx.SyncByteStream):
    """The answer's body, read as it is iterated; closing it closes the connection."""

    def __init__(self, connection: h11.Connection, sock: socket.socket) -> None:
        self._connection = connection
        self._sock: socket.socket | None = sock

    def __iter__(self) -> Iterator[bytes]:
        sock = self._sock
        if sock is None:
            return
        while True:
            event = _receive(self._connection, sock, (h11.Data, h11.EndOfMessage))
            if isinstance(event, h11.EndOfMessage):
                return
            assert isinstance(event, h11.Data)
            yield bytes(event.data)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
