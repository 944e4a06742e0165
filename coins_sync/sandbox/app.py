"""The sandbox as a function: a :class:`SandboxRequest` in, a :class:`SandboxResponse` out.

No sockets here. :mod:`coins_sync.sandbox.server` puts the app behind ``http.server``;
:meth:`SandboxApp.transport` puts it inside ``httpx.MockTransport`` for tests.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from coins_sync.crypto import decrypt_to_text, encrypt_json_text, key_from_secret
from coins_sync.errors import ApiError
from coins_sync.sandbox.auth import Auth
from coins_sync.sandbox.faults import Fault, Faults, Stats
from coins_sync.sandbox.messages import HttpError, SandboxRequest, SandboxResponse
from coins_sync.sandbox.options import SandboxOptions
from coins_sync.sandbox.ratelimit import TokenBucket
from coins_sync.sandbox.store import Store, validate_fields

if TYPE_CHECKING:
    import httpx

__all__ = ["SandboxApp"]

logger = logging.getLogger(__name__)

_API_PREFIX = "/api/"
_COINS_PREFIX = "/api/v0/enkash-coins/"
_CREATE_PATH = "/api/v0/enkash-coins/create-coins-config"
_TOKEN_PATH = "/oauth/token"
_DEBUG_CONFIGS_PATH = "/_sandbox/configs"
_DEBUG_STATS_PATH = "/_sandbox/stats"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _require(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HttpError(405, "Method not allowed", {"Allow": ", ".join(allowed)})


class SandboxApp:
    """The EnKash coins API stand-in, without a transport: store, auth, faults, routes.

    One app holds one store; every transport that wraps it sees the same configs.
    Latency is slept in the calling thread, so parallel callers overlap.
    """

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self._store = Store(options.data_file)
        self._auth = Auth(options)
        self._faults = Faults(options)
        self._stats = Stats()
        self._bucket = (
            None
            if options.rate is None
            else TokenBucket(options.rate, options.bucket_size, options.clock)
        )
        self._key = (
            key_from_secret(options.client_secret)
            if options.encryption and options.client_secret
            else None
        )

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of counters: injected faults by kind, and stored creates/patches/gets.

        ``fail_after`` counts 502 answers and ``drop`` dropped connections; both happen
        after the config was stored, so together they count stored-but-unconfirmed calls.
        """
        return self._stats.snapshot()

    def configs(self) -> list[dict[str, Any]]:
        """Every stored config in creation order, duplicates included (copies)."""
        return self._store.snapshot()

    def __repr__(self) -> str:
        return f"SandboxApp(options={self.options!r})"

    # -- entry points

    def handle(self, request: SandboxRequest) -> SandboxResponse:
        """Answer one request. Never raises: a bug becomes a 500 that closes the connection."""
        method = request.method.upper()
        path = urllib.parse.urlsplit(request.target).path
        try:
            if len(request.body) > self.options.max_body:
                raise HttpError(413, "Request body too large", close=True)
            return self._route(method, path, request)
        except HttpError as e:
            return self.reject(request.target, e)
        except Exception:
            logger.exception("sandbox handler failed on %s %s", method, path)
            return self.reject(request.target, HttpError(500, "Internal server error", close=True))

    def reject(self, target: str, error: HttpError) -> SandboxResponse:
        """The error envelope for ``error``, encrypted on API routes when encryption is on.

        Transports call this directly for requests they cannot hand over, such as a
        body too large to read.
        """
        path = urllib.parse.urlsplit(target).path
        return self._envelope(
            path, error.status, None, 1, error.message, error.headers, close=error.close
        )

    def transport(self) -> httpx.MockTransport:
        """This app inside ``httpx.MockTransport``: real clients, no sockets.

        A dropped connection raises ``httpx.RemoteProtocolError``, as httpx does when a
        real server closes the connection without answering.
        """
        import httpx

        def handler(request: httpx.Request) -> httpx.Response:
            body = request.read()
            answer = self.handle(
                SandboxRequest(
                    request.method,
                    request.url.raw_path.decode("ascii"),
                    dict(request.headers.items()),
                    body,
                )
            )
            if answer.drop_connection:
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            headers = [("Content-Type", answer.content_type), *answer.headers.items()]
            if answer.close:
                headers.append(("Connection", "close"))
            return httpx.Response(answer.status, headers=headers, content=answer.body)

        return httpx.MockTransport(handler)

    # -- routes

    def _route(self, method: str, path: str, request: SandboxRequest) -> SandboxResponse:
        if path == _TOKEN_PATH:
            _require(method, "POST")
            status, answer = self._auth.grant(request.header("Authorization"), request.body)
            return SandboxResponse.json_answer(status, answer, {"Cache-Control": "no-store"})
        if path == _DEBUG_CONFIGS_PATH:
            _require(method, "GET")
            self._authorize(request)
            return SandboxResponse.json_answer(200, self._store.snapshot())
        if path == _DEBUG_STATS_PATH:
            _require(method, "GET")
            self._authorize(request)
            return SandboxResponse.json_answer(200, self._stats.snapshot())
        if path.startswith(_API_PREFIX):
            return self._api(method, path, request)
        raise HttpError(404, "Not found")

    def _authorize(self, request: SandboxRequest) -> None:
        """Every route but the token endpoint needs a bearer token, the debug ones too."""
        if not self._auth.accepts(request.header("Authorization")):
            raise HttpError(401, "Unauthorized", {"WWW-Authenticate": "Bearer"})

    def _envelope(
        self,
        path: str,
        status: int,
        payload: Any,
        code: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> SandboxResponse:
        envelope = {"payload": payload, "response_code": code, "response_message": message}
        key = self._key
        if path.startswith(_API_PREFIX) and key is not None:
            sealed = {"request": encrypt_json_text(json.dumps(envelope), key)}
            return SandboxResponse.json_answer(status, sealed, headers, close=close)
        return SandboxResponse.json_answer(status, envelope, headers, close=close)

    def _parse_body(self, body: bytes) -> object:
        try:
            data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except ValueError:
            raise HttpError(400, "Malformed JSON body") from None
        key = self._key
        if key is None:
            return data
        if not isinstance(data, dict) or not isinstance(data.get("request"), str):
            raise HttpError(400, 'Encrypted body must be {"request": "<base64>"}')
        try:
            text = decrypt_to_text(data["request"], key)
        except ApiError:
            raise HttpError(400, "Request body could not be decrypted") from None
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            raise HttpError(400, "Malformed JSON body") from None

    def _limit_rate(self) -> None:
        """Answer 429 at once, without storing anything, when the bucket is empty."""
        if self._bucket is None:
            return
        wait = self._bucket.take()
        if wait is None:
            return
        self._stats.bump("429")
        self._stats.bump("rate_limited")
        headers = {"Retry-After": TokenBucket.retry_after(wait)} if self.options.retry_after else {}
        raise HttpError(429, "Too many requests", headers)

    def _api(self, method: str, path: str, request: SandboxRequest) -> SandboxResponse:
        if path == _CREATE_PATH:
            _require(method, "POST")
            config_id = None
        elif path.startswith(_COINS_PREFIX) and "/" not in path[len(_COINS_PREFIX) :]:
            _require(method, "GET", "PATCH")
            config_id = urllib.parse.unquote(path[len(_COINS_PREFIX) :])
            if not config_id:
                raise HttpError(404, "Not found")
        else:
            raise HttpError(404, "Not found")

        self._limit_rate()
        if self.options.latency_ms:
            time.sleep(self.options.latency_ms / 1000)
        self._authorize(request)

        if method == "GET":
            assert config_id is not None
            config = self._store.get(config_id)
            if config is None:
                raise HttpError(404, "Coins config not found")
            self._stats.bump("gets")
            return self._envelope(path, 200, config, 0, "Success")

        fault = self._faults.draw()
        if fault is Fault.TOO_MANY:
            self._stats.bump("429")
            raise HttpError(429, "Too many requests", {"Retry-After": "0"})
        if fault is Fault.FAIL_BEFORE:
            self._stats.bump("fail_before")
            raise HttpError(500, "Internal server error")

        data = self._parse_body(request.body)
        if config_id is None:
            stored = self._store.create(validate_fields(data, partial=False))
            self._stats.bump("creates")
        else:
            fields = validate_fields(data, partial=True)
            patched = self._store.patch(config_id, fields)
            if patched is None:
                raise HttpError(404, "Coins config not found")
            stored = patched
            self._stats.bump("patches")

        if fault is Fault.DROP:
            self._stats.bump("drop")
            logger.debug("dropping the connection after storing %s", stored["coinConfigId"])
            return SandboxResponse.dropped()
        if fault is Fault.FAIL_AFTER:
            self._stats.bump("fail_after")
            raise HttpError(502, "Bad gateway")
        return self._envelope(path, 200, stored, 0, "Success")
