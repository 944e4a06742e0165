"""Team state on PostgreSQL: many runners, one truth.

:class:`PostgresStateStore` implements :class:`coins_sync.state.StateStore` (and
:class:`PostgresJournal` the :class:`coins_sync.state.Journal`) on a PostgreSQL server.
What is promised, beyond the file backend:

* **One holder, from any machine.** A session advisory lock, held on a dedicated
  connection, keyed by a 64-bit hash of (schema, environment). The holder (user, host,
  pid, command, since) is written to the ``environment`` row for a refused caller to
  read. A killed holder's session ends and the server releases the lock.
* **Fencing.** Taking the lock bumps the environment's ``lock_epoch``. Every write
  carries the run's epoch and checks, in the same statement, that the run's lock
  session still holds the advisory lock (``pg_locks``). Zero rows back means the lock
  was lost (``state force-unlock``, a dead session, a transaction pooler): the run
  stops writing and sending.
* **Serial.** Journal writes lock the environment row FOR SHARE, so concurrent writers
  never queue on it. The first write after a bump bumps the serial and marks the row
  ``dirty``; a checkpoint (and the end of an apply) bumps it again and clears the mark,
  and so does the next run's :meth:`PostgresStateStore.recover` after a run that died.
  So a saved plan made before or during an apply that changed entries is stale after it.
* **Durability per call.** A create's intent is one committed statement before it is
  sent. Its result, the entry and the audit row are one statement. A run killed at any
  instant leaves an open intent (uncertain next time) or a complete record.
* **Rescue.** When the database is lost after the API confirmed a change, the result
  goes to a local rescue file (and stderr); the run stops with exit 1 and the next run
  on that machine folds the file in.
* Plans read in one REPEATABLE READ, READ ONLY transaction, without the lock.

psycopg 3 is imported only when a postgres environment is used (``coins-sync[postgres]``).
The connection string comes from ``COINS_SYNC_PG_DSN``, else libpq's defaults (``PG*``
variables, a service file, ``~/.pgpass``); its password never appears in a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from coins_sync.errors import LockError, StateError
from coins_sync.rules import RuleKey
from coins_sync.state.audit import (
    AuditAction,
    AuditRecord,
    audit_data,
    current_actor,
    current_commit,
)
from coins_sync.state.file import _user
from coins_sync.state.files import atomic_write
from coins_sync.state.journal import JournalRecord, Outcome, Snapshot, parse_journal
from coins_sync.state.model import State, StateEntry, Uncertain, utc_now
from coins_sync.state.pgschema import LATEST, MIGRATIONS, bookkeeping_sql, checksum, render
from coins_sync.state.store import LockHolder

log = logging.getLogger(__name__)

DSN_VARIABLE = "COINS_SYNC_PG_DSN"
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


def lock_key(schema: str, env: str) -> int:
    """The advisory lock key of one environment: a signed 64-bit hash of both names."""
    digest = hashlib.sha256(f"coins-sync\0state\0{schema}\0{env}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migration_key(schema: str) -> int:
    digest = hashlib.sha256(f"coins-sync\0migrate\0{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class FencedError(StateError):
    """This run no longer holds the state lock; nothing more may be written or sent."""


_HELD = """
    WHERE name = %(env)s AND lock_epoch = %(epoch)s
      AND EXISTS (
          SELECT 1 FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid = %(lock_pid)s
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid = %(classid)s::bigint::oid AND objid = %(objid)s::bigint::oid
            AND objsubid = 1)"""


def _fence(s: str) -> str:
    """The CTE a journal write starts with when the environment is clean: zero rows
    unless this run holds the lock; else it bumps the serial and marks the row dirty."""
    return f"""
fence AS (
    UPDATE {s}.environment SET serial = serial + 1, dirty = true{_HELD}
    RETURNING name, dirty)"""


def _share_fence(s: str) -> str:
    """The CTE of every other journal write: the same checks, but the row is only locked
    FOR SHARE, so concurrent writers do not queue. ``dirty`` false (a checkpoint bumped
    the serial meanwhile) means: write nothing, and retry with :func:`_fence`.

    FOR SHARE conflicts with the UPDATE of a lock take, a force-unlock and a checkpoint,
    so each write is ordered wholly before or after them, and re-checked after them."""
    return f"""
