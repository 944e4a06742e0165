"""The state lock: one holder from any machine, and the epoch fence on every write.

A session advisory lock, held on a dedicated connection, keyed by a 64-bit hash of
(schema, environment). The holder (user, host, pid, command, since) is written to the
``environment`` row for a refused caller to read; a killed holder's session ends and
the server releases the lock. Taking the lock bumps the environment's ``lock_epoch``;
every write carries the run's epoch and checks, in the same statement, that the run's
lock session still holds the advisory lock (:data:`HELD`, :data:`LOCK_CHECK`). Zero rows
back means the lock was lost (``state force-unlock``, a dead session, a transaction
pooler): the run stops writing and sending (:class:`FencedError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from coins_sync.errors import FencedError, LockError, StateError
from coins_sync.state.audit import current_actor, current_commit
from coins_sync.state.model import utc_now
from coins_sync.state.postgres.connection import Database, driver, ended_by, storable
from coins_sync.state.postgres.migrations import applied
from coins_sync.state.store import LockHolder


def lock_key(schema: str, env: str) -> int:
    """The advisory lock key of one environment: a signed 64-bit hash of both names."""
    digest = hashlib.sha256(f"coins-sync\0state\0{schema}\0{env}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


HELD = """
    WHERE name = %(env)s AND lock_epoch = %(epoch)s
      AND EXISTS (
          SELECT 1 FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid = %(lock_pid)s
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid = %(classid)s::bigint::oid AND objid = %(objid)s::bigint::oid
            AND objsubid = 1)"""

#: The journal's first write after a bump (a template: ``{s}`` is the schema, ``{held}``
#: :data:`HELD`): zero rows unless this run holds the lock; else it bumps the serial and
#: marks the row dirty.
FENCE = """fence AS (
    UPDATE {s}.environment SET serial = serial + 1, dirty = true{held}
    RETURNING name, dirty)"""

#: Every other journal write: the same checks, but the row is only locked FOR SHARE, so
#: concurrent writers do not queue. ``dirty`` false (a checkpoint bumped the serial
#: meanwhile) means: write nothing, and retry with :data:`FENCE`. FOR SHARE conflicts
#: with the UPDATE of a lock take, a force-unlock and a checkpoint, so each write is
#: ordered wholly before or after them, and re-checked after them.
SHARE_FENCE = """fence AS (
    SELECT name, dirty FROM {s}.environment{held}
    FOR SHARE)"""

#: The fence of a write on the lock session itself.
LOCK_CHECK = """
    WHERE name = %(env)s AND lock_epoch = %(epoch)s
      AND EXISTS (
          SELECT 1 FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid = %(classid)s::bigint::oid AND objid = %(objid)s::bigint::oid
            AND objsubid = 1)"""


def held_by(db: Database) -> Any:
    """:data:`HELD` as composed SQL, for a template's ``{held}``."""
    return db.sql(HELD)


def lock_check(db: Database) -> Any:
    """:data:`LOCK_CHECK` as composed SQL, for a template's ``{lock_check}``."""
    return db.sql(LOCK_CHECK)


def fence(db: Database, bump: bool) -> Any:
    """The ``fence`` CTE of a journal write: :data:`FENCE` (``bump``) or
    :data:`SHARE_FENCE`, for a template's ``{fence}``."""
    return db.sql(FENCE if bump else SHARE_FENCE, held=held_by(db))


