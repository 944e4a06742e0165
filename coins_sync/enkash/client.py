"""The EnKash coins API client: the only code that talks to the coins API.

What the rest of coins-sync may rely on:

* **A create is never sent twice unless the first surely was not processed.** EnKash has
  no idempotency key, so a second create makes a second config. A create is resent only
  after ``ConnectError``, ``ConnectTimeout`` or ``PoolTimeout`` (no byte reached the
  server) or HTTP 429 (the server refused to look at it). After anything else that
  happens once the request was sent (5xx, timeout while reading, dropped connection,
  an unusable 2xx answer) :class:`~coins_sync.errors.OutcomeUnknownError` is raised at
  once; its message names the ``coinConfigId`` the answer carried, if any, so that the
  operator can ``state import`` it. A 4xx other than 401/429 is an
  :class:`~coins_sync.errors.ApiError`: nothing was created.
* **A create and a token request always go out on a fresh connection** (the
  ``create_http`` client, which keeps no idle connections). On a reused keep-alive
  connection the server may already be closing it, and "disconnected without a
  response" would then make a create uncertain, or a token request a failed grant,
  although nothing reached the server.
* **GET and PATCH are idempotent** (PATCH sets an absolute amount) and are retried on
  connection problems, timeouts, 408, 429 and 5xx, up to ``max_retries`` times, with
  exponential backoff and full jitter, honouring ``Retry-After`` on 429/503. A PATCH
  that fails for good after some attempt reached the server without a usable answer
  (no response, a 5xx, a lost body) raises :class:`~coins_sync.errors.OutcomeUnknownError`:
  the server may hold the new amount. A 4xx or ``response_code`` 1 alone is a failure.
* **Retry-After is honoured up to ``retry_after_max``** (60 s by default), not only up
  to ``backoff_max``. A server that asks for a longer wait gets no retry: the call fails
  at once with an :class:`~coins_sync.errors.ApiError` saying so.
* **A refused token request is never retried.** Three failed attempts lock the EnKash
  account, so a token request that got an answer other than a token (any 4xx or 5xx,
  an unusable body) or that was lost after it was sent is remembered, and every later
  call fails with :class:`~coins_sync.errors.AuthError` without asking again. Only
  failures before anything was sent (``ConnectError``, ``ConnectTimeout``,
  ``PoolTimeout``) and 429 (honouring ``Retry-After``) are retried, with the same bound
  and backoff as other calls; connection failures that outlast the retries raise
  AuthError but are not remembered, since no login was attempted. After a 401 on an API
  call the token is refreshed once and the call repeated once.
* **Every 2xx answer is checked**: the envelope, the payload fields and that the payload
  echoes what was sent. A server that answers with something else is an error, not data.
  Harmless variations are accepted: an integer ``coinConfigId`` (used as its decimal
  text), a whole-number float ``amount`` (``6.0``) and a numeric-string
  ``response_code`` (``"0"``). Booleans are never numbers.
* **No secret leaves this module**: not in messages, log lines or any ``repr``.
  Messages name the method, path, HTTP status and the server's message, and every
  message is scrubbed of the secret values as a second line of defence.

The ``httpx.Client`` objects are handed in (see :func:`make_http_client`), so tests can
use ``httpx.MockTransport`` and the sandbox a loopback server. One :class:`CoinsClient` may
be shared by many threads.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Literal, NoReturn, TypeGuard
from urllib.parse import quote, urlsplit

import httpx
import tenacity

from coins_sync.crypto import decrypt_to_text, encrypt_json_text, key_from_secret
from coins_sync.errors import (
    ApiError,
    AuthError,
    OutcomeUnknownError,
    SettingsError,
    UnreachableError,
)
from coins_sync.redact import Redactor, basic_value
from coins_sync.rules import RuleKey

__all__ = [
    "CONFIG_PATH",
    "CREATE_PATH",
    "ENCRYPTION_AES_128_ECB",
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "ENV_COOKIE",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_USERNAME",
    "TOKEN_PATH",
    "ClientOptions",
    "CoinsClient",
    "Credentials",
    "RemoteConfig",
    "make_http_client",
]

log = logging.getLogger(__name__)

TOKEN_PATH: Final = "/oauth/token"
CREATE_PATH: Final = "/api/v0/enkash-coins/create-coins-config"
CONFIG_PATH: Final = "/api/v0/enkash-coins/{coin_config_id}"
ENCRYPTION_AES_128_ECB: Final = "aes-128-ecb"

ENV_TOKEN: Final = "COINS_SYNC_TOKEN"
ENV_CLIENT_ID: Final = "COINS_SYNC_CLIENT_ID"
ENV_CLIENT_SECRET: Final = "COINS_SYNC_CLIENT_SECRET"
ENV_USERNAME: Final = "COINS_SYNC_USERNAME"
ENV_PASSWORD: Final = "COINS_SYNC_PASSWORD"
ENV_COOKIE: Final = "COINS_SYNC_COOKIE"

_OAUTH_VARS: Final = (ENV_CLIENT_ID, ENV_CLIENT_SECRET, ENV_USERNAME, ENV_PASSWORD)
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Printable ASCII without spaces: what may follow "Bearer " in a header.
_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")
_COOKIE_RE: Final = re.compile(r"[\x20-\x7e]+")
_CODE_RE: Final = re.compile(r"[+-]?[0-9]{1,18}")
_MESSAGE_LIMIT: Final = 200
_OAUTH_ERRORS: Final = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
    }
)
_REFRESH_MARGIN: Final = 30.0
_ENCRYPTIONS: Final = (None, ENCRYPTION_AES_128_ECB)
# Redirects that mean "not here": the server did not act on the request. Others (302,
# 303 after a POST) may follow a processed request.
_NOT_PROCESSED_REDIRECTS: Final = frozenset({301, 307, 308})


@dataclass(frozen=True)
class RemoteConfig:
    """A coin config as the server confirmed it."""

    coin_config_id: str
    key: RuleKey
    amount: int


@dataclass(frozen=True)
class Credentials:
    """API secrets, read from the environment only.

    Either ``token`` (a ready bearer token) or all four OAuth values. ``cookie`` is sent
    as a ``Cookie`` header only when set. No ``repr`` or ``str`` shows a value; they
    show which variables are set.
    """

    token: str | None = field(default=None, repr=False)
    client_id: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    cookie: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Credentials:
        """Read the ``COINS_SYNC_*`` variables; empty or blank ones count as unset."""

        def get(name: str) -> str | None:
            value = environ.get(name)
            return value if value is not None and value.strip() else None

        token = get(ENV_TOKEN)
        return cls(
            # A token never contains whitespace; a stray newline from a file would
            # only make an invalid header.
            token=token.strip() if token is not None else None,
            client_id=get(ENV_CLIENT_ID),
            client_secret=get(ENV_CLIENT_SECRET),
            username=get(ENV_USERNAME),
            password=get(ENV_PASSWORD),
            cookie=get(ENV_COOKIE),
        )

    def secrets(self) -> list[str]:
        """Every secret value that is set, including the Basic header it implies.

        Callers scrub output with these. The client id and username are not secret.
        """
        found = [v for v in (self.token, self.client_secret, self.password, self.cookie) if v]
        if self.client_id and self.client_secret:
            found.append(basic_value(self.client_id, self.client_secret))
        return found

    def _set_names(self) -> list[str]:
        pairs = (
            (ENV_TOKEN, self.token),
            (ENV_CLIENT_ID, self.client_id),
            (ENV_CLIENT_SECRET, self.client_secret),
            (ENV_USERNAME, self.username),
            (ENV_PASSWORD, self.password),
            (ENV_COOKIE, self.cookie),
        )
        return [name for name, value in pairs if value]

    def __repr__(self) -> str:
        return f"Credentials(set={self._set_names()!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class ClientOptions:
    """Per-environment client settings; none of them is secret.

    ``max_retries`` counts attempts after the first, for the retryable cases only.
    ``backoff_*`` bound the jittered waits between them; a server's ``Retry-After`` is
    honoured as given up to ``retry_after_max``, and a longer one ends the call.
    Invalid values raise :class:`~coins_sync.errors.SettingsError`.
    """

    api_url: str
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    encryption: str | None = None
    max_retries: int = 5
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    retry_after_max: float = 60.0
    max_response_bytes: int = 1_000_000
    max_connections: int = 32

    def __post_init__(self) -> None:
        try:
            url = httpx.URL(self.api_url)
        except (httpx.InvalidURL, TypeError) as e:
            raise SettingsError(f"api_url {self.api_url!r} is not a URL") from e
        if url.scheme not in ("http", "https") or not url.host:
            raise SettingsError(f"api_url {self.api_url!r} must be an http:// or https:// URL")
        if url.userinfo:
            # Checked before the URL is ever quoted in a message or repr.
            raise SettingsError("api_url must not contain a user name or password")
        if url.query or url.fragment:
            raise SettingsError(f"api_url {self.api_url!r} must not have a query or fragment")
        if self.encryption not in _ENCRYPTIONS:
            raise SettingsError(
                f"encryption {self.encryption!r} is not supported; "
                f"use {ENCRYPTION_AES_128_ECB!r} or leave it unset"
            )
        positive = {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "max_response_bytes": self.max_response_bytes,
            "max_connections": self.max_connections,
        }
        for name, value in positive.items():
            if not value > 0:
                raise SettingsError(f"{name} must be greater than 0, not {value!r}")
        if self.max_retries < 0:
            raise SettingsError(f"max_retries must be 0 or more, not {self.max_retries!r}")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise SettingsError("backoff needs 0 <= backoff_initial <= backoff_max")
        if not 0 <= self.retry_after_max < math.inf:
            raise SettingsError(
                f"retry_after_max must be 0 or more and finite, not {self.retry_after_max!r}"
            )


def make_http_client(
    options: ClientOptions,
    transport: httpx.BaseTransport | None = None,
    *,
    keepalive: bool = True,
) -> httpx.Client:
    """An ``httpx.Client`` fit for :class:`CoinsClient`.

    Bounded timeouts, a pool sized for ``max_connections`` parallel calls, no redirects
    (a redirected POST could be replayed elsewhere), and a cookie jar that stores
    nothing, so the only cookie ever sent is the configured one.

    With ``keepalive=False`` no idle connection is kept, so every request opens a fresh
    one: this is the ``create_http`` client of :class:`CoinsClient`.
    """
    timeout = httpx.Timeout(
        connect=options.connect_timeout,
        read=options.read_timeout,
        write=options.read_timeout,
        pool=options.connect_timeout,
    )
    limits = httpx.Limits(
        max_connections=options.max_connections,
        max_keepalive_connections=options.max_connections if keepalive else 0,
    )
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(
        base_url=options.api_url,
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        cookies=no_cookies,
        transport=transport,
    )


class _Retry(Exception):
    """Internal: this attempt failed in a way that is safe to repeat."""

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
        *,
        unreached: bool = False,
        maybe_applied: bool = False,
    ):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.unreached = unreached  # no connection was made: nothing was sent
        # the request reached the server, which may have applied it (no answer, a 5xx)
        self.maybe_applied = maybe_applied


@dataclass(frozen=True)
class _Reply:
    """An HTTP answer. ``body`` is None when it could not be read; ``problem`` says why."""

    status: int
    body: bytes | None
    problem: str | None = None
    transient: bool = False
    retry_after: float | None = None
    location: str | None = None


@dataclass
class _CallState:
    refreshed: bool = False
    maybe_applied: bool = False  # some attempt may have been applied (see _Retry)


class CoinsClient:
    """Create, read and update coin configs, safely under retries and many threads.

    ``http`` (a keep-alive pool) carries GET and PATCH. ``create_http`` carries the
    create POSTs and token requests, which must go out on a fresh connection: build it
    with ``make_http_client(options, keepalive=False)``. It defaults to ``http``, which
    suits a fake transport that has no connections. Takes ownership of both:
    :meth:`close` closes them. The constructor checks the credentials (and the
    encryption key) and raises :class:`AuthError` before anything is sent when they
    cannot work; it closes neither client then. ``sleep`` and ``clock`` are injectable
    for tests; the default sleep ends early on :meth:`cancel`.
    """

    def __init__(
        self,
        http: httpx.Client,
        credentials: Credentials,
        options: ClientOptions,
        *,
        create_http: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mode = _auth_mode(credentials)
        self._key: bytes | None = None
        if options.encryption == ENCRYPTION_AES_128_ECB:
            if not credentials.client_secret:
                raise AuthError(
                    f"encryption {ENCRYPTION_AES_128_ECB!r} needs {ENV_CLIENT_SECRET}: "
                    "the body key is derived from the client secret"
                )
            self._key = key_from_secret(credentials.client_secret)
        if credentials.cookie is not None and not _COOKIE_RE.fullmatch(credentials.cookie):
            raise AuthError(f"{ENV_COOKIE} holds characters not allowed in an HTTP header")
        self._http = http
        self._fresh_http = http if create_http is None else create_http
        self._credentials = credentials
        self._options = options
        # Set by cancel() and close(): retry waits end and no new attempt starts.
        self._cancelled = threading.Event()
        self._sleep = sleep if sleep is not None else self._pause
        self._clock = clock
        self._base = options.api_url.rstrip("/")
        self._secrets = tuple(credentials.secrets())
        self._redact = Redactor(self._secrets)
        self._jitter = tenacity.wait_random_exponential(
            multiplier=options.backoff_initial, max=options.backoff_max
        )
        # Guards the token, its deadline and the remembered grant failure.
        self._lock = threading.Lock()
        self._token: str | None = credentials.token if self._mode == "token" else None
        self._token_deadline: float | None = None
        self._grant_failure: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"CoinsClient(api_url={self._options.api_url!r}, auth={self._mode!r}, "
            f"encryption={self._options.encryption!r})"
        )

    def __enter__(self) -> CoinsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def cancel(self) -> None:
        """Stop retrying, for a run that is stopping (Ctrl-C): a retry wait ends now, no
        further attempt starts and no new token is fetched; a request already on the
        wire finishes as usual. Safe from any thread; :meth:`close` does it first, so a
        close never waits behind a token fetch's retries."""
        self._cancelled.set()

    def _pause(self, seconds: float) -> None:
        self._cancelled.wait(seconds)

    def close(self) -> None:
        """Close the HTTP clients and forget the token."""
        self.cancel()
        with self._lock:
            self._closed = True
            self._token = None
        try:
            self._http.close()
        finally:
            if self._fresh_http is not self._http:
                self._fresh_http.close()

    # -- the three calls -------------------------------------------------------------

    def create(self, key: RuleKey, amount: int) -> RemoteConfig:
        """Create the config for ``key``; sent at most once unless surely not processed.

        Raises :class:`OutcomeUnknownError` when the request may have been processed
        but no usable confirmation came back; the caller must not resend it blindly.
        """
        _check_amount(amount)
        body: dict[str, object] = {
            "configuration": key.configuration,
            "companyId": key.company_id,
            "event": key.event,
            "amount": amount,
        }
        what = f"POST {CREATE_PATH}"
        remote = self._call("POST", CREATE_PATH, body, create=True)
        sent = {**key.as_dict(), "amount": amount}
        got = {**remote.key.as_dict(), "amount": remote.amount}
        wrong = [name for name in sent if sent[name] != got[name]]
        if wrong:
            raise self._fail(
                OutcomeUnknownError,
                f"{what}: the server echoed {_fields(got, wrong)} but we sent "
                f"{_fields(sent, wrong)}; it answered with coinConfigId "
                f"{remote.coin_config_id}, which may hold a wrong rule",
                status=200,
            )
        log.info("created %s = %s as %s", key, amount, remote.coin_config_id)
        return remote

    def get(self, coin_config_id: str) -> RemoteConfig:
        """Read one config by id; retried when safe."""
        path = self._config_path(coin_config_id)
        remote = self._call("GET", path, None, create=False)
        if remote.coin_config_id != coin_config_id:
            raise self._fail(
                ApiError,
                f"GET {path}: the server echoed coinConfigId {remote.coin_config_id} "
                f"but we asked for {coin_config_id}",
                status=200,
            )
        return remote

    def update(
        self, coin_config_id: str, amount: int, *, key: RuleKey | None = None
    ) -> RemoteConfig:
        """Set a config's amount with ``PATCH {"amount": amount}``; retried when safe.

        The answer must echo the id and the amount, and ``key`` when given: an update
        never changes a rule's identity.
        """
        _check_amount(amount)
        path = self._config_path(coin_config_id)
        remote = self._call("PATCH", path, {"amount": amount}, create=False)
        sent: dict[str, object] = {"coinConfigId": coin_config_id, "amount": amount}
        got: dict[str, object] = {"coinConfigId": remote.coin_config_id, "amount": remote.amount}
        if key is not None:
            sent.update(key.as_dict())
            got.update(remote.key.as_dict())
        wrong = [name for name in sent if sent[name] != got[name]]
        if wrong:
            raise self._fail(
                ApiError,
                f"PATCH {path}: the server echoed {_fields(got, wrong)} "
                f"but we sent {_fields(sent, wrong)}",
                status=200,
            )
        log.info("updated %s (%s) to %s", coin_config_id, remote.key, amount)
        return remote

    # -- one call, with retries ------------------------------------------------------

    def _config_path(self, coin_config_id: str) -> str:
        if not isinstance(coin_config_id, str) or not _ID_RE.fullmatch(coin_config_id):
            raise ApiError(
                f"invalid coinConfigId {str(coin_config_id)[:80]!r}: "
                "expected 1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
            )
        return CONFIG_PATH.format(coin_config_id=quote(coin_config_id, safe=""))

    def _retrying(self, what: str, attempts: int, doing: str) -> tenacity.Retrying:
        """Retries of ``_Retry`` failures only, with jittered backoff, each one logged."""

        def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            outcome = retry_state.outcome
            reason = outcome.exception() if outcome is not None else None
            log.warning(
                "%s: %s; %s in %.2fs (attempt %d of %d)",
                what,
                self._scrub(str(reason)),
                doing,
                retry_state.upcoming_sleep,
                retry_state.attempt_number + 1,
                attempts,
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retry),
            stop=tenacity.stop_after_attempt(attempts)
            | tenacity.stop_when_event_set(self._cancelled),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def _call(
        self, method: str, path: str, body: dict[str, object] | None, *, create: bool
    ) -> RemoteConfig:
        what = f"{method} {path}"
        content = None if body is None else self._encode(body)
        attempts = self._options.max_retries + 1
        state = _CallState()
        retrying = self._retrying(what, attempts, "retrying")
        try:
            reply = retrying(self._attempt, method, path, content, create, state)
        except _Retry as e:
            if method == "PATCH" and state.maybe_applied:
                raise self._fail(
                    OutcomeUnknownError,
                    f"{self._gave_up(what, attempts, e.reason)}; {_PATCH_UNKNOWN}",
                    status=e.status,
                ) from e
            if e.unreached and not self._cancelled.is_set():
                address = self._address()
                raise UnreachableError(
                    self._scrub(
                        f"cannot reach the API at {address}: {e.reason} on all {attempts} "
                        "tries; nothing was sent. Check api_url and the network"
                    ),
                    address,
                ) from e
            raise self._fail(
                ApiError, self._gave_up(what, attempts, e.reason), status=e.status
            ) from e
        except OutcomeUnknownError:
            raise
        except AuthError:
            raise
        except ApiError as e:
            # this attempt (a 5xx) or an earlier one may have been applied
            if method == "PATCH" and (state.maybe_applied or (e.status or 0) >= 500):
                raise OutcomeUnknownError(f"{e}; {_PATCH_UNKNOWN}", e.status, e.code) from e
            raise
        return self._parse_config(reply, what, create)

    def _address(self) -> str:
        parts = urlsplit(self._options.api_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"

    def _gave_up(self, what: str, attempts: int, last: str) -> str:
        if self._cancelled.is_set():
            return f"{what}: stopped retrying, the run is stopping; last: {last}"
        return (
            f"{what}: gave up after {attempts} attempt{'s' if attempts != 1 else ''}; last: {last}"
        )

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Retry) and exc.retry_after is not None:
            # _too_long_to_wait already refused anything above the cap.
            return min(exc.retry_after, self._options.retry_after_max)
        return float(self._jitter(retry_state))

    def _attempt(
        self, method: str, path: str, content: bytes | None, create: bool, state: _CallState
    ) -> _Reply:
        try:
            return self._attempt_once(method, path, content, create, state)
        except _Retry as e:
            state.maybe_applied = state.maybe_applied or e.maybe_applied
            raise

    def _attempt_once(
        self, method: str, path: str, content: bytes | None, create: bool, state: _CallState
    ) -> _Reply:
        what = f"{method} {path}"
        token = self._bearer()
        reply = self._exchange(method, path, content, token, create)
        if reply.status == 401:
            if self._mode == "token":
                raise self._fail(
                    AuthError, f"the API refused {ENV_TOKEN} (401) on {what}", status=401
                )
            if state.refreshed:
                raise self._fail(
                    AuthError, f"{what}: the API refused a freshly fetched token (401)", status=401
                )
            state.refreshed = True
            log.info("%s: 401, fetching a new token and trying once more", what)
            token = self._refresh_after_401(token)
            reply = self._exchange(method, path, content, token, create)
            if reply.status == 401:
                raise self._fail(
                    AuthError, f"{what}: the API refused a freshly fetched token (401)", status=401
                )
        return self._classify(reply, what, create)

    def _exchange(
        self, method: str, path: str, content: bytes | None, token: str, create: bool
    ) -> _Reply:
        """Send once. Transport failures become _Retry or a final error, by what is known."""
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        if self._credentials.cookie:
            headers["Cookie"] = self._credentials.cookie
        # A create goes out on a fresh connection and asks the server to close it after.
        http = self._fresh_http if create else self._http
        if create:
            headers["Connection"] = "close"
        reply: _Reply | None = None
        started = time.monotonic()
        try:
            with http.stream(
                method, self._base + path, content=content, headers=headers, follow_redirects=False
            ) as response:
                reply = self._read(response)
        except httpx.TransportError as e:
            if reply is not None:  # failed while closing; the answer is complete
                return reply
            raise self._transport_failure(e, f"{method} {path}", create) from e
        log.debug("%s %s -> %s in %.3fs", method, path, reply.status, time.monotonic() - started)
        return reply

    def _read(self, response: httpx.Response) -> _Reply:
        status = response.status_code
        retry_after = _retry_after(response.headers.get("Retry-After"))
        location = response.headers.get("Location")
        limit = self._options.max_response_bytes
        too_large = f"the response is larger than max_response_bytes ({limit})"
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            return _Reply(status, None, too_large, False, retry_after, location)
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    return _Reply(status, None, too_large, False, retry_after, location)
                chunks.append(chunk)
        except httpx.TransportError as e:
            problem = f"the body was lost ({_describe(e)})"
            return _Reply(status, None, problem, True, retry_after, location)
        except httpx.HTTPError as e:
            return _Reply(status, None, f"the body is unreadable ({_describe(e)})")
        return _Reply(status, b"".join(chunks), None, False, retry_after, location)

    def _transport_failure(self, e: httpx.TransportError, what: str, create: bool) -> Exception:
        reason = _describe(e)
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return _Retry(reason, unreached=True)  # nothing was sent
        if isinstance(e, httpx.PoolTimeout):
            return _Retry(reason)  # nothing was sent
        if isinstance(e, httpx.UnsupportedProtocol):
            return self._fail(ApiError, f"{what}: {reason}")
        if create:
            return self._fail(
                OutcomeUnknownError,
                f"{what}: {reason} after the request was sent; "
                "the config may or may not have been created",
            )
        if isinstance(e, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
            return _Retry(reason, maybe_applied=True)  # sent; the answer was lost
        return self._fail(ApiError, f"{what}: {reason}")

    def _classify(self, reply: _Reply, what: str, create: bool) -> _Reply:
        """Return a 2xx reply with its body; raise for everything else."""
        status = reply.status
        if 200 <= status < 300:
            if reply.body is not None:
                return reply
            if create:
                raise self._fail(
                    OutcomeUnknownError,
                    f"{what}: HTTP {status} but {reply.problem}; "
                    "the config was probably created but its id is unknown",
                    status=status,
                )
            if reply.transient:
                raise _Retry(f"HTTP {status} but {reply.problem}", status, maybe_applied=True)
            raise self._fail(ApiError, f"{what}: HTTP {status} but {reply.problem}", status=status)
        message, code = self._server_message(reply)
        said = f": {message}" if message else ""
        if status == 429:
            if self._too_long_to_wait(reply.retry_after):
                refused = self._wait_refused(reply.retry_after)
                if create:
                    refused += "; the config was not created"
                raise self._fail(
                    ApiError, f"{what}: HTTP 429{said}; {refused}", status=status, code=code
                )
            raise _Retry(f"HTTP 429{said}", status, reply.retry_after)
        if status >= 500:
            if create:
                raise self._fail(
                    OutcomeUnknownError,
                    f"{what}: HTTP {status}{said}; the config may or may not have been "
                    f"created{self._named_id(reply)}",
                    status=status,
                    code=code,
                )
            retry_after = reply.retry_after if status == 503 else None
            if self._too_long_to_wait(retry_after):
                raise self._fail(
                    ApiError,
                    f"{what}: HTTP {status}{said}; {self._wait_refused(retry_after)}",
                    status=status,
                    code=code,
                )
            raise _Retry(f"HTTP {status}{said}", status, retry_after, maybe_applied=True)
        if status == 408 and not create:
            raise _Retry(f"HTTP 408{said}", status)
        if 400 <= status < 500:
            raise self._fail(ApiError, f"{what}: HTTP {status}{said}", status=status, code=code)
        where = f" to {self._said(reply.location)}" if reply.location else ""
        if create and status not in _NOT_PROCESSED_REDIRECTS:
            raise self._fail(
                OutcomeUnknownError,
                f"{what}: unexpected HTTP {status}{where}; the config may or may not have "
                f"been created{self._named_id(reply)}; check api_url",
                status=status,
            )
        raise self._fail(
            ApiError, f"{what}: unexpected HTTP {status}{where}; check api_url", status=status
        )

    def _too_long_to_wait(self, retry_after: float | None) -> bool:
        return retry_after is not None and retry_after > self._options.retry_after_max

    def _wait_refused(self, retry_after: float | None) -> str:
        return (
            f"the server asked to retry after {retry_after:g}s, longer than "
            f"retry_after_max ({self._options.retry_after_max:g}s); giving up"
        )

    # -- bodies ----------------------------------------------------------------------

    def _encode(self, body: dict[str, object]) -> bytes:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        if self._key is not None:
            sealed = encrypt_json_text(text, self._key)
            text = json.dumps({"request": sealed}, separators=(",", ":"))
        return text.encode("utf-8")

    def _decode(self, raw: bytes) -> object:
        """Parse a coins-route body, decrypting ``{"request": ...}`` when encryption is on.

        Raises ValueError with a message safe to show.
        """
        try:
            doc: object = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ValueError("the response is not JSON") from e
        if self._key is not None and isinstance(doc, dict) and isinstance(doc.get("request"), str):
            try:
                text = decrypt_to_text(doc["request"], self._key)
            except ApiError as e:
                raise ValueError(f"{e} (is {ENV_CLIENT_SECRET} right?)") from e
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError) as e:
                raise ValueError("the decrypted response is not JSON") from e
        return doc

    def _server_message(self, reply: _Reply) -> tuple[str | None, int | None]:
        """The server's own words on an error answer, when it gave any."""
        if not reply.body:
            return reply.problem, None
        try:
            doc = self._decode(reply.body)
        except ValueError:
            text = reply.body.decode("utf-8", "replace").strip()
            # An HTML error page says nothing useful in one line.
            return (None if text.startswith("<") else self._said(text) or None), None
        if not isinstance(doc, dict):
            return None, None
        code = _response_code(doc.get("response_code"))
        for name in ("response_message", "message", "error_description", "error"):
            value = doc.get(name)
            if isinstance(value, str) and value.strip():
                return self._said(value), code
        return None, code

    def _named_id(self, reply: _Reply) -> str:
        """`` (the response names coinConfigId X)`` when the answer carried an id, else ``""``.

        For uncertain creates: the operator may ``state import`` that id.
        """
        if not reply.body:
            return ""
        try:
            doc = self._decode(reply.body)
        except ValueError:
            return ""
        return self._id_note(doc)

    def _id_note(self, doc: object) -> str:
        if not isinstance(doc, dict):
            return ""
        payload = doc.get("payload")
        raw = payload.get("coinConfigId") if isinstance(payload, dict) else None
        if raw is None:
            raw = doc.get("coinConfigId")
        if raw is None or raw == "":
            return ""
        if _is_int(raw):
            shown = str(raw)
        elif isinstance(raw, str) and _ID_RE.fullmatch(raw):
            shown = raw
        else:
            shown = self._said(repr(raw), limit=80)
        return f" (the response names coinConfigId {shown})"

    def _parse_config(self, reply: _Reply, what: str, create: bool) -> RemoteConfig:
        """Check the envelope of a 2xx answer and return its payload.

        For a create, an unusable 2xx answer raises OutcomeUnknownError: the server
        said "done" but we cannot tell what it did.
        """
        kind: type[ApiError] = OutcomeUnknownError if create else ApiError
        status = reply.status
        maybe = "; the config may have been created" if create else ""
        assert reply.body is not None  # _classify returns 2xx replies with a body only
        try:
            doc = self._decode(reply.body)
        except ValueError as e:
            raise self._fail(kind, f"{what}: HTTP {status} but {e}{maybe}", status=status) from e
        if not isinstance(doc, dict):
            raise self._fail(
                kind, f"{what}: HTTP {status} but the response is not a JSON object{maybe}", status
            )
        if create:
            maybe += self._id_note(doc)
        code = _response_code(doc.get("response_code"))
        if code is None:
            hint = ""
            if self._key is None and set(doc) == {"request"}:
                hint = f" (it looks encrypted: set encryption = {ENCRYPTION_AES_128_ECB!r})"
            missing = "the response has no integer response_code"
            raise self._fail(kind, f"{what}: HTTP {status} but {missing}{hint}{maybe}", status)
        if code != 0:
            message = doc.get("response_message")
            said = (
                f": {self._said(message)}" if isinstance(message, str) and message.strip() else ""
            )
            raise self._fail(
                ApiError,
                f"{what}: the API refused (response_code {code}){said}",
                status=status,
                code=code,
            )
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            raise self._fail(kind, f"{what}: the response has no payload object{maybe}", status)
        problems: list[str] = []
        coin_config_id = payload.get("coinConfigId")
        if _is_int(coin_config_id):
            coin_config_id = str(coin_config_id)  # validated as text below
        if not isinstance(coin_config_id, str) or not _ID_RE.fullmatch(coin_config_id):
            problems.append("coinConfigId is missing or not a valid id")
        for name in ("configuration", "companyId", "event"):
            value = payload.get(name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name} is missing or not a string")
        amount = _whole_number(payload.get("amount"))
        if amount is None:
            problems.append("amount is missing or not an integer")
        if problems or not isinstance(coin_config_id, str) or amount is None:
            raise self._fail(
                kind, f"{what}: the payload is unusable: {'; '.join(problems)}{maybe}", status
            )
        return RemoteConfig(
            coin_config_id=coin_config_id,
            key=RuleKey(
                company_id=str(payload["companyId"]),
                configuration=str(payload["configuration"]),
                event=str(payload["event"]),
            ),
            amount=amount,
        )

    # -- tokens ----------------------------------------------------------------------

    def _bearer(self) -> str:
        """The token to send now, fetching one when none is valid (one fetch at a time)."""
        with self._lock:
            if self._closed:
                raise ApiError("the coins API client is closed")
            self._raise_if_grant_failed()
            if self._token is not None and (
                self._token_deadline is None or self._clock() < self._token_deadline
            ):
                return self._token
            return self._fetch_token_locked()

    def _refresh_after_401(self, refused: str) -> str:
        """A new token after ``refused`` got a 401, unless another thread already got one."""
        with self._lock:
            self._raise_if_grant_failed()
            if self._token is not None and self._token != refused:
                return self._token
            self._token = None
            return self._fetch_token_locked()

    def _raise_if_grant_failed(self) -> None:
        if self._grant_failure is not None:
            raise self._fail(
                AuthError,
                f"an earlier token request failed ({self._grant_failure}); not asking again, "
                "because repeated failed token requests lock the account",
            )

    def _fetch_token_locked(self) -> str:
        """A token, asked for once; asked again only when the last request surely did not
        count as a login attempt (nothing sent, or 429), as bounded as any other call.

        A refusal is remembered (see :meth:`_token_failed`). Connection failures that
        outlast the retries raise AuthError without being remembered: no login happened.
        """
        what = f"POST {TOKEN_PATH}"
        if self._cancelled.is_set():
            raise ApiError(f"{what}: not asked, the run is stopping; the request was not sent")
        attempts = self._options.max_retries + 1
        retrying = self._retrying(what, attempts, "nothing counted as a login, retrying")
        try:
            return retrying(self._token_attempt_locked, what)
        except _Retry as e:
            gave_up = self._gave_up(what, attempts, e.reason)
            if self._cancelled.is_set():
                raise self._fail(ApiError, f"{gave_up}; the request was not sent") from e
            if e.status is not None:  # the endpoint answered (429): count it as refused
                self._token_failed(gave_up, e.status)
            raise self._fail(
                AuthError,
                f"{gave_up}; the token endpoint was never reached, so no login was attempted",
            ) from e

    def _token_attempt_locked(self, what: str) -> str:
        """One token request: a token, a _Retry when it surely was no login attempt, or a
        remembered failure."""
        creds = self._credentials
        assert creds.client_id and creds.client_secret and creds.username and creds.password
        form = {
            "username": creds.username,
            "password": creds.password,
            "grant_type": "password",
            "clientId": creds.client_id,
        }
        headers = {
            "Authorization": f"Basic {basic_value(creds.client_id, creds.client_secret)}",
            "Accept": "application/json",
        }
        reply: _Reply | None = None
        try:
            # A fresh connection, as for a create: a stale keep-alive one could turn a
            # request the server never saw into a remembered failure.
            with self._fresh_http.stream(
                "POST",
                self._base + TOKEN_PATH,
                data=form,
                headers={**headers, "Connection": "close"},
                follow_redirects=False,
            ) as response:
                reply = self._read(response)
        except httpx.HTTPError as e:
            if reply is None:
                if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                    raise _Retry(_describe(e)) from e  # nothing was sent
                self._token_failed(f"{what}: {_describe(e)}", None)
        assert reply is not None
        if not 200 <= reply.status < 300:
            # Never the endpoint's own words: a token endpoint or proxy may echo the
            # request body, password included, and this message reaches the audit log.
            code = _oauth_error(reply.body)
            said = f", {code}" if code else ""
            if reply.status == 429:  # the server would not look at it: not a login attempt
                if self._too_long_to_wait(reply.retry_after):
                    self._token_failed(
                        f"{what}: the token endpoint refused (HTTP 429{said}); "
                        f"{self._wait_refused(reply.retry_after)}",
                        429,
                    )
                raise _Retry(f"HTTP 429{said}", 429, reply.retry_after)
            self._token_failed(
                f"{what}: the token endpoint refused (HTTP {reply.status}{said})", reply.status
            )
        if reply.body is None:
            self._token_failed(f"{what}: HTTP {reply.status} but {reply.problem}", reply.status)
        try:
            doc: object = json.loads(reply.body)
        except (ValueError, RecursionError):
            doc = None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            self._token_failed(f"{what}: the answer has no usable access_token", reply.status)
        assert isinstance(doc, dict) and isinstance(token, str)
        lifetime = _seconds(doc.get("expires_in"))
        self._token = token
        if token not in self._secrets:
            self._secrets = (*self._secrets, token)
            self._redact = Redactor(self._secrets)
        if lifetime is None:
            self._token_deadline = None  # unknown: refresh after a 401 only
            log.info("fetched an API token without expires_in")
        else:
            margin = min(_REFRESH_MARGIN, lifetime / 2)
            self._token_deadline = self._clock() + lifetime - margin
            log.info("fetched an API token valid for %ss", lifetime)
        return token

    def _token_failed(self, reason: str, status: int | None) -> NoReturn:
        self._grant_failure = _clip(self._scrub(reason))
        raise self._fail(
            AuthError,
            f"{reason}; not retrying, because repeated failed token requests lock the account",
            status=status,
        )

    # -- messages --------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` with every encoding of every known secret masked (see redact)."""
        return self._redact(text)

    def _said(self, text: str, limit: int = _MESSAGE_LIMIT) -> str:
        """Server text fit for a message: scrubbed first, so clipping cannot cut a secret
        into a piece that scrubbing would no longer recognise."""
        return _clip(self._scrub(text), limit)

    def _fail(
        self,
        kind: type[ApiError],
        message: str,
        status: int | None = None,
        code: int | None = None,
    ) -> ApiError:
        """Build an error whose message is scrubbed of every known secret."""
        return kind(self._scrub(message), status=status, code=code)


