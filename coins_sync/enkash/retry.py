"""The retry policy: which failures are safe to send again, and how long to wait.

The table (:func:`classify` for answers, :func:`transport_failure` for no answer):

=========================  ===========================  ===========================
what happened              create (POST)                GET, PATCH
=========================  ===========================  ===========================
connect error/timeout,     retried (nothing was sent)   retried (nothing was sent)
pool timeout
429                        retried, Retry-After         retried, Retry-After
408                        ApiError                     retried
5xx                        OutcomeUnknownError          retried (503: Retry-After);
                                                        maybe applied
read timeout, dropped      OutcomeUnknownError          retried; maybe applied
connection, lost 2xx body
other 4xx                  ApiError                     ApiError
3xx                        OutcomeUnknownError, except  ApiError
                           301/307/308 (ApiError)
=========================  ===========================  ===========================

**A create is never sent twice unless the first surely was not processed**: EnKash has
no idempotency key. A PATCH that fails for good after some attempt *may have been
applied* (:attr:`Retry.maybe_applied`) raises
:class:`~coins_sync.errors.OutcomeUnknownError` in the client. When every attempt
failed to connect (:attr:`Retry.unreached`) nothing was sent.

Waits are exponential with full jitter between ``backoff_initial`` and ``backoff_max``;
a server's ``Retry-After`` (429, 503) is honoured as given up to ``retry_after_max``,
and a longer one ends the call at once. :meth:`RetryPolicy.cancel` ends every wait.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

import httpx
import tenacity

from coins_sync.enkash.wire import Messages, Reply, Wire, describe
from coins_sync.errors import ApiError, OutcomeUnknownError

log = logging.getLogger(__name__)

# Redirects that mean "not here": the server did not act on the request. Others (302,
# 303 after a POST) may follow a processed request.
_NOT_PROCESSED_REDIRECTS: Final = frozenset({301, 307, 308})


class Retry(Exception):
    """This attempt failed in a way that is safe to repeat."""

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


class RetryPolicy:
    """How many attempts, how long between them, and when to stop early.

    ``sleep`` is injectable for tests; the default one ends early on :meth:`cancel`.
    """

    def __init__(
        self,
        *,
        max_retries: int,
        backoff_initial: float,
        backoff_max: float,
        retry_after_max: float,
        messages: Messages,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.attempts = max_retries + 1
        self.retry_after_max = retry_after_max
        self._messages = messages
        # Set by cancel(): retry waits end and no new attempt starts.
        self._cancelled = threading.Event()
        self._sleep = sleep if sleep is not None else self._pause
        self._jitter = tenacity.wait_random_exponential(multiplier=backoff_initial, max=backoff_max)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _pause(self, seconds: float) -> None:
        self._cancelled.wait(seconds)

    def sleep(self, seconds: float) -> None:
        """Wait as between retries: the injected sleep, else one that :meth:`cancel` ends."""
        self._sleep(seconds)

    def retrying(self, what: str, doing: str) -> tenacity.Retrying:
        """Retries of :class:`Retry` failures only, with jittered backoff, each one logged."""
        attempts = self.attempts

        def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            outcome = retry_state.outcome
            reason = outcome.exception() if outcome is not None else None
            log.warning(
                "%s: %s; %s in %.2fs (attempt %d of %d)",
                what,
                self._messages.scrub(str(reason)),
                doing,
                retry_state.upcoming_sleep,
                retry_state.attempt_number + 1,
                attempts,
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Retry),
            stop=tenacity.stop_after_attempt(attempts)
            | tenacity.stop_when_event_set(self._cancelled),
            wait=self.wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def wait(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, Retry) and exc.retry_after is not None:
            # too_long_to_wait already refused anything above the cap.
            return min(exc.retry_after, self.retry_after_max)
        return float(self._jitter(retry_state))

    def too_long_to_wait(self, retry_after: float | None) -> bool:
        return retry_after is not None and retry_after > self.retry_after_max

    def wait_refused(self, retry_after: float | None) -> str:
        return (
            f"the server asked to retry after {retry_after:g}s, longer than "
            f"retry_after_max ({self.retry_after_max:g}s); giving up"
        )

    def gave_up(self, what: str, last: str) -> str:
        if self.cancelled:
            return f"{what}: stopped retrying, the run is stopping; last: {last}"
        attempts = self.attempts
        return (
            f"{what}: gave up after {attempts} attempt{'s' if attempts != 1 else ''}; last: {last}"
        )


def transport_failure(
    e: httpx.TransportError, what: str, create: bool, messages: Messages
) -> Exception:
    """No answer came: a :class:`Retry` when resending is safe, else the final error."""
    reason = describe(e)
    certificate = certificate_problem(e)
    if certificate is not None:  # resending cannot fix it, and it is not the network
        return messages.fail(
            ApiError,
            f"{what}: the server's TLS certificate was refused ({certificate}); nothing was "
            "sent. Check api_url's host name, or install the CA that signed the certificate "
            "(SSL_CERT_FILE names a CA bundle)",
        )
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
        return Retry(reason, unreached=True)  # nothing was sent
    if isinstance(e, httpx.PoolTimeout):
        return Retry(reason)  # nothing was sent
    if isinstance(e, httpx.UnsupportedProtocol):
        return messages.fail(ApiError, f"{what}: {reason}")
    if create:
        return messages.fail(
            OutcomeUnknownError,
            f"{what}: {reason} after the request was sent; "
            "the config may or may not have been created",
        )
    if isinstance(e, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return Retry(reason, maybe_applied=True)  # sent; the answer was lost
    return messages.fail(ApiError, f"{what}: {reason}")


def certificate_problem(e: BaseException) -> str | None:
    """The verification failure behind a transport error, when a certificate was refused
    (expired, self-signed, another host's name), else None."""
    import ssl

    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or str(cause)
        cause = cause.__cause__ or cause.__context__
    if "CERTIFICATE_VERIFY_FAILED" in str(e):
        return "certificate verify failed"
    return None


def classify(reply: Reply, what: str, create: bool, wire: Wire, policy: RetryPolicy) -> Reply:
    """Return a 2xx reply with its body; raise :class:`Retry` or the final error else."""
    fail = wire.messages.fail
    status = reply.status
    if 200 <= status < 300:
        if reply.body is not None:
            return reply
        if create:
            raise fail(
                OutcomeUnknownError,
                f"{what}: HTTP {status} but {reply.problem}; "
                "the config was probably created but its id is unknown",
                status=status,
            )
        if reply.transient:
            raise Retry(f"HTTP {status} but {reply.problem}", status, maybe_applied=True)
        raise fail(ApiError, f"{what}: HTTP {status} but {reply.problem}", status=status)
    message, code = wire.server_message(reply)
    said = f": {message}" if message else ""
    named = wire.named_id(reply) if create and 400 <= status < 500 else ""
    if named:  # an answer that names an id is never "surely not created", nor resent
        raise fail(
            OutcomeUnknownError,
            f"{what}: HTTP {status}{said}; the config may have been created{named}",
            status=status,
            code=code,
        )
    if status == 429:
        if policy.too_long_to_wait(reply.retry_after):
            refused = policy.wait_refused(reply.retry_after)
            if create:
                refused += "; the config was not created"
            raise fail(ApiError, f"{what}: HTTP 429{said}; {refused}", status=status, code=code)
        raise Retry(f"HTTP 429{said}", status, reply.retry_after)
    if status >= 500:
        if create:
            raise fail(
                OutcomeUnknownError,
                f"{what}: HTTP {status}{said}; the config may or may not have been "
                f"created{wire.named_id(reply)}",
                status=status,
                code=code,
            )
        retry_after = reply.retry_after if status == 503 else None
        if policy.too_long_to_wait(retry_after):
            raise fail(
                ApiError,
                f"{what}: HTTP {status}{said}; {policy.wait_refused(retry_after)}",
                status=status,
                code=code,
            )
        raise Retry(f"HTTP {status}{said}", status, retry_after, maybe_applied=True)
    if status == 408 and not create:
        raise Retry(f"HTTP 408{said}", status)
    if 400 <= status < 500:
        raise fail(ApiError, f"{what}: HTTP {status}{said}", status=status, code=code)
    where = f" to {wire.messages.said(reply.location)}" if reply.location else ""
    if create and status not in _NOT_PROCESSED_REDIRECTS:
        raise fail(
            OutcomeUnknownError,
            f"{what}: unexpected HTTP {status}{where}; the config may or may not have "
            f"been created{wire.named_id(reply)}; check api_url",
            status=status,
        )
    raise fail(ApiError, f"{what}: unexpected HTTP {status}{where}; check api_url", status=status)
