"""The audit log of a postgres environment: rows of the ``audit`` table.

During an apply, a create's or update's record is written in the same statement as its
journal result (so state and audit never disagree); every other record is a statement
of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from coins_sync.state.audit import AuditAction, AuditRecord, audit_data, current_actor
from coins_sync.state.journal import Outcome
from coins_sync.state.postgres.connection import driver
from coins_sync.state.postgres.migrations import applied

if TYPE_CHECKING:
    from coins_sync.state.postgres.store import PostgresStateStore


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
        # stashed when a result under the same key follows (a move's unknown outcome
        # is journaled under its old key, so its record goes on its own)
        followed_by_result = (
            item.action == AuditAction.CREATE
            or (
                item.action in (AuditAction.UPDATE, AuditAction.RETIRE)
                and item.outcome in (Outcome.UPDATED, Outcome.RETIRED, Outcome.UNCERTAIN)
            )
            or (item.action == AuditAction.MOVE and item.outcome == Outcome.MOVED)
        )
        if journal is not None and followed_by_result:
            journal.stash(item)
            return
        write_audit(self.store, item, None)

    def close(self) -> None:
        return None


def write_audit(store: PostgresStateStore, item: AuditRecord, message: str | None) -> None:
    """One audit record as a statement of its own."""
    psycopg = driver()
    audit = store._audit_writer
    data = audit_data(
        item if message is None else replace(item, message=message),
        store.env,
        audit.actor if audit else current_actor(store.environ),
        audit.commit if audit else None,
    )
    conn = store.connect(purpose="audit")
    try:
        store._ensure_schema(conn)
        conn.execute(
            f"INSERT INTO {store.schema}.audit (env, run_id, record) VALUES (%s, %s, %s::jsonb)",
            (store.env, store._lock.run_id, json.dumps(data, sort_keys=True)),
        )
    except psycopg.Error as e:
        raise store.error("cannot append to the audit log", e) from e
    finally:
        conn.close()


def read_audit(store: PostgresStateStore) -> Iterator[dict[str, Any]]:
    """Every audit record of the environment, oldest first."""
    psycopg = driver()
    conn = store.connect(autocommit=False, purpose="report")
    try:
        conn.read_only = True
        if applied(conn, store.schema) is None:
            return
        cursor = conn.execute(
            f"SELECT record FROM {store.schema}.audit WHERE env = %s ORDER BY id",
            (store.env,),
        )
        for (record,) in cursor:
            if isinstance(record, dict):
                yield record
    except psycopg.Error as e:
        raise store.error("cannot read the audit log", e) from e
    finally:
        conn.close()
