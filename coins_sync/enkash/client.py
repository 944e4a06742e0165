"""The EnKash coins API client: the only code that talks to the coins API.

What the rest of coins-sync may rely on (the parts hold the details):

* **A create is never sent twice unless the first surely was not processed**, and
  **GET and PATCH are retried only when that is safe**: see the table in
  :mod:`~coins_sync.enkash.retry`. After anything that happens once a create was sent
  :class:`~coins_sync.errors.OutcomeUnknownError` is raised at once; its message names
  the ``coinConfigId`` the answer carried, if any, so that the operator can
  ``state import`` it. A PATCH that fails for good after some attempt reached the server
  without a usable answer raises OutcomeUnknownError too: the server may hold the new
  amount.
* **A create and a token request always go out on a fresh connection** (the
  ``create_http`` client, which keeps no idle connections). On a reused keep-alive
  connection the server may already be closing it, and "disconnected without a
  response" would then make a create uncertain, or a token request a failed grant,
  although nothing reached the server.
* **A refused token request is never retried**, and after a 401 the token is refreshed
  once and the call repeated once: see :mod:`~coins_sync.enkash.auth`.
* **Every 2xx answer is checked**, the envelope and payload by
  :mod:`~coins_sync.enkash.wire`, and here that the payload echoes what was sent.
* **No secret leaves this package**: not in messages, log lines or any ``repr``.
  Messages name the method, path, HTTP status and the server's message, and every
  message is scrubbed of the secret values as a second line of defence.

The ``httpx.Client`` objects are handed in (see :func:`make_http_client`), so tests can
use ``httpx.MockTransport`` and the sandbox a loopback server. One :class:`CoinsClient` may
be shared by many threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote, urlsplit

import httpx

from coins_sync.configs.model import RuleKey
from coins_sync.crypto import key_from_secret
from coins_sync.enkash.auth import CallAuth, TokenAuth
from coins_sync.enkash.credentials import (
    COOKIE_RE,
    ENV_CLIENT_SECRET,
    ENV_COOKIE,
    ENV_TOKEN,
    Credentials,
    auth_mode,
)
from coins_sync.enkash.options import ClientOptions, make_http_client
from coins_sync.enkash.pacing import Answer, Pacer
from coins_sync.enkash.retry import Retry, RetryPolicy, classify, transport_failure
from coins_sync.enkash.wire import (
    CONFIG_PATH,
    CREATE_PATH,
    ENCRYPTION_AES_128_ECB,
    ID_RE,
    Messages,
    RemoteConfig,
    Reply,
    Wire,
    check_amount,
    fields,
    read_reply,
)
from coins_sync.errors import (
    ApiError,
    AuthError,
    OutcomeUnknownError,
    UnreachableError,
)
from coins_sync.settings import Encryption

__all__ = [
    "ClientOptions",
    "CoinsClient",
    "Credentials",
    "RemoteConfig",
    "check_credentials",
    "make_http_client",
]

log = logging.getLogger(__name__)

_PATCH_UNKNOWN = "the server may or may not have applied the update; the next plan reads it back"


@dataclass
class _CallState:
    auth: CallAuth
    maybe_applied: bool = False  # some attempt may have been applied (see Retry)


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
        self._mode = auth_mode(credentials)
        key: bytes | None = None
        if options.encryption == ENCRYPTION_AES_128_ECB:
            if not credentials.client_secret:
                raise AuthError(
                    f"encryption {ENCRYPTION_AES_128_ECB.value!r} needs {ENV_CLIENT_SECRET}: "
                    "the body key is derived from the client secret"
                )
            key = key_from_secret(credentials.client_secret)
        if credentials.cookie is not None and not COOKIE_RE.fullmatch(credentials.cookie):
            raise AuthError(f"{ENV_COOKIE} holds characters not allowed in an HTTP header")
        self._http = http
        self._fresh_http = http if create_http is None else create_http
        self._cookie = credentials.cookie
        self._options = options
        self._base = options.api_url.rstrip("/")
        self._create_url = httpx.URL(self._base + CREATE_PATH)  # parsed once, not per create
        self._messages = Messages(credentials.secrets())
        self._wire = Wire(key, self._messages)
        self._policy = RetryPolicy(
            max_retries=options.max_retries,
            backoff_initial=options.backoff_initial,
            backoff_max=options.backoff_max,
            retry_after_max=options.retry_after_max,
            messages=self._messages,
            sleep=sleep,
        )
        self._pacer = Pacer(
            options.parallelism,
            max_wait=options.max_wait,
            backoff_initial=options.backoff_initial,
            backoff_max=options.backoff_max,
            clock=clock,
            sleep=self._policy.sleep,
        )
        self._summarized = False
        self._auth = TokenAuth(
            credentials,
            self._mode,
            http=self._fresh_http,
            base_url=self._base,
            policy=self._policy,
            messages=self._messages,
            max_response_bytes=options.max_response_bytes,
            clock=clock,
        )

    def __repr__(self) -> str:
        return (
            f"CoinsClient(api_url={self._options.api_url!r}, auth={self._mode!r}, "
            f"encryption={_plain(self._options.encryption)!r})"
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
        self._policy.cancel()
        self._pacer.cancel()

    def close(self) -> str | None:
        """Close the HTTP clients and forget the token; log and return how the run was
        paced, if the server refused requests (one line, see :meth:`Pacer.summary`)."""
        self.cancel()
        summary = None
        if not self._summarized:
            self._summarized = True
            summary = self._pacer.summary()
            if summary is not None:
                log.warning("%s", summary)
        self._auth.close()
        try:
            self._http.close()
        finally:
            if self._fresh_http is not self._http:
                self._fresh_http.close()
        return summary

    # -- the three calls -------------------------------------------------------------

    def create(self, key: RuleKey, amount: int) -> RemoteConfig:
        """Create the config for ``key``; sent at most once unless surely not processed.

        Raises :class:`OutcomeUnknownError` when the request may have been processed
        but no usable confirmation came back; the caller must not resend it blindly.
        """
        check_amount(amount)
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
            raise self._messages.fail(
                OutcomeUnknownError,
                f"{what}: the server echoed {fields(got, wrong)} but we sent "
                f"{fields(sent, wrong)}; it answered with coinConfigId "
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
            raise self._messages.fail(
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
        check_amount(amount)
        expect: dict[str, object] = {"amount": amount, **(key.as_dict() if key else {})}
        remote = self._patch(coin_config_id, {"amount": amount}, expect)
        log.info("updated %s (%s) to %s", coin_config_id, remote.key, amount)
        return remote

    def move(
        self, coin_config_id: str, old: RuleKey, new: RuleKey, amount: int, *, before: int
    ) -> RemoteConfig:
        """Move a config to ``new`` under the same id: one PATCH of the key fields that
        differ from ``old`` (and of the amount when not ``before``), retried when safe.
        The answer must echo the id, ``new`` and ``amount``."""
        check_amount(amount)
        body: dict[str, object] = {
            name: value for name, value in new.as_dict().items() if old.as_dict()[name] != value
        }
        if amount != before or not body:
            body["amount"] = amount
        remote = self._patch(coin_config_id, body, {"amount": amount, **new.as_dict()})
        log.info("moved %s from %s to %s (amount %s)", coin_config_id, old, new, amount)
        return remote

    def _patch(
        self, coin_config_id: str, body: dict[str, object], expect: dict[str, object]
    ) -> RemoteConfig:
        """One PATCH; the answer must echo the id and every field of ``expect``."""
        path = self._config_path(coin_config_id)
        remote = self._call("PATCH", path, body, create=False)
        sent: dict[str, object] = {"coinConfigId": coin_config_id, **expect}
        got: dict[str, object] = {
            "coinConfigId": remote.coin_config_id,
            "amount": remote.amount,
            **remote.key.as_dict(),
        }
        wrong = [name for name in sent if sent[name] != got[name]]
        if wrong:
            raise self._messages.fail(
                ApiError,
                f"PATCH {path}: the server echoed {fields(got, wrong)} "
                f"but we sent {fields(sent, wrong)}",
                status=200,
            )
        return remote

    # -- one call, with retries ------------------------------------------------------

    def _config_path(self, coin_config_id: str) -> str:
        if not isinstance(coin_config_id, str) or not ID_RE.fullmatch(coin_config_id):
            raise ApiError(
                f"invalid coinConfigId {str(coin_config_id)[:80]!r}: "
                "expected 1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
            )
        return CONFIG_PATH.format(coin_config_id=quote(coin_config_id, safe=""))

    def _call(
        self, method: str, path: str, body: dict[str, object] | None, *, create: bool
    ) -> RemoteConfig:
        what = f"{method} {path}"
        content = None if body is None else self._wire.encode(body)
        policy = self._policy
        state = _CallState(self._auth.for_call())
        retrying = policy.retrying(what, "retrying")
        try:
            reply = retrying(self._attempt, method, path, content, create, state)
        except Retry as e:
            if method == "PATCH" and state.maybe_applied:
                raise self._messages.fail(
                    OutcomeUnknownError,
                    f"{policy.gave_up(what, e.reason)}; {_PATCH_UNKNOWN}",
                    status=e.status,
                ) from e
            if e.unreached and not policy.cancelled:
                address = self._address()
                raise UnreachableError(
                    self._messages.scrub(
                        f"cannot reach the API at {address}: {e.reason} on all "
                        f"{policy.attempts} tries; nothing was sent. Check api_url and the network"
                    ),
                    address,
                ) from e
            raise self._messages.fail(
                ApiError, policy.gave_up(what, e.reason), status=e.status
            ) from e
        except OutcomeUnknownError:
            raise
        except ApiError as e:
            # An earlier attempt may have been applied (it timed out, or got a 5xx), or
            # this one (a 5xx): whatever ends the call now, a refused or unrefreshable
            # token included, the server may hold the new amount. A token failure is no
            # answer of the PATCH itself, so only an earlier attempt makes it unknown.
            this_one = not isinstance(e, AuthError) and (e.status or 0) >= 500
            if method == "PATCH" and (state.maybe_applied or this_one):
                raise OutcomeUnknownError(f"{e}; {_PATCH_UNKNOWN}", e.status, e.code) from e
            raise
        return self._wire.parse_config(reply, what, create)

    def _address(self) -> str:
        parts = urlsplit(self._options.api_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"

    def _attempt(
        self, method: str, path: str, content: bytes | None, create: bool, state: _CallState
    ) -> Reply:
        what = f"{method} {path}"
        try:
            reply = self._paced(method, path, content, create, state.auth)
            if reply.status == 401:
                if self._auth.static:
                    raise self._messages.fail(
                        AuthError, f"the API refused {ENV_TOKEN} (401) on {what}", status=401
                    )
                # the auth refreshed the token for this call already, now or earlier
                raise self._messages.fail(
                    AuthError, f"{what}: the API refused a freshly fetched token (401)", status=401
                )
            return classify(reply, what, create, self._wire, self._policy)
        except Retry as e:
            state.maybe_applied = state.maybe_applied or e.maybe_applied
            raise

    def _paced(
        self, method: str, path: str, content: bytes | None, create: bool, auth: CallAuth
    ) -> Reply:
        """One exchange when the pacer lets it go; a 429 is sent again after the shared
        pause, for as long as the run's budget lasts (it was not processed). A 429 that
        asks for more than ``retry_after_max``, or a create's 429 whose answer names a
        coinConfigId, is returned, for :func:`classify`."""
        pacer = self._pacer
        while True:
            started = pacer.acquire(f"{method} {path}")
            try:
                reply = self._exchange(method, path, content, create, auth)
            except BaseException:
                pacer.done(started, Answer.FAILED)
                raise
            if reply.status != 429:
                pacer.done(started, Answer.OK)
                return reply
            if create and self._wire.named_id(reply):
                # a refusal that names an id may have created it: never paced and resent
                pacer.done(started, Answer.FAILED)
                return reply
            if self._policy.too_long_to_wait(reply.retry_after):
                pacer.done(started, Answer.FAILED)
                return reply
            pacer.done(started, Answer.REFUSED, reply.retry_after)  # raises once spent

    def _exchange(
        self, method: str, path: str, content: bytes | None, create: bool, auth: CallAuth
    ) -> Reply:
        """Send once (twice after a 401, see auth). Transport failures become Retry or a
        final error, by what is known."""
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        if self._cookie:
            headers["Cookie"] = self._cookie
        # A create goes out on a fresh connection and asks the server to close it after.
        http = self._fresh_http if create else self._http
        if create:
            headers["Connection"] = "close"
        reply: Reply | None = None
        started = time.monotonic()
        try:
            with http.stream(
                method,
                self._create_url if path == CREATE_PATH else self._base + path,
                content=content,
                headers=headers,
                auth=auth,
                follow_redirects=False,
            ) as response:
                reply = read_reply(response, self._options.max_response_bytes)
        except httpx.TransportError as e:
            if reply is not None:  # failed while closing; the answer is complete
                return reply
            raise transport_failure(e, f"{method} {path}", create, self._messages) from e
        log.debug("%s %s -> %s in %.3fs", method, path, reply.status, time.monotonic() - started)
        return reply


def check_credentials(environ: Mapping[str, str], encryption: Encryption | None) -> None:
    """Raise AuthError unless the environment holds usable credentials for these
    settings. Apply calls it before it shows a plan, so a missing secret is said first."""
    credentials = Credentials.from_env(environ)
    auth_mode(credentials)
    if encryption == ENCRYPTION_AES_128_ECB and not credentials.client_secret:
        raise AuthError(
            f"encryption {ENCRYPTION_AES_128_ECB.value!r} needs {ENV_CLIENT_SECRET}: "
            "the body key is derived from the client secret"
        )


def _plain(value: str | None) -> str | None:
    """An enum member as its plain text (for a repr that reads like the settings)."""
    return None if value is None else str(value)