fence AS (
    SELECT name, dirty FROM {s}.environment{_HELD}
    FOR SHARE)"""


_LOCK_CHECK = """
    WHERE name = %(env)s AND lock_epoch = %(epoch)s
      AND EXISTS (
          SELECT 1 FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid = %(classid)s::bigint::oid AND objid = %(objid)s::bigint::oid
            AND objsubid = 1)"""


class PostgresStateStore:
    """One environment's state in a PostgreSQL schema."""

    def __init__(
        self,
        env: str,
        schema: str = "coins_sync",
        dsn: str | None = None,
        rescue_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.env = env
        self.schema = schema
        self.environ = dict(os.environ if environ is None else environ)
        self.dsn = dsn if dsn is not None else self.environ.get(DSN_VARIABLE, "")
        self.rescue_path = rescue_path or Path("state") / f"{env}.pg-rescue.jsonl"
        self.key = lock_key(schema, env)
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        self._classid, self._objid = unsigned >> 32, unsigned & 0xFFFF_FFFF
        self._schema_checked = False
        self._lock_conn: Any = None
        self._epoch: int | None = None
        self._run_id: int | None = None
        self._lineage = ""
        self._journal: PostgresJournal | None = None
        self._audit_writer: PostgresAudit | None = None

    def __repr__(self) -> str:
        return f"PostgresStateStore({self.describe()!r})"

    # connections ----------------------------------------------------------------

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

    # schema ---------------------------------------------------------------------

    def _applied(self, conn: Any) -> dict[int, str] | None:
        """Applied migrations, or None when the schema was never set up."""
        s = self.schema
        row = conn.execute("SELECT to_regclass(%s)", (f"{s}.schema_migrations",)).fetchone()
        if row is None or row[0] is None:
            return None
        rows = conn.execute(f"SELECT version, checksum FROM {s}.schema_migrations").fetchall()
        return {int(v): str(c) for v, c in rows}

    def _check_applied(self, applied: Mapping[int, str]) -> bool:
        """True when up to date; raises for a newer or altered database."""
        newer = sorted(v for v in applied if v > LATEST)
        if newer:
            raise self.error(
                f"the database schema is at version {max(newer)}, newer than this "
                f"coins-sync knows (version {LATEST}); upgrade coins-sync"
            )
        for version, sql in MIGRATIONS:
            if version in applied and applied[version] != checksum(sql):
                raise self.error(
                    f"migration {version} in the database differs from this coins-sync's "
                    "(checksum mismatch); refusing to use it"
                )
        return all(version in applied for version, _ in MIGRATIONS)

    def migrate(self, conn: Any | None = None) -> list[int]:
        """Apply missing migrations in one transaction under a per-schema lock."""
        own = conn is None
        conn = conn or self.connect(purpose="migrate")
        psycopg = driver()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (migration_key(self.schema),))
                conn.execute(bookkeeping_sql(self.schema))
                applied = self._applied(conn) or {}
                self._check_applied(applied)
                done = []
                for version, sql in MIGRATIONS:
                    if version in applied:
                        continue
                    conn.execute(render(version, sql, self.schema))
                    conn.execute(
                        f"INSERT INTO {self.schema}.schema_migrations (version, checksum) "
                        "VALUES (%s, %s)",
                        (version, checksum(sql)),
                    )
                    done.append(version)
        except psycopg.Error as e:
            raise self.error("cannot set up the state schema", e) from e
        finally:
            if own:
                conn.close()
        self._schema_checked = True
        return done

    def _ensure_schema(self, conn: Any) -> None:
        if self._schema_checked:
            return
        applied = self._applied(conn)
        if applied is None or not self._check_applied(applied):
            self.migrate(conn)
        self._schema_checked = True

    # reading --------------------------------------------------------------------

    def read(self) -> State:
        """One REPEATABLE READ, READ ONLY snapshot; open intents read as uncertain."""
        psycopg = driver()
        conn = self.connect(autocommit=False, purpose="read")
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            applied = self._applied(conn)
            if applied is None:
                return State.new()
            if not self._check_applied(applied):
                conn.rollback()
                self.migrate()
                return self.read()
            state = self._read_in(conn)
            conn.rollback()
            return state
        except psycopg.Error as e:
            raise self.error("cannot read the state", e) from e
        finally:
            conn.close()

    def _read_in(self, conn: Any) -> State:
        s = self.schema
        row = conn.execute(
            f"SELECT lineage, serial FROM {s}.environment WHERE name = %s", (self.env,)
        ).fetchone()
        if row is None or not row[0]:
            return State.new()
        lineage, serial = str(row[0]), int(row[1])
        entries: dict[RuleKey, StateEntry] = {}
        uncertain: dict[RuleKey, Uncertain] = {}
        cursor = conn.execute(
            f"SELECT company_id, configuration, event, amount, coin_config_id, uncertain_since "
            f"FROM {s}.entry WHERE env = %s",
            (self.env,),
        )
        for company, configuration, event, amount, config_id, since in cursor:
            key = RuleKey(company, configuration, event)
            if config_id is not None:
                entries[key] = StateEntry(key, int(amount), config_id)
            else:
                uncertain[key] = Uncertain(key, int(amount), since)
        cursor = conn.execute(
            f"SELECT company_id, configuration, event, amount, intent_at "
            f"FROM {s}.operation WHERE env = %s AND outcome IS NULL",
            (self.env,),
        )
        for company, configuration, event, amount, since in cursor:
            key = RuleKey(company, configuration, event)
            if key not in entries:
                uncertain[key] = Uncertain(key, int(amount), since)
        return State(lineage=lineage, serial=serial, entries=entries, uncertain=uncertain)

    # locking --------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        if self._epoch is None or self._lock_conn is None:
            raise FencedError(f"{self.describe()}: the state is not locked by this run")
        return {
            "env": self.env,
            "epoch": self._epoch,
            "classid": self._classid,
            "objid": self._objid,
            "lock_pid": self._lock_conn.info.backend_pid,
            "run": self._run_id,
        }

    def holder(self, conn: Any) -> str:
        """Who holds the lock, from the environment row, checked against pg_locks."""
        s = self.schema
        lock_row = conn.execute(
            "SELECT l.pid, a.usename, a.client_addr::text, a.application_name, "
            "a.backend_start FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid",
            (self._classid, self._objid),
        ).fetchone()
        holder_row = None
        if self._applied(conn) is not None:
            holder_row = conn.execute(
                f"SELECT holder FROM {s}.environment WHERE name = %s", (self.env,)
            ).fetchone()
        data = holder_row[0] if holder_row else None
        if isinstance(data, dict) and (lock_row is None or data.get("backend_pid") == lock_row[0]):
            with contextlib.suppress(TypeError, KeyError):
                return LockHolder(
                    pid=int(data["pid"]),
                    host=str(data["host"]),
                    user=str(data["user"]),
                    command=str(data["command"]),
                    since=str(data["since"]),
                ).describe()
        if lock_row is not None:
            return (
                f"database session {lock_row[0]} (role {lock_row[1]}, "
                f"'{lock_row[3] or 'unnamed'}', since {lock_row[4]})"
            )
        return "another run (details unknown)"

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0) -> Iterator[None]:
        if self._lock_conn is not None:
            raise StateError(f"{self.describe()}: already locked by this process")
        psycopg = driver()
        conn = self.connect(purpose=f"lock {self.env}")
        try:
            self._ensure_schema(conn)
            deadline = time.monotonic() + timeout
            while True:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                if row is not None and row[0]:
                    break
                if time.monotonic() >= deadline:
                    who = self.holder(conn)
                    waited = f" after waiting {timeout:g}s" if timeout else ""
                    hint = "" if timeout else ", or pass --lock-timeout SECONDS to wait"
                    raise LockError(
                        f"state {self.describe()} is locked by {who}{waited}. Wait for it "
                        f"to finish{hint}. The server "
                        "releases the lock of a run that dies; `coins-sync state "
                        "force-unlock` ends a stuck one.",
                        holder=who,
                    )
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
            self._take(conn, command)
        except psycopg.Error as e:
            conn.close()
            raise self.error("cannot take the state lock", e) from e
        except BaseException:
            conn.close()
            raise
        try:
            yield
        finally:
            self._release()

    def _take(self, conn: Any, command: str) -> None:
        s = self.schema
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": current_actor(self.environ) if "GITHUB_ACTOR" in self.environ else _user(),
            "command": command,
            "since": utc_now(),
            "backend_pid": conn.info.backend_pid,
        }
        with conn.transaction():
            conn.execute(
                f"INSERT INTO {s}.environment (name) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.env,),
            )
            row = conn.execute(
                f"UPDATE {s}.environment SET lock_epoch = lock_epoch + 1, holder = %s::jsonb "
                "WHERE name = %s RETURNING lock_epoch, lineage",
                (json.dumps(holder), self.env),
            ).fetchone()
            run = conn.execute(
                f"INSERT INTO {s}.run (env, actor, host, pid, command, commit, lock_epoch) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    self.env,
                    holder["user"],
                    holder["host"],
                    holder["pid"],
                    command,
                    current_commit(self.environ),
                    row[0],
                ),
            ).fetchone()
        self._epoch, self._lineage = int(row[0]), str(row[1])
        self._run_id = int(run[0])
        self._lock_conn = conn

    def _release(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        epoch, self._epoch = self._epoch, None
        run_id, self._run_id = self._run_id, None
        if conn is None:
            return
        s = self.schema
        with contextlib.suppress(Exception):  # a lost session has released it already
            # unlock first: a caller refused meanwhile still finds the holder's record
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            conn.execute(
                f"UPDATE {s}.environment SET holder = NULL WHERE name = %s AND lock_epoch = %s",
                (self.env, epoch),
            )
            conn.execute(f"UPDATE {s}.run SET ended_at = now() WHERE id = %s", (run_id,))
        conn.close()

    def force_unlock(self) -> str | None:
        """End the holder's session and bump the epoch, so its writes are fenced out.

        Returns a description of who was unlocked, or None when nobody held the lock.
        """
        psycopg = driver()
        conn = self.connect(purpose="force-unlock")
        s = self.schema
        try:
            self._ensure_schema(conn)
            lock_row = conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 1 AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) "
                "AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
                (self._classid, self._objid),
            ).fetchone()
            who = self.holder(conn) if lock_row is not None else None
            with conn.transaction():
                conn.execute(
                    f"UPDATE {s}.environment SET lock_epoch = lock_epoch + 1, holder = NULL "
                    "WHERE name = %s",
                    (self.env,),
                )
            if lock_row is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (lock_row[0],))
            return who
        except psycopg.Error as e:
            raise self.error("cannot force the state lock open", e) from e
        finally:
            conn.close()

    # writing --------------------------------------------------------------------

    def write(self, state: State) -> State:
        """Persist ``state`` under the lock (fenced): only the changed entries."""
        psycopg = driver()
        params = self._params()
        conn = self._lock_conn
        s = self.schema
        try:
            with conn.transaction():
                row = conn.execute(
                    f"SELECT lineage, serial FROM {s}.environment {_LOCK_CHECK} FOR UPDATE",
                    params,
                ).fetchone()
                if row is None:
                    raise FencedError(
                        f"{self.describe()}: this run lost the state lock; nothing was written"
                    )
                lineage, serial = str(row[0]), int(row[1])
                current = self._read_in(conn) if lineage else State.new()
                if lineage and state.lineage != lineage:
                    raise StateError(
                        f"{self.describe()}: lineage changed underneath us "
                        f"({lineage} != {state.lineage}); refusing to overwrite"
                    )
                if lineage and current.content() == state.content():
                    return replace(state, serial=serial, exists=True)
                new_lineage = lineage or state.lineage or str(uuid.uuid4())
                new_serial = serial + 1 if lineage else max(serial, state.serial) + 1
                self._replace_entries(conn, current, state)
                conn.execute(
                    f"UPDATE {s}.environment SET lineage = %s, serial = %s WHERE name = %s",
                    (new_lineage, new_serial, self.env),
                )
        except psycopg.Error as e:
            raise self.error("cannot write the state", e) from e
        self._lineage = new_lineage
        return replace(state, lineage=new_lineage, serial=new_serial, exists=True)

    def _replace_entries(self, conn: Any, current: State, state: State) -> None:
        s = self.schema
        rows: dict[RuleKey, tuple[int, str | None, str | None]] = {}
        for key, u in state.uncertain.items():
            rows[key] = (u.amount, None, u.since or utc_now())
        for key, entry in state.entries.items():
            rows[key] = (entry.amount, entry.coin_config_id, None)
        old: dict[RuleKey, tuple[int, str | None, str | None]] = {}
        for key, u in current.uncertain.items():
            old[key] = (u.amount, None, u.since or utc_now())
        for key, entry in current.entries.items():
            old[key] = (entry.amount, entry.coin_config_id, None)
        gone = [k for k in old if k not in rows]
        changed = [(k, v) for k, v in rows.items() if old.get(k) != v]
        with conn.cursor() as cur:
            if gone:
                cur.executemany(
                    f"DELETE FROM {s}.entry WHERE env = %s AND company_id = %s "
                    "AND configuration = %s AND event = %s",
                    [(self.env, k.company_id, k.configuration, k.event) for k in gone],
                )
            if changed:
                cur.executemany(
                    f"INSERT INTO {s}.entry (env, company_id, configuration, event, amount, "
                    "coin_config_id, uncertain_since) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (env, company_id, configuration, event) DO UPDATE SET "
                    "amount = EXCLUDED.amount, coin_config_id = EXCLUDED.coin_config_id, "
                    "uncertain_since = EXCLUDED.uncertain_since",
                    [(self.env, k.company_id, k.configuration, k.event, *v) for k, v in changed],
                )

    def replace_state(self, state: State) -> State:
        """``state push``: this state's lineage and entries, under the lock; the serial
        becomes the pushed one, or one more than the database's when that is higher."""
        psycopg = driver()
        params = self._params()
        conn = self._lock_conn
        s = self.schema
        try:
            with conn.transaction():
                row = conn.execute(
                    f"SELECT lineage, serial FROM {s}.environment {_LOCK_CHECK} FOR UPDATE",
                    params,
                ).fetchone()
                if row is None:
                    raise FencedError(f"{self.describe()}: this run lost the state lock")
                current = self._read_in(conn) if row[0] else State.new()
                serial = max(state.serial, int(row[1]) + 1)
                self._replace_entries(conn, current, state)
                conn.execute(
                    f"UPDATE {s}.environment SET lineage = %s, serial = %s WHERE name = %s",
                    (state.lineage, serial, self.env),
                )
                written = self._read_in(conn)
        except psycopg.Error as e:
            raise self.error("cannot write the state", e) from e
        if written.content() != state.content():  # pragma: no cover - a server bug
            raise StateError(f"{self.describe()}: the pushed state did not read back equal")
        self._lineage = state.lineage
        return written

    # recovery -------------------------------------------------------------------

    def recover(self) -> tuple[State, tuple[str, ...]]:
        """Fold a local rescue file, then turn open intents into uncertain entries."""
        psycopg = driver()
        params = self._params()
        conn = self._lock_conn
        s = self.schema
        messages: list[str] = []
        try:
            stored = self._read_in(conn)
            if self.rescue_path.exists():
                messages += self._fold_rescue(stored)
            with conn.transaction():
                open_row = conn.execute(
                    f"SELECT count(*) FROM {s}.operation WHERE env = %s AND outcome IS NULL",
                    (self.env,),
                ).fetchone()
                if open_row is not None and open_row[0]:
                    row = conn.execute(
                        f"WITH {_fence(s).strip()}, closed AS ("
                        f"  UPDATE {s}.operation SET outcome = 'abandoned', done_at = now() "
                        "  WHERE env = %(env)s AND outcome IS NULL "
                        "    AND EXISTS (SELECT 1 FROM fence) "
                        "  RETURNING company_id, configuration, event, amount, intent_at) "
                        f"INSERT INTO {s}.entry (env, company_id, configuration, event, amount, "
                        "  coin_config_id, uncertain_since) "
                        "SELECT %(env)s, company_id, configuration, event, amount, NULL, intent_at "
                        "FROM closed ON CONFLICT DO NOTHING "
                        "RETURNING (SELECT count(*) FROM fence)",
                        params,
                    ).fetchall()
                    count = conn.execute(
                        f"SELECT count(*) FROM {s}.operation WHERE env = %s AND outcome IS NULL",
                        (self.env,),
                    ).fetchone()
                    if count is not None and count[0]:
                        raise FencedError(f"{self.describe()}: this run lost the state lock")
                    if row:
                        messages.append(
                            f"{len(row)} create(s) left in flight by an earlier run are "
                            "now uncertain"
                        )
                # an earlier run (or the rescue fold above) wrote after the last bump
                conn.execute(
                    f"UPDATE {s}.environment SET serial = serial + 1, dirty = false "
                    f"{_LOCK_CHECK} AND dirty",
                    params,
                )
            state = self._read_in(conn)
        except psycopg.Error as e:
            raise self.error("cannot recover the state", e) from e
        for message in messages:
            log.warning("%s", message)
        return state, tuple(messages)

    def _fold_rescue(self, stored: State) -> list[str]:
        path = self.rescue_path
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise StateError(f"{path}: cannot read the rescue file: {e}") from e
        lineage = stored.lineage or self._lineage
        replay = parse_journal(raw, lineage, str(path))
        journal = PostgresJournal(self, lineage, rescue=False)
        try:
            for record in replay.records:
                if record.kind != "result":
                    continue
                action = AuditAction.UPDATE if record.outcome == "updated" else AuditAction.CREATE
                outcome = (
                    Outcome.UNCERTAIN if record.outcome == "unknown" else Outcome(record.outcome)
                )
                note = "recorded from the rescue file after a lost database connection"
                journal.stash(
                    AuditRecord(
                        action, record.key, outcome, None, record.amount, record.coin_config_id
                    ),
                    note,
                )
                journal.append(record)
        finally:
            journal.close()
        aside = path.with_name(f"{path.name}.folded-{int(time.time())}")
        os.replace(path, aside)
        aside.unlink()
        return [
            *replay.damaged,
            f"folded {len(replay.records)} record(s) from the rescue file {path}",
        ]

    def journal(self, state: State) -> PostgresJournal:
        self._lineage = state.lineage
        journal = PostgresJournal(self, state.lineage)
        self._journal = journal
        return journal

    # audit ----------------------------------------------------------------------

    def audit_log(self, environ: Mapping[str, str]) -> PostgresAudit:
        return PostgresAudit(self, current_actor(environ), current_commit(environ))

    def _write_audit(self, item: AuditRecord, message: str | None) -> None:
        psycopg = driver()
        audit = self._audit_writer
        data = audit_data(
            item if message is None else replace(item, message=message),
            self.env,
            audit.actor if audit else current_actor(self.environ),
            audit.commit if audit else None,
        )
        conn = self.connect(purpose="audit")
        try:
            self._ensure_schema(conn)
            conn.execute(
                f"INSERT INTO {self.schema}.audit (env, run_id, record) VALUES (%s, %s, %s::jsonb)",
                (self.env, self._run_id, json.dumps(data, sort_keys=True)),
            )
        except psycopg.Error as e:
            raise self.error("cannot append to the audit log", e) from e
        finally:
            conn.close()

    def read_audit(self) -> Iterator[dict[str, Any]]:
        psycopg = driver()
        conn = self.connect(autocommit=False, purpose="report")
        try:
            conn.read_only = True
            if self._applied(conn) is None:
                return
            cursor = conn.execute(
                f"SELECT record FROM {self.schema}.audit WHERE env = %s ORDER BY id",
                (self.env,),
            )
            for (record,) in cursor:
                if isinstance(record, dict):
                    yield record
        except psycopg.Error as e:
            raise self.error("cannot read the audit log", e) from e
        finally:
            conn.close()


