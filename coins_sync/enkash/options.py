"""The client's options and its ``httpx.Client``: timeouts, pool, no redirects, no cookies.

Split from :mod:`~coins_sync.enkash.client` (which uses both) to keep each module short.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from coins_sync import defaults
from coins_sync.enkash.fresh import FreshTransport
from coins_sync.enkash.wire import ENCRYPTION_AES_128_ECB
from coins_sync.errors import SettingsError
from coins_sync.settings import ENCRYPTIONS, Encryption, check_api_url, check_timeouts

__all__ = ["ClientOptions", "make_http_client"]


@dataclass(frozen=True)
class ClientOptions:
    """Per-environment client settings; none of them is secret.

    ``max_retries`` counts attempts after the first, for the retryable cases only; a
    429 is not one of them: it is paced (see :mod:`~coins_sync.enkash.pacing`), and
    the pauses of the client add up to at most ``max_wait`` seconds. ``parallelism`` is
    the most requests in flight at once. ``backoff_*`` bound the jittered waits between
    retries (and the pause after a 429 without ``Retry-After``); a server's
    ``Retry-After`` is honoured as given up to ``retry_after_max``, and a longer one
    ends the call.
    Invalid values raise :class:`~coins_sync.errors.SettingsError`.
    """

    api_url: str
    connect_timeout: float = defaults.CONNECT_TIMEOUT
    read_timeout: float = defaults.READ_TIMEOUT
    encryption: Encryption | None = None  # None: Encryption.NONE
    max_retries: int = 5
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    retry_after_max: float = 60.0
    max_response_bytes: int = 1_000_000
    max_connections: int = 32
    parallelism: int = defaults.PARALLELISM
    max_wait: float = defaults.MAX_WAIT

    def __post_init__(self) -> None:
        if not isinstance(self.api_url, str):
            raise SettingsError(f"api_url {self.api_url!r} is not a URL")
        # The client leaves the http-to-a-remote-host policy to the settings.
        check_api_url(self.api_url, allow_insecure_http=True)
        if self.encryption is not None and self.encryption not in ENCRYPTIONS:
            raise SettingsError(
                f"encryption {self.encryption!r} is not supported; "
                f"use {ENCRYPTION_AES_128_ECB.value!r} or leave it unset"
            )
        check_timeouts("", self.connect_timeout, self.read_timeout)
        positive = {
            "max_response_bytes": self.max_response_bytes,
            "max_connections": self.max_connections,
            "parallelism": self.parallelism,
        }
        for name, value in positive.items():
            if not value > 0:
                raise SettingsError(f"{name} must be greater than 0, not {value!r}")
        if self.max_retries < 0:
            raise SettingsError(f"max_retries must be 0 or more, not {self.max_retries!r}")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise SettingsError("backoff needs 0 <= backoff_initial <= backoff_max")
        if not 0 <= self.max_wait < math.inf:
            raise SettingsError(f"max_wait must be 0 or more and finite, not {self.max_wait!r}")
        if not 0 <= self.retry_after_max < math.inf:
            raise SettingsError(
                f"retry_after_max must be 0 or more and finite, not {self.retry_after_max!r}"
            )


def _proxied(url: str) -> bool:
    """Whether the environment names a proxy for ``url``'s scheme (``HTTPS_PROXY``,
    ``ALL_PROXY`` and the like): then httpx's own transport, which honours it, is used."""
    proxies = urllib.request.getproxies_environment()
    return bool(proxies.get(urlsplit(url).scheme.lower()) or proxies.get("all"))


class _NoCookies(httpx.Cookies):
    """A jar that takes nothing from answers (and so costs nothing per answer)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Client(httpx.Client):
    """An ``httpx.Client`` whose cookie jar stays empty: the only cookie ever sent is
    the configured ``Cookie`` header."""

    _jar = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, value: object) -> None:
        raise TypeError("this client keeps no cookies; send a Cookie header instead")


def make_http_client(
    options: ClientOptions,
    transport: httpx.BaseTransport | None = None,
    *,
    keepalive: bool = True,
) -> httpx.Client:
    """An ``httpx.Client`` fit for :class:`CoinsClient`.

    Bounded timeouts, a pool sized for ``max_connections`` parallel calls, no redirects
    (a redirected POST could be replayed elsewhere), and a cookie jar that stores
    nothing, so the only cookie ever sent is the configured one (and no answer is
    parsed for cookies).

    With ``keepalive=False`` every request opens a fresh connection and closes it after
    the answer: this is the ``create_http`` client of :class:`CoinsClient`. Unless a
    ``transport`` is given or the environment names a proxy for the API's scheme, it
    runs on :class:`~coins_sync.enkash.fresh.FreshTransport`, which does exactly that for
    less CPU than httpx's pooled transport.
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
    if transport is None and not keepalive and not _proxied(options.api_url):
        transport = FreshTransport()
    return _Client(
        base_url=options.api_url,
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        transport=transport,
    )
