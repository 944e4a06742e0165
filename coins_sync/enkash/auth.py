"""The bearer token, as an ``httpx.Auth``: fetch, refresh before expiry, and one
refresh and resend after a 401.

* A static token (``COINS_SYNC_TOKEN``) is sent as it is. OAuth credentials get a token
  from ``POST /oauth/token`` (password grant), which is refreshed a little before its
  ``expires_in`` runs out, by the injected clock, one fetch at a time across threads.
* **A refused token request is never retried.** Three failed attempts lock the EnKash
  account, so a token request that got an answer other than a token (any 4xx or 5xx,
  an unusable body) or that was lost after it was sent is remembered, and every later
  call fails with :class:`~coins_sync.errors.AuthError` without asking again. Only
  failures before anything was sent (``ConnectError``, ``ConnectTimeout``,
  ``PoolTimeout``) and 429 (honouring ``Retry-After``) are retried, with the same bound
  and backoff as other calls; connection failures that outlast the retries raise
  AuthError but are not remembered, since no login was attempted.
* **After a 401 the token is refreshed once and the request sent once more**, once per
  API call (:meth:`TokenAuth.for_call`), however many times the call is retried.
* **A token request goes out on a fresh connection**: on a stale keep-alive one, a
  request the server never saw could turn into a remembered failure.
* **The token endpoint's own words are never copied** into a message: it may echo the
  request body, password included. Only a standard OAuth ``error`` code is shown, and a
  fetched token is added to the secrets every message is scrubbed of.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Final, NoReturn

import httpx

from coins_sync.enkash.credentials import TOKEN_RE, AuthMode, Credentials
from coins_sync.enkash.retry import Retry, RetryPolicy
from coins_sync.enkash.wire import (
    TOKEN_PATH,
    Messages,
    Reply,
    clip,
    describe,
    positive_seconds,
    read_reply,
)
from coins_sync.errors import ApiError, AuthError
from coins_sync.redact import basic_value

log = logging.getLogger(__name__)

_REFRESH_MARGIN: Final = 30.0
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


class TokenAuth(httpx.Auth):
    """Owns the token: fetches it, refreshes it, and resends once after a 401.

    Shared by every thread of one client. Its own :meth:`auth_flow` allows one refresh
    per request; :meth:`for_call` gives the view that allows one per API call, across
    its retries. ``http`` carries the token requests: give it a client that keeps no
    idle connection. ``clock`` decides expiry.
    """

    def __init__(
        self,
        credentials: Credentials,
        mode: AuthMode,
        *,
        http: httpx.Client,
        base_url: str,
        policy: RetryPolicy,
        messages: Messages,
        max_response_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self.static = mode == "token"
        self._credentials = credentials
        self._http = http
        self._base = base_url
        self._policy = policy
        self._messages = messages
        self._limit = max_response_bytes
        self._clock = clock
        # Guards the token, its deadline and the remembered grant failure.
        self._lock = threading.Lock()
        self._token: str | None = credentials.token if self.static else None
        self._deadline: float | None = None
        self._grant_failure: str | None = None
        self._closed = False

    # -- httpx.Auth ------------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        return self.for_call().auth_flow(request)

    @property
    def limit(self) -> int:
        """``max_response_bytes``: the most read of any answer."""
        return self._limit

    def for_call(self) -> CallAuth:
        """The auth for one API call: it refreshes after a 401 at most once in all."""
        return CallAuth(self)

    def close(self) -> None:
        """Forget the token; every later request fails."""
        with self._lock:
            self._closed = True
            self._token = None

    # -- tokens ----------------------------------------------------------------------

    def bearer(self) -> str:
        """The token to send now, fetching one when none is valid (one fetch at a time)."""
        with self._lock:
            if self._closed:
                raise ApiError("the coins API client is closed")
            self._raise_if_grant_failed()
            if self._token is not None and (
                self._deadline is None or self._clock() < self._deadline
            ):
                return self._token
            return self._fetch_locked()

    def refresh_after_401(self, refused: str) -> str:
        """A new token after ``refused`` got a 401, unless another thread already got one."""
        with self._lock:
            self._raise_if_grant_failed()
            if self._token is not None and self._token != refused:
                return self._token
            self._token = None
            return self._fetch_locked()

    def _raise_if_grant_failed(self) -> None:
        if self._grant_failure is not None:
            raise self._messages.fail(
                AuthError,
                f"an earlier token request failed ({self._grant_failure}); not asking again, "
                "because repeated failed token requests lock the account",
            )

    def _fetch_locked(self) -> str:
        """A token, asked for once; asked again only when the last request surely did not
        count as a login attempt (nothing sent, or 429), as bounded as any other call.

        A refusal is remembered (see :meth:`_failed`). Connection failures that outlast
        the retries raise AuthError without being remembered: no login happened.
        """
        what = f"POST {TOKEN_PATH}"
        policy = self._policy
        if policy.cancelled:
            raise ApiError(f"{what}: not asked, the run is stopping; the request was not sent")
        retrying = policy.retrying(what, "nothing counted as a login, retrying")
        try:
            return retrying(self._attempt_locked, what)
        except Retry as e:
            gave_up = policy.gave_up(what, e.reason)
            if policy.cancelled:
                raise self._messages.fail(ApiError, f"{gave_up}; the request was not sent") from e
            if e.status is not None:  # the endpoint answered (429): count it as refused
                self._failed(gave_up, e.status)
            raise self._messages.fail(
                AuthError,
                f"{gave_up}; the token endpoint was never reached, so no login was attempted",
            ) from e

    def _attempt_locked(self, what: str) -> str:
        """One token request: a token, a Retry when it surely was no login attempt, or a
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
        reply: Reply | None = None
        try:
            with self._http.stream(
                "POST",
                self._base + TOKEN_PATH,
                data=form,
                headers={**headers, "Connection": "close"},
                follow_redirects=False,
            ) as response:
                reply = read_reply(response, self._limit)
        except httpx.HTTPError as e:
            if reply is None:
                if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                    raise Retry(describe(e)) from e  # nothing was sent
                self._failed(f"{what}: {describe(e)}", None)
        assert reply is not None
        if not 200 <= reply.status < 300:
            # Never the endpoint's own words: a token endpoint or proxy may echo the
            # request body, password included, and this message reaches the audit log.
            code = _oauth_error(reply.body)
            said = f", {code}" if code else ""
            if reply.status == 429:  # the server would not look at it: not a login attempt
                if self._policy.too_long_to_wait(reply.retry_after):
                    self._failed(
                        f"{what}: the token endpoint refused (HTTP 429{said}); "
                        f"{self._policy.wait_refused(reply.retry_after)}",
                        429,
                    )
                raise Retry(f"HTTP 429{said}", 429, reply.retry_after)
            self._failed(
                f"{what}: the token endpoint refused (HTTP {reply.status}{said})", reply.status
            )
        if reply.body is None:
            self._failed(f"{what}: HTTP {reply.status} but {reply.problem}", reply.status)
        try:
            doc: object = json.loads(reply.body)
        except (ValueError, RecursionError):
            doc = None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            self._failed(f"{what}: the answer has no usable access_token", reply.status)
        assert isinstance(doc, dict) and isinstance(token, str)
        lifetime = positive_seconds(doc.get("expires_in"))
        self._token = token
        self._messages.add_secret(token)
        if lifetime is None:
            self._deadline = None  # unknown: refresh after a 401 only
            log.info("fetched an API token without expires_in")
        else:
            margin = min(_REFRESH_MARGIN, lifetime / 2)
            self._deadline = self._clock() + lifetime - margin
            log.info("fetched an API token valid for %ss", lifetime)
        return token

    def _failed(self, reason: str, status: int | None) -> NoReturn:
        self._grant_failure = clip(self._messages.scrub(reason))
        raise self._messages.fail(
            AuthError,
            f"{reason}; not retrying, because repeated failed token requests lock the account",
            status=status,
        )


