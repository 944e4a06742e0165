"""The audit log of a postgres environment: rows of the ``audit`` table.

Every row is fenced like every other write of a run that holds the state lock: it lands
only while the run's lock epoch is current and its lock session holds the lock, so a
run ended by ``state force-unlock`` (or one whose epoch another run bumped) adds no
row. During an apply the rows go through the run's journal: a create's or update's
record in the same statement as its result (so state and audit never disagree), any
other record in a statement of its own. A record written by a command that holds no
lock (``state rm`` after its locked write) is one unfenced statement.

This module knows the connection and the lock; the journal reaches it only through the
small :class:`Route` protocol, and the store wires the two together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Protocol

from coins_sync.configs.model import RuleKey
from coins_sync.errors import FencedError
from coins_sync.state.audit import AuditAction, AuditRecord, audit_data
from coins_sync.state.journal import Outcome
from coins_sync.state.postgres.connection import Database, driver, storable
from coins_sync.state.postgres.lock import StateLock, held_by
from coins_sync.state.postgres.migrations import applied

#: One audit row, fenced: inserted only while this run holds the lock.
FENCED_INSERT = (
    "INSERT INTO {s}.audit (env, run_id, record) "
    "SELECT name, %(run)s, %(record)s::jsonb FROM {s}.environment{held}"
)


class Route(Protocol):
    """Where an apply's audit records go: its journal (:class:`PostgresJournal`)."""

    @property
    def closed(self) -> bool: ...

    def stash(self, key: RuleKey, audit: dict[str, Any]) -> None: ...

    def append_audit(self, audit: dict[str, Any]) -> None: ...


def followed_by_result(item: AuditRecord) -> bool:
    """Whether a journal result follows ``item`` (then both are one statement)."""
    return item.action == AuditAction.CREATE or (
        item.action == AuditAction.UPDATE and item.outcome in (Outcome.UPDATED, Outcome.UNCERTAIN)
    )


class PostgresAudit:
    """Audit records as rows of the ``audit`` table (see the module's docstring)."""

    def __init__(
        self,
        db: Database,
        lock: StateLock,
        ensure_schema: Callable[[Any], None],
        actor: str,
        commit: str | None,
    ) -> None:
        self.db = db
        self.lock = lock
        self.ensure_schema = ensure_schema
        self.actor = actor
        self.commit = commit
        self.route: Route | None = None

    def __repr__(self) -> str:
        return f"PostgresAudit({self.db.describe()!r})"

    def data(self, item: AuditRecord, message: str | None = None) -> dict[str, Any]:
        """``item`` as the JSON object of its row (``message`` replaces its own)."""
        if message is not None:
            item = replace(item, message=message)
        return audit_data(item, self.db.env, self.actor, self.commit)

    def record(self, item: AuditRecord) -> None:
        data = self.data(item)
        route = self.route
        if route is not None and not route.closed:
            if followed_by_result(item):
                route.stash(item.key, data)
            else:
                route.append_audit(data)
            return
        self.insert(data)

    def insert(self, data: dict[str, Any]) -> None:
        """One row as a statement of its own: fenced while this process holds the lock."""
        psycopg = driver()
        record = json.dumps(storable(data), sort_keys=True)
        locked = self.lock.epoch is not None
        conn = self.db.connect(purpose="audit")
        try:
            self.ensure_schema(conn)
            if locked:
                params = {**self.lock.params(), "record": record}
                done = conn.execute(self.db.sql(FENCED_INSERT, held=held_by(self.db)), params)
                if done.rowcount != 1:
                    raise FencedError(
                        f"{self.db.describe()}: this run lost the state lock "
                        f"({self.lock.lost()}); its audit record was not written"
                    )
            else:
                conn.execute(
                    self.db.sql(
                        "INSERT INTO {s}.audit (env, run_id, record) VALUES (%s, NULL, %s::jsonb)"
                    ),
                    (self.db.env, record),
                )
        except psycopg.Error as e:
            raise self.db.error("cannot append to the audit log", e) from e
        finally:
            conn.close()

    def close(self) -> None:
        return None


def read_audit(db: Database) -> Iterator[dict[str, Any]]:
    """Every audit record of the environment, oldest first."""
    psycopg = driver()
    conn = db.connect(autocommit=False, purpose="report")
    try:
        conn.read_only = True
        if applied(conn, db.schema) is None:
            return
        cursor = conn.execute(
            db.sql("SELECT record FROM {s}.audit WHERE env = %s ORDER BY id"), (db.env,)
        )
        for (record,) in cursor:
            if isinstance(record, dict):
                yield record
    except psycopg.Error as e:
        raise db.error("cannot read the audit log", e) from e
    finally:
        conn.close()
