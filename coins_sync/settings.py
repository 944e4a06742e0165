"""Settings: ``[tool.coins-sync]`` in the working directory's ``pyproject.toml``.

Shape::

    [tool.coins-sync]
    configs = "configs"                 # where the rule files live
    default_environment = "sandbox"     # used when --env is not given

    [tool.coins-sync.environments.sandbox]
    configs = "configs/sandbox"         # this environment's own rule set (default: above)
    api_url = "http://127.0.0.1:8765"
    state = "state/sandbox.json"        # default: state/<env>.json
    encryption = "none"                 # or "aes-128-ecb"
    max_amount = 10000
    update_threshold = 0.3              # refuse plans updating more than this share...
    update_threshold_min_entries = 10   # ...once at least this many entries are managed
    parallelism = 8                     # the most requests in flight (paced below it)
    max_wait = 600                      # seconds apply may pause for the rate limit (429)
    backend = "file"                    # or "postgres" (team state; see README)
    pg_schema = "coins_sync"            # postgres only; DSN from COINS_SYNC_PG_DSN

Unknown keys are errors: a typo must never silently change behaviour. No secret is
ever read from this file; secrets come from environment variables only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from coins_sync import defaults
from coins_sync.errors import SettingsError
from coins_sync.inputs import MAX_SETTINGS_BYTES, read_input

DEFAULT_ENVIRONMENT = "default"


class Encryption(StrEnum):
    """How request and response bodies travel: plain JSON, or EnKash's AES-128-ECB."""

    NONE = "none"
    AES_128_ECB = "aes-128-ecb"


ENCRYPTIONS = tuple(Encryption)
BACKENDS = ("file", "postgres")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def valid_schema_name(name: str) -> bool:
    """A ``pg_schema``: a lower-case SQL identifier, not a system schema. The postgres
    backend quotes it in its SQL (so a keyword such as ``user`` works); lower case
    keeps the quoted name the schema an unquoted one names."""
    return bool(_SCHEMA_NAME.fullmatch(name)) and not name.startswith("pg_")


class Settings(NamedTuple):
    """The resolved settings of one environment, after command-line overrides.

    Immutable, compared and hashed by its fields, as a frozen dataclass is; a named
    tuple because building a dataclass of this size costs a few per cent of
    ``validate``'s start-up (its methods are compiled by exec at import).
    """

    env: str = DEFAULT_ENVIRONMENT
    configs: Path = Path("configs")
    state: Path = Path("state/default.json")
    api_url: str | None = None
    encryption: Encryption = Encryption.NONE
    max_amount: int = defaults.MAX_AMOUNT
    max_file_bytes: int = defaults.MAX_FILE_BYTES
    update_threshold: float = defaults.UPDATE_THRESHOLD
    update_threshold_min_entries: int = defaults.UPDATE_THRESHOLD_MIN_ENTRIES
    parallelism: int = defaults.PARALLELISM
    connect_timeout: float = defaults.CONNECT_TIMEOUT
    read_timeout: float = defaults.READ_TIMEOUT
    max_wait: float = defaults.MAX_WAIT
    lock_timeout: float = defaults.LOCK_TIMEOUT
    allow_insecure_http: bool = False
    fold_every: int = defaults.FOLD_EVERY
    backend: str = "file"
    pg_schema: str = "coins_sync"
    #: The project root the settings' paths were resolved against (see find_root).
    root: Path = Path(".")

    def with_overrides(
        self,
        *,
        configs: Path | None = None,
        state: Path | None = None,
        api_url: str | None = None,
        lock_timeout: float | None = None,
    ) -> Settings:
        """Apply --configs/--state/--api-url/--lock-timeout; None keeps the setting."""
        changed = self
        if lock_timeout is not None:
            changed = changed._replace(lock_timeout=lock_timeout)
        if configs is not None:
            changed = changed._replace(configs=configs)
        if state is not None:
            if not state.name or state.suffix != ".json":
                raise SettingsError(f"--state must name a .json file, got {str(state)!r}")
            changed = changed._replace(state=state)
        if api_url is not None:
            changed = changed._replace(api_url=api_url)
        if api_url is not None:
            changed.require_api_url()  # a bad URL fails plan and validate too, not only apply
        return changed

    def require_api_url(self) -> str:
        """The API base URL, checked: https unless loopback or explicitly allowed."""
        if not self.api_url:
            raise SettingsError(
                f"no api_url for environment {self.env!r}: set "
                f"[tool.coins-sync.environments.{self.env}] api_url or pass --api-url"
            )
        return check_api_url(self.api_url, allow_insecure_http=self.allow_insecure_http)


