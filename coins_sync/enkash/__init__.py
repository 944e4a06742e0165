"""The EnKash coins API client, in four parts.

* :mod:`~coins_sync.enkash.client`: :class:`CoinsClient` (create, get, update), its
  :class:`ClientOptions`, :func:`make_http_client` and :func:`check_credentials`.
* :mod:`~coins_sync.enkash.credentials`: the ``COINS_SYNC_*`` secrets
  (:class:`Credentials`) and whether they can work.
* :mod:`~coins_sync.enkash.auth`: the bearer token as an ``httpx.Auth``: fetch, refresh
  before expiry, one refresh and resend after a 401.
* :mod:`~coins_sync.enkash.wire`: envelopes, bodies (AES when configured), reading
  answers within a size limit, scrubbed messages.
* :mod:`~coins_sync.enkash.retry`: what is safe to send again, backoff and
  ``Retry-After``.

Importing this package pulls in httpx; ``validate`` and an offline ``plan`` never do.
"""

from __future__ import annotations

from coins_sync.enkash.client import (
    ClientOptions,
    CoinsClient,
    check_credentials,
    make_http_client,
)
from coins_sync.enkash.credentials import (
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_COOKIE,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USERNAME,
    Credentials,
)
from coins_sync.enkash.wire import (
    CONFIG_PATH,
    CREATE_PATH,
    ENCRYPTION_AES_128_ECB,
    TOKEN_PATH,
    RemoteConfig,
)

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
    "check_credentials",
    "make_http_client",
]