# -- helpers -------------------------------------------------------------------------

_PATCH_UNKNOWN = "the server may or may not have applied the update; the next plan reads it back"


def check_credentials(environ: Mapping[str, str], encryption: str | None) -> None:
    """Raise AuthError unless the environment holds usable credentials for these
    settings. Apply calls it before it shows a plan, so a missing secret is said first."""
    credentials = Credentials.from_env(environ)
    _auth_mode(credentials)
    if encryption == ENCRYPTION_AES_128_ECB and not credentials.client_secret:
        raise AuthError(
            f"encryption {ENCRYPTION_AES_128_ECB!r} needs {ENV_CLIENT_SECRET}: "
            "the body key is derived from the client secret"
        )


def _auth_mode(credentials: Credentials) -> Literal["token", "oauth"]:
    """Which way to authenticate, or an AuthError naming the variables to set."""
    if credentials.token:
        if not _TOKEN_RE.fullmatch(credentials.token):
            raise AuthError(f"{ENV_TOKEN} holds characters not allowed in a bearer token")
        return "token"
    values = (
        credentials.client_id,
        credentials.client_secret,
        credentials.username,
        credentials.password,
    )
    missing = [name for name, value in zip(_OAUTH_VARS, values, strict=True) if not value]
    if len(missing) == len(_OAUTH_VARS):
        raise AuthError(
            f"no API credentials: set {ENV_TOKEN}, or all of {ENV_CLIENT_ID}, "
            f"{ENV_CLIENT_SECRET}, {ENV_USERNAME} and {ENV_PASSWORD}"
        )
    if missing:
        raise AuthError(
            f"incomplete OAuth credentials: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set "
            f"(set all of {', '.join(_OAUTH_VARS)}, or {ENV_TOKEN})"
        )
    return "oauth"


