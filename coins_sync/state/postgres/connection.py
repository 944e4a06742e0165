"""Connections to the state database: the driver, loaded only when used, and the DSN.

psycopg 3 is imported only when a postgres environment is used (``coins-sync[postgres]``);
a missing driver is a :class:`StateError` naming the extra to install. The connection
string comes from ``COINS_SYNC_PG_DSN``, else libpq's defaults (``PG*`` variables, a
service file, ``~/.pgpass``); its password never appears in a message (:func:`redact`),
and a string libpq cannot parse is refused without echoing libpq's words, which quote
the string (:meth:`Database.checked_dsn`).

Every query names the schema through :meth:`Database.sql` (``psycopg.sql``, the name
quoted), and every text that reaches a text or jsonb column goes through
:func:`storable` first: PostgreSQL refuses NUL characters and lone surrogates, which a
server message may hold.
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
    except Exception:  # an unparsable DSN is refused before any connection is tried
        return None
    return str(value) if value else None


def storable(value: Any) -> Any:
    """``value`` (a str, or JSON made of dicts, lists and scalars) as PostgreSQL takes it:
    a NUL becomes the text ``\\x00`` and a lone surrogate ``\\udXXX``, so a hostile
    server message is kept, escaped, instead of failing the statement that records it."""
    if isinstance(value, str):
        if value.isascii():
            return value.replace("\x00", "\\x00")
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def ended_by(e: BaseException) -> str:
    """Why the server ended a session, from the error its client got (or "")."""
    state = getattr(getattr(e, "diag", None), "sqlstate", None) or getattr(e, "sqlstate", None)
    return {
        "57P05": "the server's idle_session_timeout ended it",
        "57P01": "an administrator ended it (pg_terminate_backend, or a server shutdown)",
        "57P02": "the server crashed",
        "57P03": "the server is not accepting connections",
        "25P03": "the server's idle_in_transaction_session_timeout ended it",
    }.get(str(state), "")


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

    def detail(self, e: BaseException) -> str:
        """The text of a driver error, without the password."""
        return redact(str(e).strip(), self.dsn)

    def error(self, message: str, e: BaseException | None = None) -> StateError:
        detail = f": {self.detail(e)}" if e is not None else ""
        return StateError(f"{self.describe()}: {message}{detail}")

    def sql(self, template: str, **parts: Any) -> Any:
        """``template`` as a ``psycopg.sql.Composed``: ``{s}`` is the schema's quoted
        name (a schema called ``user`` or ``order`` works like any other), and every
        other ``{name}`` the composed SQL passed as ``name`` (a fence, say)."""
        from psycopg import sql

        return sql.SQL(template).format(s=sql.Identifier(self.schema), **parts)

    def checked_dsn(self) -> str:
        """The DSN, once libpq can parse it. libpq's own message quotes the part it
        could not read (the password, often), so it is never shown."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(self.dsn)
        except Exception:
            raise StateError(
                f"the PostgreSQL connection string in {envvars.PG_DSN} cannot be parsed "
                "(libpq's message is not shown: it quotes the string, password included). "
                "In a postgresql:// URL, write a '%' in the password as %25 and other "
                "special characters percent-encoded; in key=value form, put a value with "
                "spaces or quotes in single quotes: password='my secret'"
            ) from None
        return self.dsn

    def connect(
        self, *, autocommit: bool = True, purpose: str = "", long_lived: bool = False
    ) -> Any:
        """A new connection. A ``long_lived`` one (the lock session, the journal's) may
        sit idle for as long as an apply waits on the API, so the server's
        ``idle_session_timeout`` (PostgreSQL 14+) is turned off for it, as pg_dump does:
        else the server would end the lock session in the middle of a run."""
        psycopg = driver()
        name = f"{APPLICATION} {purpose}".strip()[:63]
        dsn = self.checked_dsn()
        try:
            conn = psycopg.connect(
                dsn,
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
        if long_lived and conn.info.server_version >= 140000:
            try:
                conn.execute("SET idle_session_timeout = 0")
            except psycopg.Error as e:
                conn.close()
                raise self.error("cannot set up the session", e) from e
        return conn