class CallAuth(httpx.Auth):
    """One API call's view of a :class:`TokenAuth`: after a 401, refresh the token and
    resend once, and never again in this call (:attr:`refreshed`)."""

    def __init__(self, tokens: TokenAuth) -> None:
        self.tokens = tokens
        self.refreshed = False

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.tokens.bearer()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401 or self.tokens.static or self.refreshed:
            return  # the caller words the 401
        self.refreshed = True
        log.info(
            "%s %s: 401, fetching a new token and trying once more",
            request.method,
            request.url.path,
        )
        # Read (and so release) the refused answer before the token request; httpx
        # reads it too before it resends. It is never used, so at most the response
        # limit is read: a hostile or broken server cannot fill the memory with it.
        response.stream = _Capped(response.stream, self.tokens.limit)
        response.read()
        token = self.tokens.refresh_after_401(token)
        # The same request, as a new object: the refused one stays as it was sent.
        again = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.content,
            extensions=request.extensions,
        )
        again.headers["Authorization"] = f"Bearer {token}"
        yield again


class _Capped(httpx.SyncByteStream):
    """A body cut after ``limit`` bytes; the rest is never read (the connection is
    closed instead of being reused)."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, limit: int) -> None:
        assert isinstance(stream, httpx.SyncByteStream)
        self._stream = stream
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        for chunk in self._stream:
            yield chunk[: self._limit - size]
            size += len(chunk)
            if size >= self._limit:
                return

    def close(self) -> None:
        self._stream.close()


def _oauth_error(body: bytes | None) -> str | None:
    """The standard OAuth ``error`` code (RFC 6749 5.2) of a token endpoint's refusal,
    or None. Only a code from the fixed list is returned: nothing the server wrote."""
    try:
        doc: object = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
    code = doc.get("error") if isinstance(doc, dict) else None
    return code if isinstance(code, str) and code in _OAUTH_ERRORS else None