class _Pending:
    """One record waiting for the group commit that writes it (see PostgresJournal)."""

    __slots__ = ("done", "error", "kind", "lead", "ready", "row")

    def __init__(self, kind: str, row: dict[str, Any]) -> None:
        self.kind = kind
        self.row = row
        self.done = False  # committed, or failed with ``error``
        self.lead = False  # its thread is to write the next group
        self.error: BaseException | None = None
        self.ready = threading.Event()  # set once ``done`` or ``lead``


class PostgresJournal:
    """The per-call journal of one apply: each record committed by one fenced statement
    before :meth:`append` returns.

    Writes go on one dedicated connection (the lock connection holds the lock only), by
    group commit: a worker whose record arrives while a write is under way waits for it,
    and then one of the waiting workers writes every record that piled up meanwhile in
    one statement. So an intent is still durable before its create is sent, and a
    result (with its entry and audit row) is committed as soon as the write before it
    ends, but 16 workers cost a few statements per round instead of two per create, on
    one server backend instead of 16. A result the server confirmed but the database did
    not take goes to the rescue file and to stderr before the error is raised.
    """

    def __init__(self, store: PostgresStateStore, lineage: str, *, rescue: bool = True) -> None:
        self._store = store
        self._lineage = lineage
        self._rescue = rescue
        self._connection: Any = None
        self._closed = False
        self._mutex = threading.Lock()
        self._queue = threading.Lock()
        self._pending: list[_Pending] = []  # guarded by _queue
        self._writing = False  # a group commit is under way; guarded by _queue
        self._audits: dict[RuleKey, tuple[AuditRecord, str | None]] = {}
        self._params = store._params()
        self._failed = False
        s = store.schema
        #: bump -> SQL; each returns (fence rows, dirty): (1, false) wrote nothing
        self._sql: dict[bool, str] = {}
        for bump in (False, True):
            fence = (_fence(s) if bump else _share_fence(s)).strip()
            self._sql[bump] = (
                f"WITH {fence}, "
                "i AS (SELECT * FROM jsonb_to_recordset(%(intents)s::jsonb) AS i(company text, "
                "  configuration text, event text, amount bigint, at text)), "
                "r AS (SELECT * FROM jsonb_to_recordset(%(results)s::jsonb) AS r(company text, "
                "  configuration text, event text, amount bigint, outcome text, "
                "  config_id text, since text, write_entry boolean, audit jsonb)), "
                f"ins AS (INSERT INTO {s}.operation (env, run_id, company_id, configuration, "
                "  event, amount, intent_at) SELECT f.name, %(run)s, i.company, "
                "  i.configuration, i.event, i.amount, i.at FROM fence f, i WHERE f.dirty "
                "  RETURNING id), "
                f"op AS (UPDATE {s}.operation AS o SET outcome = r.outcome, "
                "  coin_config_id = r.config_id, done_at = now() FROM r "
                "  WHERE o.env = %(env)s AND o.company_id = r.company "
                "    AND o.configuration = r.configuration AND o.event = r.event "
                "    AND o.outcome IS NULL AND EXISTS (SELECT 1 FROM fence WHERE dirty) "
                "  RETURNING o.id), "
                f"ent AS (INSERT INTO {s}.entry AS e (env, company_id, configuration, event, "
                "  amount, coin_config_id, uncertain_since) "
                "  SELECT f.name, r.company, r.configuration, r.event, r.amount, "
                "    r.config_id, r.since FROM fence f, r WHERE f.dirty AND r.write_entry "
                "  ON CONFLICT (env, company_id, configuration, event) DO UPDATE SET "
                "    amount = EXCLUDED.amount, coin_config_id = EXCLUDED.coin_config_id, "
                "    uncertain_since = EXCLUDED.uncertain_since "
                "  WHERE EXCLUDED.coin_config_id IS NOT NULL OR e.coin_config_id IS NULL "
                "  RETURNING 1), "
                f"aud AS (INSERT INTO {s}.audit (env, run_id, record) "
                "  SELECT f.name, %(run)s, r.audit FROM fence f, r "
                "  WHERE f.dirty AND r.audit IS NOT NULL RETURNING 1) "
                "SELECT count(*), coalesce(bool_and(dirty), false) FROM fence"
            )

    def _conn(self) -> Any:
        with self._mutex:
            if self._closed:
                raise FencedError(f"{self._store.describe()}: the journal is closed")
            if self._connection is None:
                self._connection = self._store.connect(purpose=f"apply {self._store.env}")
            return self._connection

    def stash(self, item: AuditRecord, message: str | None = None) -> None:
        """An audit record to write in the same statement as ``item.key``'s result."""
        with self._mutex:
            self._audits[item.key] = (item, message)

    def _audit_data(self, key: RuleKey) -> dict[str, Any] | None:
        with self._mutex:
            stashed = self._audits.pop(key, None)
        if stashed is None:
            return None
        item, message = stashed
        audit = self._store._audit_writer
        return audit_data(
            item if message is None else replace(item, message=message),
            self._store.env,
            audit.actor if audit else current_actor(self._store.environ),
            audit.commit if audit else None,
        )

    def append(
        self,
        record: JournalRecord,
        book: Callable[[], None] | None = None,
        *,
        book_on_failure: bool = False,
    ) -> None:
        psycopg = driver()
        key = record.key
        row: dict[str, Any] = {
            "company": key.company_id,
            "configuration": key.configuration,
            "event": key.event,
            "amount": record.amount,
        }
        at = record.at or utc_now()
        if record.kind == "intent":
            row["at"] = at
        else:
            confirmed = record.outcome in ("created", "updated", "imported")
            row.update(
                outcome="created" if record.outcome == "imported" else record.outcome,
                config_id=record.coin_config_id if confirmed else None,
                since=None if confirmed else at,
                write_entry=(confirmed and bool(record.coin_config_id))
                or record.outcome == "unknown",
            )
            audit = self._audit_data(key)
            if audit is not None:
                row["audit"] = audit
        try:
            if self._failed:
                raise FencedError("an earlier write of this run failed")
            self._commit(_Pending("intent" if record.kind == "intent" else "result", row))
        except (psycopg.Error, StateError) as e:
            self._failed = True
            if book is not None and book_on_failure:
                book()
            if record.kind == "result":
                self._rescue_result(record)
            if isinstance(e, StateError):
                raise
            raise self._store.error("lost the database while recording a result", e) from e
        if book is not None:
            book()

    def _commit(self, item: _Pending) -> None:
        """Return once ``item`` is committed (raise what its write raised).

        With no write under way, this thread writes every waiting record; else it waits
        until that write has taken ``item`` along, or has handed it the next write. Only
        the threads concerned are woken, each once."""
        with self._queue:
            self._pending.append(item)
            item.lead = not self._writing
            self._writing = True
        while not item.lead and not item.done:
            item.ready.wait(1.0)  # the writer always sets it: done, or handed the lead
        if not item.done:
            self._lead()
        if item.error is not None:
            raise item.error

    def _lead(self) -> None:
        """Write the waiting records as one group, then hand the next group on."""
        with self._queue:
            batch, self._pending = self._pending, []
        error: BaseException | None = None
        try:
            self._write(batch)
        except BaseException as e:  # every record of the group failed with it
            error = e
        with self._queue:
            for pending in batch:
                pending.done, pending.error = True, error
            if self._pending:
                self._pending[0].lead = True
                self._pending[0].ready.set()
            else:
                self._writing = False
        for pending in batch:
            pending.ready.set()

    def _write(self, batch: list[_Pending]) -> None:
        """One fenced statement (two after a bump) that commits every record of ``batch``."""
        params = {
            **self._params,
            "intents": json.dumps([p.row for p in batch if p.kind == "intent"]),
            "results": json.dumps([p.row for p in batch if p.kind == "result"], sort_keys=True),
        }
        conn = self._conn()
        row = conn.execute(self._sql[False], params, prepare=True).fetchone()
        if row and row[0] and not row[1]:  # clean: the first write since a bump
            row = conn.execute(self._sql[True], params, prepare=True).fetchone()
        if not row or not row[0]:
            raise FencedError(
                f"{self._store.describe()}: this run lost the state lock (another run "
                "took it, or `state force-unlock` ended this one); it stops writing "
                "and sending"
            )

    def _rescue_result(self, record: JournalRecord) -> None:
        """Keep a result the database did not take: the rescue file and stderr."""
        if not self._rescue:
            return
        path = self._store.rescue_path
        line = record.to_line(self._lineage)
        with self._mutex:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                kept = f"kept in {path}; the next run folds it in"
            except OSError as e:
                kept = f"and the rescue file {path} could not be written ({e}): record it by hand"
            config = f" as {record.coin_config_id}" if record.coin_config_id else ""
            log.error(
                "RESCUE: %s %s%s (amount %s) was not recorded in the database; %s",
                record.outcome,
                record.key,
                config,
                record.amount,
                kept,
            )

    def checkpoint(self, snapshot: Snapshot) -> State:
        """Every result is already committed; the serial is bumped (when this run wrote
        since the last bump, and still holds the lock) and read back."""
        state, _ = snapshot()
        with self._mutex:
            leftovers = list(self._audits.values())
            self._audits.clear()
        for item, message in leftovers:  # no result followed (never expected)
            with contextlib.suppress(StateError):
                self._store._write_audit(item, message)
        if self._failed:
            return state
        s = self._store.schema
        try:
            conn = self._conn()
            row = conn.execute(
                f"UPDATE {s}.environment SET serial = serial + 1, dirty = false{_HELD} "
                "AND dirty RETURNING lineage, serial",
                self._params,
            ).fetchone()
            if row is None:  # nothing written since the last bump (or fenced: recover bumps)
                row = conn.execute(
                    f"SELECT lineage, serial FROM {s}.environment WHERE name = %s",
                    (self._store.env,),
                ).fetchone()
        except Exception:  # a lost database: the error that stopped the run is reported
            return state
        if row is None:
            return state
        return replace(state, lineage=str(row[0]), serial=int(row[1]), exists=True)

    def close(self) -> None:
        with self._mutex:
            conn, self._connection, self._closed = self._connection, None, True
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if self._store._journal is self:
            self._store._journal = None


class PostgresAudit:
    """Audit records as rows of the ``audit`` table.

    During an apply, a create's or update's record is written in the same statement as
    its journal result (so state and audit never disagree); every other record is a
    statement of its own.
    """

    def __init__(self, store: PostgresStateStore, actor: str, commit: str | None) -> None:
        self.store = store
        self.actor = actor
        self.commit = commit
        store._audit_writer = self

    def __repr__(self) -> str:
        return f"PostgresAudit({self.store.describe()!r})"

    def record(self, item: AuditRecord) -> None:
        journal = self.store._journal
        followed_by_result = item.action == "create" or (
            item.action == "update" and item.outcome == "updated"
        )
        if journal is not None and followed_by_result:
            journal.stash(item)
            return
        self.store._write_audit(item, None)

    def close(self) -> None:
        return None


def write_file_state(path: Path, state: State) -> None:
    """``state pull``: the deterministic JSON of ``state``."""
    from coins_sync.state.model import serialize

    atomic_write(path, serialize(state))