#: The longest connect or read timeout (seconds): longer is a mistake, and an infinite or
#: huge one cannot even be set on a socket.
MAX_TIMEOUT = 3600.0
#: The longest wait for a busy state lock (seconds; ``lock_timeout``, ``--lock-timeout``).
MAX_LOCK_TIMEOUT = 86_400.0


def check_timeouts(where: str, connect_timeout: float, read_timeout: float) -> None:
    """The one check of the connect and read timeouts, for settings and the client: more
    than 0 and at most :data:`MAX_TIMEOUT` seconds (nan and inf, which TOML has, fail it).
    ``where`` prefixes the field's name (``"tool.coins-sync.environments.prod."``)."""
    for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if not 0 < value <= MAX_TIMEOUT:
            raise SettingsError(
                f"{where}{name} must be more than 0 and at most {MAX_TIMEOUT:g} seconds, "
                f"got {value}"
            )


def check_api_url(url: str, *, allow_insecure_http: bool) -> str:
    """The one check of an API base URL, for settings, overrides and the client: an
    http(s) URL with a host, no user name or password, no query or fragment, and https
    unless the host is loopback or plain http is explicitly allowed. Returns it without
    a trailing slash."""
    from urllib.parse import urlsplit  # here, not at the top: validate starts faster

    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError as e:
        raise SettingsError(f"api_url {url!r} is not a valid URL ({e})") from e
    if "@" in parts.netloc:
        # Said without quoting the URL: it holds a secret.
        raise SettingsError("api_url must not contain a user name or password")
    if parts.scheme not in ("http", "https") or not hostname:
        raise SettingsError(f"api_url {url!r} is not an http(s) URL")
    try:
        hostname.encode("idna")  # what a connection will look up
    except UnicodeError as e:
        raise SettingsError(f"api_url {url!r} has no valid host name ({e})") from e
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise SettingsError(f"api_url {url!r} must not have a query or fragment")
    if parts.scheme == "http" and not is_loopback(hostname) and not allow_insecure_http:
        raise SettingsError(
            f"api_url {url!r} is plain http to a non-loopback host; use https, "
            "or set allow_insecure_http = true for this environment"
        )
    return url.rstrip("/")


