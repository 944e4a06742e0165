"""Who may call the sandbox: a static token, issued OAuth tokens, a three-strikes lock."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
import threading
import urllib.parse
from typing import Any

from coins_sync.sandbox.options import SandboxOptions

__all__ = ["Auth"]

logger = logging.getLogger(__name__)

_MAX_TOKEN_FAILURES = 3


class Auth:
    """Static token, issued OAuth tokens, and the three-strikes account lock."""

    def __init__(self, options: SandboxOptions) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._issued: dict[str, float] = {}
        self._failures = 0

    def accepts(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return False
        static = self._options.token
        if static and hmac.compare_digest(value.encode(), static.encode()):
            return True
        with self._lock:
            expiry = self._issued.get(value)
        return expiry is not None and self._options.clock() < expiry

    def grant(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer a password-grant request: (HTTP status, JSON body)."""
        opts = self._options
        if not opts.oauth_enabled:
            return 401, {
                "error": "unauthorized_client",
                "error_description": "OAuth is not configured on this sandbox",
            }
        with self._lock:
            if self._failures >= _MAX_TOKEN_FAILURES:
                return 401, {"error": "invalid_grant", "error_description": "User account locked"}
            if not self._credentials_match(authorization, body):
                self._failures += 1
                logger.debug("token request refused (%d failed)", self._failures)
                return 401, {"error": "invalid_grant", "error_description": "Bad credentials"}
            self._failures = 0
            now = self._options.clock()
            for stale in [t for t, exp in self._issued.items() if exp <= now]:
                del self._issued[stale]
            token = secrets.token_urlsafe(32)
            self._issued[token] = now + opts.token_ttl
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": opts.token_ttl}

    def _credentials_match(self, authorization: str | None, body: bytes) -> bool:
        opts = self._options
        assert opts.client_id and opts.client_secret and opts.username and opts.password
        try:
            form = urllib.parse.parse_qs(
                body.decode("utf-8"), keep_blank_values=True, strict_parsing=True
            )
        except (UnicodeDecodeError, ValueError):
            return False
        fields: dict[str, str] = {}
        for name in ("username", "password", "grant_type", "clientId"):
            values = form.get(name)
            if not values or len(values) != 1:
                return False
            fields[name] = values[0]
        basic_id, basic_secret = _parse_basic(authorization)
        checks = [
            (fields["grant_type"], "password"),
            (fields["clientId"], opts.client_id),
            (fields["username"], opts.username),
            (fields["password"], opts.password),
            (basic_id, opts.client_id),
            (basic_secret, opts.client_secret),
        ]
        return all(hmac.compare_digest(a.encode(), b.encode()) for a, b in checks)


def _parse_basic(authorization: str | None) -> tuple[str, str]:
    """Split a Basic header into (id, secret); empty strings when it is not one."""
    if not authorization:
        return "", ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "", ""
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep else ("", "")
