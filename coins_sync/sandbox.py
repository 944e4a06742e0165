"""A local stand-in for the EnKash coins API, for demos, tests and benchmarks.

It speaks the wire protocol of SPEC §1 (envelope, OAuth password grant, optional
AES-128-ECB bodies) and keeps the real API's sharp edges on purpose: a repeated create
makes a second config, three refused token requests lock the account, and faults can be
injected so that callers can prove they never re-send a create blindly.

Promises:

- Never open by default: without a static token or OAuth credentials every API call
  is refused with 401. The debug routes (``/_sandbox/configs``, ``/_sandbox/stats``)
  need the token too.
- A config is stored (and, with ``data_file``, durably written) before any response
  that mentions it is sent; an injected "after" fault happens only once it is stored.
- Latency is slept per request in the handler thread, so parallel clients overlap.
- Nothing is printed; requests are logged at DEBUG level only.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import socket
import socketserver
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from coins_sync.errors import CoinsSyncError, SettingsError

__all__ = ["SandboxOptions", "SandboxServer", "serve"]

logger = logging.getLogger(__name__)

_API_PREFIX = "/api/"
_COINS_PREFIX = "/api/v0/enkash-coins/"
_CREATE_PATH = "/api/v0/enkash-coins/create-coins-config"
_TOKEN_PATH = "/oauth/token"
_DEBUG_CONFIGS_PATH = "/_sandbox/configs"
_DEBUG_STATS_PATH = "/_sandbox/stats"

_FIELDS = ("configuration", "companyId", "event", "amount")
_FIRST_ID = 100001
_MAX_TOKEN_FAILURES = 3
_STAT_KEYS = ("fail_before", "fail_after", "drop", "429", "creates", "patches", "gets")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SandboxOptions:
    """How the sandbox listens, whom it lets in, and which faults it injects.

    ``fail_rate`` is split evenly between "before" and "after" faults and added to
    ``fail_before_rate``/``fail_after_rate``; one roll decides per mutating call, so the
    chance of any fault is ``min(1, fail_before + fail_after)`` and "before" wins when
    the two add up to more than 1. Secrets are kept out of ``repr``.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    data_file: Path | None = None
    latency_ms: int = 0
    fail_rate: float = 0.0
    fail_before_rate: float = 0.0
    fail_after_rate: float = 0.0
    rate_429: float = 0.0
    seed: int | None = None
    token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token_ttl: int = 3600
    encryption: bool = False
    max_body: int = 1_000_000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"sandbox port must be in 0..65535, not {self.port}")
        if self.latency_ms < 0:
            raise SettingsError("sandbox latency_ms must not be negative")
        for name in ("fail_rate", "fail_before_rate", "fail_after_rate", "rate_429"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SettingsError(f"sandbox {name} must be between 0 and 1, not {value}")
        if self.token_ttl <= 0:
            raise SettingsError("sandbox token_ttl must be positive")
        if self.max_body <= 0:
            raise SettingsError("sandbox max_body must be positive")
        if self.encryption and not self.client_secret:
            raise SettingsError("sandbox encryption needs a client secret (the AES key)")

    @property
    def oauth_enabled(self) -> bool:
        """True when all four password-grant credentials are configured."""
        return all((self.client_id, self.client_secret, self.username, self.password))

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> SandboxOptions:
        """Take the credentials from ``COINS_SYNC_*`` variables; ``overrides`` win.

        Empty variables count as unset, so an exported-but-blank secret never becomes
        an accepted empty token.
        """
        names = {
            "token": "COINS_SYNC_TOKEN",
            "client_id": "COINS_SYNC_CLIENT_ID",
            "client_secret": "COINS_SYNC_CLIENT_SECRET",
            "username": "COINS_SYNC_USERNAME",
            "password": "COINS_SYNC_PASSWORD",
        }
        values: dict[str, Any] = {}
        for attr, var in names.items():
            value = environ.get(var)
            if value:
                values[attr] = value
        values.update(overrides)
        return cls(**values)


# --------------------------------------------------------------------------- AES helpers


def _aes_key(client_secret: str) -> bytes:
    return hashlib.sha256(client_secret.encode("utf-8")).digest()[:16]


def _encrypt(text: str, key: bytes) -> str:
    """AES-128-ECB with PKCS#7 padding, base64-encoded, as the EnKash docs describe."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(text.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def _decrypt(data: str, key: bytes) -> str:
    """Inverse of :func:`_encrypt`; raises ValueError on anything undecryptable."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("not base64") from e
    if not raw or len(raw) % 16:
        raise ValueError("ciphertext is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    padded = decryptor.update(raw) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(padded) + unpadder.finalize()
    return plain.decode("utf-8")


# --------------------------------------------------------------------------- shared state


class _HttpError(Exception):
    """An error answer: rendered as an envelope with ``response_code`` 1."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class _Fault(enum.Enum):
    NONE = "none"
    TOO_MANY = "429"
    FAIL_BEFORE = "fail_before"
    FAIL_AFTER = "fail_after"
    DROP = "drop"


class _Faults:
    """Decides faults from one seeded generator; each call consumes the same draws."""

    def __init__(self, options: SandboxOptions) -> None:
        self._rng = random.Random(options.seed)
        self._lock = threading.Lock()
        self._p429 = options.rate_429
        self._before = options.fail_before_rate + options.fail_rate / 2
        self._after = options.fail_after_rate + options.fail_rate / 2

    def draw(self) -> _Fault:
        with self._lock:
            r429, rfault, rdrop = self._rng.random(), self._rng.random(), self._rng.random()
        if r429 < self._p429:
            return _Fault.TOO_MANY
        if rfault < self._before:
            return _Fault.FAIL_BEFORE
        if rfault < self._before + self._after:
            return _Fault.DROP if rdrop < 0.5 else _Fault.FAIL_AFTER
        return _Fault.NONE


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(_STAT_KEYS, 0))

    def bump(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _Auth:
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
        return expiry is not None and time.monotonic() < expiry

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
            now = time.monotonic()
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


class _Store:
    """Configs by id, in creation order; optionally mirrored to a JSON file.

    The lock covers only the dict mutation. File writes are serialised by a second lock
    and coalesced: a writer whose change is already in a newer written snapshot skips.
    """

    def __init__(self, data_file: Path | None) -> None:
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._configs: dict[str, dict[str, Any]] = {}
        self._next_id = _FIRST_ID
        self._version = 0
        self._written = 0
        self._data_file = data_file
        if data_file is not None and data_file.exists():
            self._load(data_file)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
            next_id = data.get("next_id")
            configs = data.get("configs")
            if not isinstance(next_id, int) or isinstance(next_id, bool):
                raise ValueError("next_id is not an integer")
            if not isinstance(configs, list):
                raise ValueError("configs is not a list")
            for item in configs:
                if not isinstance(item, dict) or not isinstance(item.get("coinConfigId"), str):
                    raise ValueError("a config lacks a coinConfigId")
                cleaned = _validate_fields(item, partial=False, extra=("coinConfigId",))
                config_id = item["coinConfigId"]
                if config_id in self._configs:
                    raise ValueError(f"duplicate coinConfigId {config_id}")
                self._configs[config_id] = {"coinConfigId": config_id, **cleaned}
                suffix = config_id.removeprefix("WCC")
                if suffix.isdigit():
                    next_id = max(next_id, int(suffix) + 1)
        except (OSError, ValueError, _HttpError) as e:
            raise CoinsSyncError(f"sandbox data file {path} is unusable: {e}") from e
        self._next_id = max(next_id, _FIRST_ID)
        logger.debug("loaded %d configs from %s", len(self._configs), path)

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            config_id = f"WCC{self._next_id:06d}"
            self._next_id += 1
            config = {"coinConfigId": config_id, **{k: fields[k] for k in _FIELDS}}
            self._configs[config_id] = config
            self._version += 1
            version = self._version
            result = dict(config)
        self._persist(version)
        return result

    def get(self, config_id: str) -> dict[str, Any] | None:
        with self._lock:
            config = self._configs.get(config_id)
            return None if config is None else dict(config)

    def patch(self, config_id: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            config = self._configs.get(config_id)
            if config is None:
                return None
            config.update(fields)
            self._version += 1
            version = self._version
            result = dict(config)
        self._persist(version)
        return result

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._configs.values()]

    def _persist(self, version: int) -> None:
        if self._data_file is None:
            return
        with self._write_lock:
            if self._written >= version:
                return
            with self._lock:
                current = self._version
                data = {
                    "next_id": self._next_id,
                    "configs": [dict(c) for c in self._configs.values()],
                }
            _atomic_write(self._data_file, json.dumps(data, indent=2, sort_keys=True) + "\n")
            self._written = current


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` so that a crash leaves either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    with suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _validate_fields(body: object, *, partial: bool, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a create (all four fields) or patch (at least one) body; 400 on failure."""
    if not isinstance(body, dict):
        raise _HttpError(400, "Request body must be a JSON object")
    unknown = sorted(set(body) - set(_FIELDS) - set(extra))
    if unknown:
        raise _HttpError(400, f"Unknown field(s): {', '.join(unknown)}")
    if partial:
        if not any(name in body for name in _FIELDS):
            raise _HttpError(400, "No field to update")
    else:
        missing = [name for name in _FIELDS if name not in body]
        if missing:
            raise _HttpError(400, f"Missing required field(s): {', '.join(missing)}")
    cleaned: dict[str, Any] = {}
    for name in _FIELDS:
        if name not in body:
            continue
        value = body[name]
        if name == "amount":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _HttpError(400, "amount must be an integer")
            if value < 0:
                raise _HttpError(400, "amount must not be negative")
        elif not isinstance(value, str) or not value.strip():
            raise _HttpError(400, f"{name} must be a non-empty string")
        cleaned[name] = value
    return cleaned


@dataclass
class _App:
    options: SandboxOptions
    store: _Store
    auth: _Auth
    faults: _Faults
    stats: _Stats
    key: bytes | None
    connections: set[socket.socket] = field(default_factory=set)
    connections_lock: threading.Lock = field(default_factory=threading.Lock)


# --------------------------------------------------------------------------- HTTP layer


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: _App) -> None:
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "coins-sync-sandbox"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # headers and body leave in one write
    timeout = 300  # idle keep-alive connections are closed after this many seconds

    _api_route = False

    @property
    def app(self) -> _App:
        return cast(_HTTPServer, self.server).app

    def setup(self) -> None:
        super().setup()
        with self.app.connections_lock:
            self.app.connections.add(self.connection)

    def finish(self) -> None:
        with self.app.connections_lock:
            self.app.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing

    def _dispatch(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self._api_route = path.startswith(_API_PREFIX)
        try:
            body = self._read_body()
            if path == _TOKEN_PATH:
                self._require(method, "POST")
                status, answer = self.app.auth.grant(self.headers.get("Authorization"), body)
                self._send_json(status, answer, {"Cache-Control": "no-store"})
            elif path == _DEBUG_CONFIGS_PATH:
                self._require(method, "GET")
                self._require_auth()
                self._send_json(200, self.app.store.snapshot())
            elif path == _DEBUG_STATS_PATH:
                self._require(method, "GET")
                self._require_auth()
                self._send_json(200, self.app.stats.snapshot())
            elif self._api_route:
                self._api(method, path, body)
            else:
                raise _HttpError(404, "Not found")
        except _HttpError as e:
            self._send_envelope(e.status, None, 1, e.message, e.headers)
        except Exception:
            logger.exception("sandbox handler failed on %s %s", method, path)
            self.close_connection = True
            self._send_envelope(500, None, 1, "Internal server error")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise _HttpError(411, "Chunked bodies are not supported; send Content-Length")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError(raw_length)
        except ValueError:
            self.close_connection = True
            raise _HttpError(400, "Invalid Content-Length") from None
        if length > self.app.options.max_body:
            # The body stays unread, so this connection cannot carry another request.
            self.close_connection = True
            raise _HttpError(413, "Request body too large")
        return self.rfile.read(length)

    def _require_auth(self) -> None:
        """Every route but the token endpoint needs the token, the debug ones too."""
        if not self.app.auth.accepts(self.headers.get("Authorization")):
            raise _HttpError(401, "Unauthorized", {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _require(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _HttpError(405, "Method not allowed", {"Allow": ", ".join(allowed)})

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_envelope(
        self,
        status: int,
        payload: Any,
        code: int,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        envelope = {"payload": payload, "response_code": code, "response_message": message}
        key = self.app.key
        if self._api_route and key is not None:
            self._send_json(status, {"request": _encrypt(json.dumps(envelope), key)}, headers)
        else:
            self._send_json(status, envelope, headers)

    def _parse_body(self, body: bytes) -> object:
        try:
            data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except ValueError:
            raise _HttpError(400, "Malformed JSON body") from None
        key = self.app.key
        if key is None:
            return data
        if not isinstance(data, dict) or not isinstance(data.get("request"), str):
            raise _HttpError(400, 'Encrypted body must be {"request": "<base64>"}')
        try:
            text = _decrypt(data["request"], key)
        except ValueError:
            raise _HttpError(400, "Request body could not be decrypted") from None
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            raise _HttpError(400, "Malformed JSON body") from None

    # -- the coins API

    def _api(self, method: str, path: str, body: bytes) -> None:
        app = self.app
        if path == _CREATE_PATH:
            self._require(method, "POST")
            config_id = None
        elif path.startswith(_COINS_PREFIX) and "/" not in path[len(_COINS_PREFIX) :]:
            self._require(method, "GET", "PATCH")
            config_id = urllib.parse.unquote(path[len(_COINS_PREFIX) :])
            if not config_id:
                raise _HttpError(404, "Not found")
        else:
            raise _HttpError(404, "Not found")

        if app.options.latency_ms:
            time.sleep(app.options.latency_ms / 1000)
        self._require_auth()

        if method == "GET":
            assert config_id is not None
            config = app.store.get(config_id)
            if config is None:
                raise _HttpError(404, "Coins config not found")
            app.stats.bump("gets")
            self._send_envelope(200, config, 0, "Success")
            return

        fault = app.faults.draw()
        if fault is _Fault.TOO_MANY:
            app.stats.bump("429")
            raise _HttpError(429, "Too many requests", {"Retry-After": "0"})
        if fault is _Fault.FAIL_BEFORE:
            app.stats.bump("fail_before")
            raise _HttpError(500, "Internal server error")

        data = self._parse_body(body)
        if config_id is None:
            stored = app.store.create(_validate_fields(data, partial=False))
            app.stats.bump("creates")
        else:
            fields = _validate_fields(data, partial=True)
            patched = app.store.patch(config_id, fields)
            if patched is None:
                raise _HttpError(404, "Coins config not found")
            stored = patched
            app.stats.bump("patches")

        if fault is _Fault.DROP:
            app.stats.bump("drop")
            logger.debug("dropping the connection after storing %s", stored["coinConfigId"])
            self.close_connection = True
            return
        if fault is _Fault.FAIL_AFTER:
            app.stats.bump("fail_after")
            raise _HttpError(502, "Bad gateway")
        self._send_envelope(200, stored, 0, "Success")


# --------------------------------------------------------------------------- public server


class SandboxServer:
    """A running (or ready-to-run) sandbox; the socket is bound on construction.

    Binding early makes ``url`` valid before serving, also with ``port=0``.
    """

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self._app = _App(
            options=options,
            store=_Store(options.data_file),
            auth=_Auth(options),
            faults=_Faults(options),
            stats=_Stats(),
            key=_aes_key(options.client_secret)
            if options.encryption and options.client_secret
            else None,
        )
        server_cls = _HTTPServer6 if ":" in options.host else _HTTPServer
        try:
            self._httpd = server_cls((options.host, options.port), self._app)
        except OSError as e:
            raise CoinsSyncError(
                f"sandbox cannot listen on {options.host}:{options.port}: {e.strerror or e}"
            ) from e
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._served = False
        self._stopped = False

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:54321``."""
        host, port = self._httpd.server_address[:2]
        host_text = str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of counters: injected faults by kind, and stored creates/patches/gets.

        ``fail_after`` counts 502 answers and ``drop`` dropped connections; both happen
        after the config was stored, so together they count stored-but-unconfirmed calls.
        """
        return self._app.stats.snapshot()

    def configs(self) -> list[dict[str, Any]]:
        """Every stored config in creation order, duplicates included (copies)."""
        return self._app.store.snapshot()

    def start(self) -> None:
        """Serve in a background daemon thread and return at once."""
        with self._lock:
            if self._stopped or self._served:
                raise RuntimeError("a sandbox server can be started only once")
            self._served = True
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="coins-sync-sandbox",
                daemon=True,
            )
            self._thread.start()

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` or KeyboardInterrupt."""
        with self._lock:
            if self._stopped or self._served:
                raise RuntimeError("a sandbox server can be started only once")
            self._served = True
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving, close open connections and the socket; safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            served = self._served
        if served:
            # shutdown() waits for serve_forever to notice; it would hang if never started.
            self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        with self._app.connections_lock:
            open_connections = list(self._app.connections)
        for conn in open_connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxServer(url={self.url!r}, options={self.options!r})"


def serve(options: SandboxOptions, ready: Callable[[str], None] | None = None) -> None:
    """Run a sandbox in the calling thread until KeyboardInterrupt, then stop cleanly.

    ``ready`` is called with the URL once the socket listens, so a caller can announce
    it (useful with ``port=0``); this function itself prints and logs nothing.
    """
    server = SandboxServer(options)
    try:
        if ready is not None:
            ready(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
