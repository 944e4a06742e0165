"""Connections to the state database: the driver, loaded only when used, and the DSN.

psycopg 3 is imported only when a postgres environment is used (``coins-sync[postgres]``);
a missing driver is a :class:`StateError` naming the extra to install. The connection
string comes from ``COINS_SYNC_PG_DSN``, else libpq's defaults (``PG*`` variables, a
service file, ``~/.pgpass``); its password never appears in a message (:func:`redact`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from coins_sync import envvars
from coins_sync.errors import StateError

EXTRA_HINT = "install the extra: pip install 'coins-sync[postgres]'"
APPLICATION = "coins-sync"


def driver() -> ModuleType:
    """psycopg 3, or a StateError that names the extra to install."""
    try:
        import psycopg
    except ImportError as e:
        raise StateError(
            f"the postgres state backend needs the psycopg driver, which is not installed; "
            f"{EXTRA_HINT}"
        ) from e
    return psycopg


def redact(text: str, dsn: str) -> str:
    """``text`` without the DSN's password (in any spelling of it that could show up)."""
    for pattern in (r"password\s*=\s*'(?:[^'\\]|\\.)*'", r"password\s*=\s*\S+"):
        text = re.sub(pattern, "password=***", text, flags=re.IGNORECASE)
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    password = _password_of(dsn)
    if password and len(password) >= 3:
        text = text.replace(password, "***")
    return text


def _password_of(dsn: str) -> str | None:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return None
    try:
        value = conninfo_to_dict(dsn).get("password")
    except Exception:  # an unparsable DSN: the regexes above are all we have
        return None
    return str(value) if value else None


class Database:
    """Where one environment's state lives: server, database, schema and environment."""

    def __init__(
        self,
        env: str,
        schema: str = "coins_sync",
        dsn: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.env = env
        self.schema = schema
        self.environ = dict(os.environ if environ is None else environ)
        self.dsn = dsn if dsn is not None else self.environ.get(envvars.PG_DSN, "")

    def where(self) -> str:
        """The server and database, never the password."""
        host = dbname = ""
        with contextlib.suppress(Exception):
            from psycopg.conninfo import conninfo_to_dict

            parts = conninfo_to_dict(self.dsn)
            host = str(parts.get("host") or "")
            dbname = str(parts.get("dbname") or "")
        host = host or self.environ.get("PGHOST", "") or "default host"
        dbname = dbname or self.environ.get("PGDATABASE", "") or "default database"
        return f"{host}/{dbname}"

    def describe(self) -> str:
        return f"postgres {self.where()} schema {self.schema} environment {self.env}"

    def error(self, message: str, e: BaseException | None = None) -> StateError:
        detail = f": {redact(str(e).strip(), self.dsn)}" if e is not None else ""
        return StateError(f"{self.describe()}: {message}{detail}")

    def connect(self, *, autocommit: bool = True, purpose: str = "") -> Any:
        psycopg = driver()
        name = f"{APPLICATION} {purpose}".strip()[:63]
        try:
            return psycopg.connect(
                self.dsn,
                autocommit=autocommit,
                application_name=name,
                connect_timeout=10,
                keepalives=1,
                keepalives_idle=15,
                keepalives_interval=5,
                keepalives_count=4,
            )
        except psycopg.Error as e:
            raise self.error("cannot connect to the database", e) from e
