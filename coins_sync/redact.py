"""The one redaction rule for everything coins-sync prints, logs or writes to the audit log.

Secrets are the values of :data:`SECRET_VARIABLES` and the Basic value made from the
client id and secret (the client id and user name alone are not secret). Every way a
secret can reach text is covered: the raw value (and the value without surrounding
whitespace), URL-encoded (``quote``, with and without ``/`` kept, and ``quote_plus``,
which is also how a form body such as ``password=Tr0ub4dor%263+horse%21`` encodes it),
with lower-case percent escapes too, JSON-, ``repr``- and HTML-escaped. Each occurrence
becomes :data:`MASK`.

Short secrets are still scrubbed. A secret of :data:`SHORT` (4) or more characters is
replaced wherever it occurs. One of 1 to 3 characters is replaced wherever it stands
as a whole token, that is not glued to a letter or digit on either side: a password
``ab`` is masked in ``password=ab&grant_type=...``, ``"ab"`` or ``: ab.``, but ``tabs``
stays readable. Masking every ``a`` in the output would make it useless, and would
itself tell a reader the secret. Use secrets longer than that anyway.

All secrets are matched in one pass, longest first, so a mask is never re-scrubbed.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping

from coins_sync import envvars

#: Environment variables whose values are secret. The client id and user name are not
#: secret on their own; with the client secret they form the Basic value, also scrubbed.
SECRET_VARIABLES = envvars.SECRETS
CLIENT_ID_VARIABLE = envvars.CLIENT_ID
CLIENT_SECRET_VARIABLE = envvars.CLIENT_SECRET

MASK = "***"
#: Secrets shorter than this are masked only where they stand as a whole token.
SHORT = 4

_PERCENT = re.compile(r"%[0-9A-F]{2}")


def basic_value(client_id: str, client_secret: str) -> str:
    """The credentials of an HTTP Basic ``Authorization`` header (base64 of id:secret)."""
    import base64

    return base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")


def secrets_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value set in ``environ`` (default: ``os.environ``), and the Basic
    value when both the client id and the client secret are set."""
    env = os.environ if environ is None else environ
    found = [env[name] for name in SECRET_VARIABLES if env.get(name)]
    client_id, client_secret = env.get(CLIENT_ID_VARIABLE), env.get(CLIENT_SECRET_VARIABLE)
    if client_id and client_secret:
        found.append(basic_value(client_id, client_secret))
        if client_id.strip() != client_id or client_secret.strip() != client_secret:
            found.append(basic_value(client_id.strip(), client_secret.strip()))
    return found


def encodings(secret: str) -> set[str]:
    """Every form in which ``secret`` may appear in text."""
    import html  # imports here keep the start-up of validate and plan short
    import json
    from urllib.parse import quote, quote_plus

    forms = {secret, secret.strip()}
    for value in list(forms):
        forms |= {
            quote(value, safe=""),
            quote(value),
            quote_plus(value),
            quote_plus(value, safe="/"),
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1],
            html.escape(value),
        }
    for value in list(forms):
        forms.add(_PERCENT.sub(lambda m: m.group(0).lower(), value))
    forms.discard("")
    return forms


def _pattern(form: str, short: bool) -> str:
    text = re.escape(form)
    if short:
        if form[0].isalnum():
            text = r"(?<![^\W_])" + text
        if form[-1].isalnum():
            text += r"(?![^\W_])"
    return text


class Redactor:
    """Masks every encoding of the given secrets in text; blank secrets are ignored."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: dict[str, bool] = {}
        for secret in secrets:
            if not secret or not secret.strip():
                continue
            short = len(secret.strip()) < SHORT
            for form in encodings(secret):
                # a form shared with a long secret is masked everywhere
                forms[form] = forms.get(form, True) and short
        ordered = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern = (
            re.compile("|".join(_pattern(f, forms[f]) for f in ordered)) if ordered else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every encoding of every secret in ``environ`` (default:
    ``os.environ``) masked. The one function all output goes through."""
    return _redactor(tuple(secrets_from_env(environ)))(text)


@functools.lru_cache(maxsize=8)
def _redactor(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)
