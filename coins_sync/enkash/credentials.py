"""API secrets: which ``COINS_SYNC_*`` variables hold them, and whether they can work.

Secrets are read from the environment only. No ``repr`` or ``str`` of
:class:`Credentials` shows a value, and :meth:`Credentials.secrets` lists every value
(and the Basic header it implies) so that output can be scrubbed of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from coins_sync import envvars
from coins_sync.errors import AuthError
from coins_sync.redact import basic_value

ENV_TOKEN: Final = envvars.TOKEN
ENV_CLIENT_ID: Final = envvars.CLIENT_ID
ENV_CLIENT_SECRET: Final = envvars.CLIENT_SECRET
ENV_USERNAME: Final = envvars.USERNAME
ENV_PASSWORD: Final = envvars.PASSWORD
ENV_COOKIE: Final = envvars.COOKIE

_OAUTH_VARS: Final = envvars.OAUTH
# Printable ASCII without spaces: what may follow "Bearer " in a header.
TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")
COOKIE_RE: Final = re.compile(r"[\x20-\x7e]+")

AuthMode = Literal["token", "oauth"]


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


def auth_mode(credentials: Credentials) -> AuthMode:
    """Which way to authenticate, or an AuthError naming the variables to set."""
    if credentials.token:
        if not TOKEN_RE.fullmatch(credentials.token):
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
