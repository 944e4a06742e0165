"""What goes over the wire to EnKash and what comes back, and how it is worded.

* Requests are compact JSON; with ``encryption = "aes-128-ecb"`` the body is sealed as
  ``{"request": ...}`` by :mod:`coins_sync.crypto`, the one codec shared with the sandbox.
* An answer is read within ``max_response_bytes``; a body that is too large, lost or
  unreadable becomes a :class:`Reply` with no body and a ``problem`` that says why.
* **Every 2xx answer is checked**: the envelope, the payload fields and their types. A
  server that answers with something else is an error, not data. Harmless variations are
  accepted: an integer ``coinConfigId`` (used as its decimal text), a whole-number float
  ``amount`` (``6.0``) and a numeric-string ``response_code`` (``"0"``). Booleans are
  never numbers.
* **Every message is scrubbed** of every known secret (:class:`Messages`, through
  :mod:`coins_sync.redact`), as a second line of defence: server text is scrubbed before
  it is clipped, so clipping cannot cut a secret into an unrecognisable piece.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeGuard

import httpx

from coins_sync.configs.model import RuleKey
from coins_sync.crypto import decrypt_to_text, encrypt_json_text
from coins_sync.enkash.credentials import ENV_CLIENT_SECRET
from coins_sync.errors import ApiError, OutcomeUnknownError, UnusableAmountError
from coins_sync.redact import Redactor
from coins_sync.settings import Encryption

TOKEN_PATH: Final = "/oauth/token"
CREATE_PATH: Final = "/api/v0/enkash-coins/create-coins-config"
CONFIG_PATH: Final = "/api/v0/enkash-coins/{coin_config_id}"
ENCRYPTION_AES_128_ECB: Final = Encryption.AES_128_ECB

ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CODE_RE: Final = re.compile(r"[+-]?[0-9]{1,18}")
MESSAGE_LIMIT: Final = 200


@dataclass(frozen=True)
class RemoteConfig:
    """A coin config as the server confirmed it."""

    coin_config_id: str
    key: RuleKey
    amount: int


@dataclass(frozen=True)
class Reply:
    """An HTTP answer. ``body`` is None when it could not be read; ``problem`` says why."""

    status: int
    body: bytes | None
    problem: str | None = None
    transient: bool = False
    retry_after: float | None = None
    location: str | None = None


def read_reply(response: httpx.Response, limit: int) -> Reply:
    """Read an answer of at most ``limit`` bytes; never raises for a lost body."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    location = response.headers.get("Location")
    too_large = f"the response is larger than max_response_bytes ({limit})"
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        return Reply(status, None, too_large, False, retry_after, location)
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                return Reply(status, None, too_large, False, retry_after, location)
            chunks.append(chunk)
    except httpx.TransportError as e:
        problem = f"the body was lost ({describe(e)})"
        return Reply(status, None, problem, True, retry_after, location)
    except httpx.HTTPError as e:
        return Reply(status, None, f"the body is unreadable ({describe(e)})")
    return Reply(status, b"".join(chunks), None, False, retry_after, location)