def is_loopback(hostname: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1), never for names
    that merely start like one (``127.evil.example``)."""
    if hostname.lower() in ("localhost", "localhost."):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "configs": (str,),
    "default_environment": (str,),
    "max_file_bytes": (int,),
    "environments": (dict,),
}
_ENV_KEYS: dict[str, tuple[type, ...]] = {
    "configs": (str,),
    "api_url": (str,),
    "state": (str,),
    "encryption": (str,),
    "max_amount": (int,),
    "update_threshold": (float, int),
    "update_threshold_min_entries": (int,),
    "parallelism": (int,),
    "connect_timeout": (float, int),
    "read_timeout": (float, int),
    "max_wait": (float, int),
    "lock_timeout": (float, int),
    "allow_insecure_http": (bool,),
    "fold_every": (int,),
    "backend": (str,),
    "pg_schema": (str,),
}


def _check_keys(
    table: Mapping[str, Any], allowed: Mapping[str, tuple[type, ...]], where: str
) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise SettingsError(
                f"pyproject.toml: unknown setting {where}.{key} "
                f"(known: {', '.join(sorted(allowed))})"
            )
        kinds = allowed[key]
        # bool is an int in Python, but `max_amount = true` is still a typo
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not ok:
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise SettingsError(
                f"pyproject.toml: {where}.{key} must be {_article(names)} {names}, "
                f"got {_shown(value)}"
            )


_KIND_NAMES = {float: "number", dict: "table", str: "string", int: "integer", bool: "boolean"}


def _shown(value: object) -> str:
    """A TOML value for a message, kept short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _has_tool_table(pyproject: Path) -> bool:
    import tomllib  # only where a pyproject.toml is found

    try:
        data = tomllib.loads(read_input(pyproject, MAX_SETTINGS_BYTES).decode("utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return True  # a broken file is still reported where it is, never skipped over
    tool = data.get("tool")
    return not isinstance(tool, dict) or "coins-sync" in tool


def find_root(start: Path) -> Path:
    """The project root, found upward from ``start`` as pytest and ruff do: the nearest
    folder whose ``pyproject.toml`` has a ``[tool.coins-sync]`` table, else the nearest
    folder holding ``.git``, else ``start`` itself."""
    start = start.resolve()
    git_root: Path | None = None
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and _has_tool_table(pyproject):
            return folder
        if git_root is None and (folder / ".git").exists():
            git_root = folder
    return git_root or start


def environment_names(cwd: Path | None = None) -> list[str]:
    """The environments the project root's pyproject.toml defines, sorted; empty when
    it defines none (then only the default environment exists)."""
    import tomllib

    path = find_root((cwd or Path.cwd()).resolve()) / "pyproject.toml"
    try:
        data = tomllib.loads(read_input(path, MAX_SETTINGS_BYTES).decode("utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []  # load_settings reports it, where it is
    tool = data.get("tool")
    table = tool.get("coins-sync") if isinstance(tool, dict) else None
    environments = table.get("environments") if isinstance(table, dict) else None
    return sorted(environments) if isinstance(environments, dict) else []


def load_settings(cwd: Path | None = None, env: str | None = None) -> Settings:
    """Read the settings of ``env`` (or the default environment) from the project root's
    pyproject.toml. Paths in the settings are relative to that root, so a command run
    from a subfolder uses the same configs and the same state as one run from the root.
    """
    here = (cwd or Path.cwd()).resolve()
    base = find_root(here)
    path = base / "pyproject.toml"
    table: dict[str, Any] = {}
    if path.is_file():
        import tomllib

        try:
            data = tomllib.loads(read_input(path, MAX_SETTINGS_BYTES).decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SettingsError(f"pyproject.toml: {e}") from e
        tool = data.get("tool", {})
        if not isinstance(tool, dict):
            raise SettingsError(f"pyproject.toml: tool must be a table, got {_shown(tool)}")
        table = tool.get("coins-sync", {})
        if not isinstance(table, dict):
            raise SettingsError(
                f"pyproject.toml: [tool.coins-sync] must be a table, got {_shown(table)}"
            )
    _check_keys(table, _TOP_KEYS, "tool.coins-sync")
    environments: dict[str, Any] = table.get("environments", {})
    for env_name, env_table in environments.items():  # every one, not only the one used
        if not isinstance(env_table, dict):
            raise SettingsError(
                f"pyproject.toml: tool.coins-sync.environments.{env_name} must be a table, "
                f"got {_shown(env_table)}"
            )
    name = env or table.get("default_environment")
    if name is None and len(environments) == 1:
        name = next(iter(environments))  # the only environment is the one meant
    if name is None and len(environments) > 1 and DEFAULT_ENVIRONMENT not in environments:
        known = ", ".join(sorted(environments))
        raise SettingsError(
            f"pyproject.toml defines several environments ({known}) and no "
            "default_environment: pass --env NAME (or set COINS_SYNC_ENV), or set "
            "default_environment in [tool.coins-sync]"
        )
    name = name or DEFAULT_ENVIRONMENT
    if environments and name not in environments:
        known = ", ".join(sorted(environments))
        raise SettingsError(f"unknown environment {name!r} (known: {known})")
    if not environments and name != DEFAULT_ENVIRONMENT:
        raise SettingsError(
            f"unknown environment {name!r}: pyproject.toml defines no "
            "[tool.coins-sync.environments] tables"
        )
    values: dict[str, Any] = environments.get(name, {})
    _check_keys(values, _ENV_KEYS, f"tool.coins-sync.environments.{name}")
    settings = _resolve(name, table, values)
    if base == here:  # keep the short relative paths people see from the root
        return settings
    return settings._replace(
        root=base,
        configs=_under(base, settings.configs),
        state=_under(base, settings.state),
    )


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def _resolve(name: str, table: Mapping[str, Any], values: Mapping[str, Any]) -> Settings:
    encryption = values.get("encryption", "none")
    if encryption not in ENCRYPTIONS:
        raise SettingsError(
            f"environments.{name}.encryption must be one of {', '.join(ENCRYPTIONS)}"
        )
    settings = Settings(
        env=name,
        # an environment's own rule set (staging and prod differ) wins over the project's
        configs=Path(values.get("configs", table.get("configs", "configs"))),
        state=Path(values.get("state", f"state/{name}.json")),
        api_url=values.get("api_url"),
        encryption=Encryption(encryption),
        max_amount=values.get("max_amount", defaults.MAX_AMOUNT),
        max_file_bytes=table.get("max_file_bytes", defaults.MAX_FILE_BYTES),
        update_threshold=float(values.get("update_threshold", defaults.UPDATE_THRESHOLD)),
        update_threshold_min_entries=values.get(
            "update_threshold_min_entries", defaults.UPDATE_THRESHOLD_MIN_ENTRIES
        ),
        parallelism=values.get("parallelism", defaults.PARALLELISM),
        connect_timeout=float(values.get("connect_timeout", defaults.CONNECT_TIMEOUT)),
        read_timeout=float(values.get("read_timeout", defaults.READ_TIMEOUT)),
        max_wait=float(values.get("max_wait", defaults.MAX_WAIT)),
        lock_timeout=float(values.get("lock_timeout", defaults.LOCK_TIMEOUT)),
        allow_insecure_http=values.get("allow_insecure_http", False),
        fold_every=values.get("fold_every", defaults.FOLD_EVERY),
        backend=values.get("backend", "file"),
        pg_schema=values.get("pg_schema", "coins_sync"),
    )
    _check_ranges(settings)
    if settings.api_url is not None:
        settings.require_api_url()  # PR checks catch what apply would reject
    return settings


def _check_ranges(s: Settings) -> None:
    where = f"environments.{s.env}"
    if not s.state.name or s.state.suffix != ".json":
        raise SettingsError(f"{where}.state must name a .json file, got {str(s.state)!r}")
    if s.max_amount < 0:
        raise SettingsError(f"{where}.max_amount must be 0 or more")
    if not 0 < s.update_threshold <= 1:
        raise SettingsError(f"{where}.update_threshold must be in (0, 1], e.g. 0.3 for 30%")
    if not 1 <= s.parallelism <= 64:
        raise SettingsError(f"{where}.parallelism must be between 1 and 64")
    if s.update_threshold_min_entries < 0 or s.fold_every < 1:
        raise SettingsError(f"{where}: update_threshold_min_entries/fold_every out of range")
    if s.backend not in BACKENDS:
        raise SettingsError(f"{where}.backend must be one of {', '.join(BACKENDS)}")
    if not valid_schema_name(s.pg_schema):
        raise SettingsError(
            f"{where}.pg_schema must be a lower-case SQL name (letters, digits, _), "
            f"got {s.pg_schema!r}"
        )
    check_timeouts(f"{where}.", s.connect_timeout, s.read_timeout)
    if not 0 <= s.lock_timeout <= MAX_LOCK_TIMEOUT:
        raise SettingsError(
            f"{where}.lock_timeout must be 0 to {MAX_LOCK_TIMEOUT:g} seconds, got {s.lock_timeout}"
        )
    if not 0 <= s.max_wait < math.inf:
        raise SettingsError(f"{where}.max_wait must be 0 or more seconds, got {s.max_wait}")


def _article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"