def _oauth_error(body: bytes | None) -> str | None:
    """The standard OAuth ``error`` code (RFC 6749 5.2) of a token endpoint's refusal,
    or None. Only a code from the fixed list is returned: nothing the server wrote."""
    try:
        doc: object = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
    code = doc.get("error") if isinstance(doc, dict) else None
    return code if isinstance(code, str) and code in _OAUTH_ERRORS else None


def _check_amount(amount: int) -> None:
    if not _is_int(amount):
        raise TypeError(f"amount must be an int, not {type(amount).__name__}")
    if amount < 0:
        raise ValueError(f"amount must be 0 or more, not {amount}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole_number(value: object) -> int | None:
    """An int, or a float with no fraction (``6.0``) as an int; None for anything else."""
    if _is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():  # False for inf and nan
        return int(value)
    return None


def _response_code(value: object) -> int | None:
    """An envelope ``response_code``: a whole number or its decimal text (``"0"``)."""
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _CODE_RE.fullmatch(text) else None
    return _whole_number(value)


def _seconds(value: object) -> float | None:
    """A positive, finite number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _describe(e: Exception) -> str:
    text = str(e).strip()
    return _clip(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def _clip(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    """One line, at most ``limit`` characters: server text is shown, not trusted."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _fields(values: Mapping[str, object], names: list[str]) -> str:
    return ", ".join(f"{name}={values[name]!r}" for name in names)