class Messages:
    """Builds error messages scrubbed of every known secret, fetched tokens included."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = tuple(secrets)
        self._redact = Redactor(self._secrets)

    def add_secret(self, secret: str) -> None:
        """Scrub ``secret`` too from now on (a token fetched at run time)."""
        if secret not in self._secrets:
            self._secrets = (*self._secrets, secret)
            self._redact = Redactor(self._secrets)

    def scrub(self, text: str) -> str:
        """``text`` with every encoding of every known secret masked (see redact)."""
        return self._redact(text)

    def said(self, text: str, limit: int = MESSAGE_LIMIT) -> str:
        """Server text fit for a message: scrubbed first, so clipping cannot cut a secret
        into a piece that scrubbing would no longer recognise."""
        return clip(self.scrub(text), limit)

    def fail(
        self,
        kind: type[ApiError],
        message: str,
        status: int | None = None,
        code: int | None = None,
    ) -> ApiError:
        """Build an error whose message is scrubbed of every known secret."""
        return kind(self.scrub(message), status=status, code=code)


class Wire:
    """Encodes request bodies and reads the coins routes' answers (decrypting when
    ``key`` is set); every message it raises goes through ``messages``."""

    def __init__(self, key: bytes | None, messages: Messages) -> None:
        self.key = key
        self.messages = messages

    def encode(self, body: dict[str, object]) -> bytes:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        if self.key is not None:
            sealed = encrypt_json_text(text, self.key)
            text = json.dumps({"request": sealed}, separators=(",", ":"))
        return text.encode("utf-8")

    def decode(self, raw: bytes) -> object:
        """Parse a coins-route body, decrypting ``{"request": ...}`` when encryption is on.

        Raises ValueError with a message safe to show.
        """
        try:
            doc: object = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ValueError("the response is not JSON") from e
        if self.key is not None and isinstance(doc, dict) and isinstance(doc.get("request"), str):
            try:
                text = decrypt_to_text(doc["request"], self.key)
            except ApiError as e:
                raise ValueError(f"{e} (is {ENV_CLIENT_SECRET} right?)") from e
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError) as e:
                raise ValueError("the decrypted response is not JSON") from e
        return doc

    def server_message(self, reply: Reply) -> tuple[str | None, int | None]:
        """The server's own words on an error answer, when it gave any."""
        if not reply.body:
            return reply.problem, None
        try:
            doc = self.decode(reply.body)
        except ValueError:
            text = reply.body.decode("utf-8", "replace").strip()
            # An HTML error page says nothing useful in one line.
            return (None if text.startswith("<") else self.messages.said(text) or None), None
        if not isinstance(doc, dict):
            return None, None
        if self.key is None and set(doc) == {"request"}:
            # an encrypting server seals its errors too: a plain client reads only "400"
            return (
                "the answer is encrypted, so the server expects encrypted bodies: set "
                f"encryption = {ENCRYPTION_AES_128_ECB.value!r} for this environment in "
                "[tool.coins-sync.environments.<env>]"
            ), None
        code = response_code(doc.get("response_code"))
        for name in ("response_message", "message", "error_description", "error"):
            value = doc.get(name)
            if isinstance(value, str) and value.strip():
                return self.messages.said(value), code
        return None, code

    def named_id(self, reply: Reply) -> str:
        """`` (the response names coinConfigId X)`` when the answer carried an id, else ``""``.

        For uncertain creates: the operator may ``state import`` that id.
        """
        if not reply.body:
            return ""
        try:
            doc = self.decode(reply.body)
        except ValueError:
            return ""
        return self.id_note(doc)

    def id_note(self, doc: object) -> str:
        if not isinstance(doc, dict):
            return ""
        payload = doc.get("payload")
        raw = payload.get("coinConfigId") if isinstance(payload, dict) else None
        if raw is None:
            raw = doc.get("coinConfigId")
        if raw is None or raw == "":
            return ""
        if is_int(raw):
            shown = str(raw)
        elif isinstance(raw, str) and ID_RE.fullmatch(raw):
            shown = raw
        else:
            shown = self.messages.said(repr(raw), limit=80)
        return f" (the response names coinConfigId {shown})"

    def parse_config(self, reply: Reply, what: str, create: bool) -> RemoteConfig:
        """Check the envelope of a 2xx answer and return its payload.

        For a create, an unusable 2xx answer raises OutcomeUnknownError: the server
        said "done" but we cannot tell what it did.
        """
        fail = self.messages.fail
        kind: type[ApiError] = OutcomeUnknownError if create else ApiError
        status = reply.status
        maybe = "; the config may have been created" if create else ""
        assert reply.body is not None  # classify returns 2xx replies with a body only
        try:
            doc = self.decode(reply.body)
        except ValueError as e:
            raise fail(kind, f"{what}: HTTP {status} but {e}{maybe}", status=status) from e
        if not isinstance(doc, dict):
            raise fail(
                kind, f"{what}: HTTP {status} but the response is not a JSON object{maybe}", status
            )
        if create:
            maybe += self.id_note(doc)
        code = response_code(doc.get("response_code"))
        if code is None:
            hint = ""
            if self.key is None and set(doc) == {"request"}:
                hint = f" (it looks encrypted: set encryption = {ENCRYPTION_AES_128_ECB.value!r})"
            missing = "the response has no integer response_code"
            raise fail(kind, f"{what}: HTTP {status} but {missing}{hint}{maybe}", status)
        if code != 0:
            message = doc.get("response_message")
            said = (
                f": {self.messages.said(message)}"
                if isinstance(message, str) and message.strip()
                else ""
            )
            named = self.id_note(doc) if create else ""
            if named:  # an answer that names an id is never "surely not created"
                raise fail(
                    OutcomeUnknownError,
                    f"{what}: the API answered response_code {code}{said}, but the config "
                    f"may have been created{named}",
                    status=status,
                    code=code,
                )
            raise fail(
                ApiError,
                f"{what}: the API refused (response_code {code}){said}",
                status=status,
                code=code,
            )
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            raise fail(kind, f"{what}: the response has no payload object{maybe}", status)
        problems: list[str] = []
        coin_config_id = payload.get("coinConfigId")
        if is_int(coin_config_id):
            coin_config_id = str(coin_config_id)  # validated as text below
        if not isinstance(coin_config_id, str) or not ID_RE.fullmatch(coin_config_id):
            problems.append("coinConfigId is missing or not a valid id")
        for name in ("configuration", "companyId", "event"):
            value = payload.get(name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name} is missing or not a string")
        raw_amount = payload.get("amount")
        amount = _whole_number(raw_amount)
        odd = not create and _odd_number(raw_amount)
        if amount is None and not odd:
            problems.append("amount is missing or not an integer")
        if problems or not isinstance(coin_config_id, str):
            raise fail(
                kind, f"{what}: the payload is unusable: {'; '.join(problems)}{maybe}", status
            )
        key = RuleKey(
            company_id=str(payload["companyId"]),
            configuration=str(payload["configuration"]),
            event=str(payload["event"]),
        )
        if amount is None or (amount < 0 and not create):  # a create's echo is checked later
            raw = self.messages.said(repr(raw_amount), limit=40)
            message = (
                f"{what}: config {coin_config_id} holds amount {raw}, not a whole number of "
                "0 or more; a person must settle it"
            )
            raise UnusableAmountError(message, coin_config_id, key, raw)
        return RemoteConfig(coin_config_id=coin_config_id, key=key, amount=amount)


def check_amount(amount: int) -> None:
    if not is_int(amount):
        raise TypeError(f"amount must be an int, not {type(amount).__name__}")
    if amount < 0:
        raise ValueError(f"amount must be 0 or more, not {amount}")


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole_number(value: object) -> int | None:
    """An int, or a float with no fraction (``6.0``) as an int; None for anything else."""
    if is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():  # False for inf and nan
        return int(value)
    return None


def _odd_number(value: object) -> bool:
    """A JSON number that is not a whole number (``2.5``, ``Infinity``): the server holds
    it, and a read shows it for a person to settle."""
    return isinstance(value, float)


def response_code(value: object) -> int | None:
    """An envelope ``response_code``: a whole number or its decimal text (``"0"``)."""
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _CODE_RE.fullmatch(text) else None
    return _whole_number(value)


def positive_seconds(value: object) -> float | None:
    """A positive, finite number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def parse_retry_after(value: str | None) -> float | None:
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


def describe(e: Exception) -> str:
    text = str(e).strip()
    return clip(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """One line, at most ``limit`` characters: server text is shown, not trusted."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def fields(values: Mapping[str, object], names: list[str]) -> str:
    return ", ".join(f"{name}={values[name]!r}" for name in names)