class StateLock:
    """The advisory lock of one environment, and the fence of the run that holds it."""

    def __init__(self, db: Database, ensure_schema: Callable[[Any], None]) -> None:
        self.db = db
        self._ensure_schema = ensure_schema
        self.key = lock_key(db.schema, db.env)
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        self.classid, self.objid = unsigned >> 32, unsigned & 0xFFFF_FFFF
        self.conn: Any = None  # the lock session, while held
        self.epoch: int | None = None
        self.pid: int | None = None  # the lock session's backend
        self.run_id: int | None = None
        self.lineage = ""  # the environment's lineage when the lock was taken

    def params(self) -> dict[str, Any]:
        if self.epoch is None or self.conn is None:
            raise FencedError(f"{self.db.describe()}: the state is not locked by this run")
        return {
            "env": self.db.env,
            "epoch": self.epoch,
            "classid": self.classid,
            "objid": self.objid,
            "lock_pid": self.pid,
            "run": self.run_id,
        }

    def holder(self, conn: Any) -> str:
        """Who holds the lock, from the environment row, checked against pg_locks."""
        lock_row = conn.execute(
            "SELECT l.pid, a.usename, a.client_addr::text, a.application_name, "
            "a.backend_start FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid",
            (self.classid, self.objid),
        ).fetchone()
        holder_row = None
        if applied(conn, self.db.schema) is not None:
            holder_row = conn.execute(
                self.db.sql("SELECT holder FROM {s}.environment WHERE name = %s"), (self.db.env,)
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
    def hold(self, command: str, timeout: float = 0.0) -> Iterator[None]:
        if self.conn is not None:
            raise StateError(f"{self.db.describe()}: already locked by this process")
        psycopg = driver()
        conn = self.db.connect(purpose=f"lock {self.db.env}", long_lived=True)
        try:
            self._ensure_schema(conn)
            deadline = time.monotonic() + timeout
            while True:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                if row is not None and row[0]:
                    break
                if time.monotonic() >= deadline:
                    who = self.holder(conn)
                    lock_id = self.lock_id(conn)
                    named = f" (lock id {lock_id})" if lock_id is not None else ""
                    waited = f" after waiting {timeout:g}s" if timeout else ""
                    hint = "" if timeout else ", or pass --lock-timeout SECONDS to wait"
                    unlock = " ".join(
                        filter(None, ["coins-sync state force-unlock", str(lock_id or "")])
                    )
                    raise LockError(
                        f"state {self.db.describe()} is locked by {who}{named}{waited}. Wait "
                        f"for it to finish{hint}. The server "
                        f"releases the lock of a run that dies; `{unlock} --env {self.db.env}` "
                        "ends a stuck one.",
                        holder=who,
                    )
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
            self._take(conn, command)
        except psycopg.Error as e:
            conn.close()
            raise self.db.error("cannot take the state lock", e) from e
        except BaseException:
            conn.close()
            raise
        try:
            yield
        finally:
            self._release()

    def _take(self, conn: Any, command: str) -> None:
        sql = self.db.sql
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": current_actor(self.db.environ),
            "command": command,
            "since": utc_now(),
            "backend_pid": conn.info.backend_pid,
        }
        with conn.transaction():
            conn.execute(
                sql("INSERT INTO {s}.environment (name) VALUES (%s) ON CONFLICT DO NOTHING"),
                (self.db.env,),
            )
            row = conn.execute(
                sql(
                    "UPDATE {s}.environment SET lock_epoch = lock_epoch + 1, "
                    "holder = %s::jsonb WHERE name = %s RETURNING lock_epoch, lineage"
                ),
                (json.dumps(storable(holder)), self.db.env),
            ).fetchone()
            run = conn.execute(
                sql(
                    "INSERT INTO {s}.run (env, actor, host, pid, command, commit, lock_epoch) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"
                ),
                storable(
                    [
                        self.db.env,
                        holder["user"],
                        holder["host"],
                        holder["pid"],
                        command,
                        current_commit(self.db.environ),
                        row[0],
                    ]
                ),
            ).fetchone()
        self.epoch, self.lineage = int(row[0]), str(row[1])
        self.run_id = int(run[0])
        self.pid = int(conn.info.backend_pid)
        self.conn = conn

    def _release(self) -> None:
        conn, self.conn = self.conn, None
        epoch, self.epoch = self.epoch, None
        run_id, self.run_id = self.run_id, None
        self.pid = None
        if conn is None:
            return
        sql = self.db.sql
        with contextlib.suppress(Exception):  # a lost session has released it already
            # unlock first: a caller refused meanwhile still finds the holder's record
            conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            conn.execute(
                sql("UPDATE {s}.environment SET holder = NULL WHERE name = %s AND lock_epoch = %s"),
                (self.db.env, epoch),
            )
            conn.execute(sql("UPDATE {s}.run SET ended_at = now() WHERE id = %s"), (run_id,))
        conn.close()

    def current_holder(self) -> str | None:
        """Who holds the lock now, without taking it (None when nobody does): for a
        plan made while an apply runs."""
        psycopg = driver()
        conn = self.db.connect(purpose="lock holder")
        try:
            row = conn.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 1 AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) "
                "AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
                (self.classid, self.objid),
            ).fetchone()
            return None if row is None else self.holder(conn)
        except psycopg.Error as e:
            raise self.db.error("cannot read who holds the state lock", e) from e
        finally:
            conn.close()

    def lock_id(self, conn: Any) -> int | None:
        """The lock id a refused caller is told: the holder's database session (its
        backend pid), or None when nobody holds the lock."""
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1 AND database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) "
            "AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
            (self.classid, self.objid),
        ).fetchone()
        return None if row is None else int(row[0])

    def force_unlock(self, lock_id: int | None = None) -> str | None:
        """End the holder's session and bump the epoch, so its writes are fenced out.

        With ``lock_id`` (the id a refused caller was told), only that holder is ended:
        when the lock is free or held by another run now, nothing is done (LockError).
        Returns a description of who was unlocked, or None when nobody held the lock.
        """
        psycopg = driver()
        conn = self.db.connect(purpose="force-unlock")
        try:
            self._ensure_schema(conn)
            held_by = self.lock_id(conn)
            if lock_id is not None and held_by != lock_id:
                now = "nobody holds it" if held_by is None else f"lock id {held_by} holds it"
                raise LockError(
                    f"lock id {lock_id} does not hold the lock of {self.db.describe()} "
                    f"({now}); nothing was done"
                )
            lock_row = None if held_by is None else (held_by,)
            who = self.holder(conn) if lock_row is not None else None
            with conn.transaction():
                conn.execute(
                    self.db.sql(
                        "UPDATE {s}.environment SET lock_epoch = lock_epoch + 1, holder = NULL "
                        "WHERE name = %s"
                    ),
                    (self.db.env,),
                )
            if lock_row is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (lock_row[0],))
            return who
        except psycopg.Error as e:
            raise self.db.error("cannot force the state lock open", e) from e
        finally:
            conn.close()

    def lost(self) -> str:
        """Why this run no longer holds the lock, as far as can be told (for a message):
        the epoch moved (another run, or `state force-unlock`), or the lock session
        ended, and who or what ended it (idle_session_timeout, an administrator)."""
        psycopg = driver()
        epoch, conn = self.epoch, self.conn
        try:
            probe = self.db.connect(purpose="lock check")
        except StateError:
            probe = None
        try:
            row = None
            if probe is not None:
                self._ensure_schema(probe)
                row = probe.execute(
                    self.db.sql("SELECT lock_epoch FROM {s}.environment WHERE name = %s"),
                    (self.db.env,),
                ).fetchone()
            if row is not None and epoch is not None and int(row[0]) != epoch:
                now = ""
                holder = probe.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objsubid = 1 AND classid = %s::bigint::oid "
                    "AND objid = %s::bigint::oid",
                    (self.classid, self.objid),
                ).fetchone()
                if holder is not None and holder[0] != self.pid:
                    now = f"; it is now held by {self.holder(probe)}"
                return f"another run took the lock, or `state force-unlock` ended this one{now}"
        except (psycopg.Error, StateError):
            pass
        finally:
            if probe is not None:
                probe.close()
        if conn is None:
            return "the state is not locked by this run"
        try:
            held = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND objsubid = 1 "
                "AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
                (self.classid, self.objid),
            ).fetchone()
        except psycopg.Error as e:
            why = ended_by(e) or "the server or the network closed it"
            return f"its lock session ended: {why}"
        if held is not None and not held[0]:
            return (
                "its lock session no longer holds the advisory lock (a connection pooler "
                "in transaction mode, such as PgBouncer, breaks session locks)"
            )
        return "the lock could not be confirmed"
