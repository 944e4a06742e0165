"""Team state on PostgreSQL: many runners, one truth.

:class:`PostgresStateStore` implements :class:`coins_sync.state.store.StateStore` on
a PostgreSQL schema: read, write, ``state push`` (replace), recovery after a run that
died, and the fold of a local rescue file. The lock and its fence live in
:mod:`~coins_sync.state.postgres.lock`, the per-call journal in
:mod:`~coins_sync.state.postgres.journal`.

* **Serial.** A write bumps the serial when content changed; journal writes bump it
  once after a checkpoint (the ``dirty`` mark), and so does the next run's
  :meth:`PostgresStateStore.recover` after a run that died. So a saved plan made before
  or during an apply that changed entries is stale after it.
* Plans read in one REPEATABLE READ, READ ONLY transaction, without the lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from coins_sync.configs.model import RuleKey
from coins_sync.errors import FencedError, StateError
from coins_sync.state.audit import AuditAction, AuditRecord, current_actor, current_commit
from coins_sync.state.journal import JournalKind, Outcome, parse_journal
from coins_sync.state.model import State, StateEntry, Uncertain, utc_now
from coins_sync.state.postgres import migrations
from coins_sync.state.postgres.audit import PostgresAudit, read_audit
from coins_sync.state.postgres.connection import Database, driver
from coins_sync.state.postgres.journal import PostgresJournal
from coins_sync.state.postgres.lock import LOCK_CHECK, StateLock, fence_cte

log = logging.getLogger(__name__)


class PostgresStateStore(Database):
    """One environment's state in a PostgreSQL schema."""

    def __init__(
        self,
        env: str,
        schema: str = "coins_sync",
        dsn: str | None = None,
        rescue_path: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(env, schema, dsn, environ)
        self.rescue_path = rescue_path or Path("state") / f"{env}.pg-rescue.jsonl"
        self._lock = StateLock(self, self._ensure_schema)
        self.key = self._lock.key
        self._schema_checked = False
        self._lineage = ""
        self._journal: PostgresJournal | None = None
        self._audit_writer: PostgresAudit | None = None

    def __repr__(self) -> str:
        return f"PostgresStateStore({self.describe()!r})"

    # schema ---------------------------------------------------------------------

    def migrate(self, conn: Any | None = None) -> list[int]:
        """Apply missing migrations in one transaction under a per-schema lock."""
        done = migrations.migrate(self, conn)
        self._schema_checked = True
        return done

    def _ensure_schema(self, conn: Any) -> None:
        if self._schema_checked:
            return
        found = migrations.applied(conn, self.schema)
        if found is None or not migrations.check_applied(self, found):
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
            applied = migrations.applied(conn, self.schema)
            if applied is None:
                return State.new()
            if not migrations.check_applied(self, applied):
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
            f"SELECT company_id, configuration, event, amount, coin_config_id, uncertain_since, "
            f"pending_amount FROM {s}.entry WHERE env = %s",
            (self.env,),
        )
        for company, configuration, event, amount, config_id, since, pending in cursor:
            key = RuleKey(company, configuration, event)
            if config_id is not None:
                entries[key] = StateEntry(
                    key, int(amount), config_id, None if pending is None else int(pending)
                )
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
        """The fence of this run's writes (raises FencedError when it holds no lock)."""
        return self._lock.params()

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0) -> Iterator[None]:
        with self._lock.hold(command, timeout):
            self._lineage = self._lock.lineage
            yield

    def force_unlock(self, lock_id: int | None = None) -> str | None:
        """End the holder's session (only lock id ``lock_id`` when given) and bump the
        epoch, so its writes are fenced out.

        Returns a description of who was unlocked, or None when nobody held the lock.
        """
        return self._lock.force_unlock(lock_id)

    # writing --------------------------------------------------------------------

    def _held_row(self, conn: Any, params: dict[str, Any]) -> tuple[str, int]:
        """The environment row, locked FOR UPDATE, if this run still holds the state
        lock (epoch unchanged); a fenced run gets FencedError and writes nothing."""
        s = self.schema
        row = conn.execute(
            f"SELECT lineage, serial FROM {s}.environment {LOCK_CHECK} FOR UPDATE", params
        ).fetchone()
        if row is None:
            raise FencedError(
                f"{self.describe()}: this run lost the state lock; nothing was written"
            )
        return str(row[0]), int(row[1])

    def write(self, state: State) -> State:
        """Persist ``state`` under the lock (fenced): only the changed entries."""
        psycopg = driver()
        params = self._params()
        conn = self._lock.conn
        s = self.schema
        try:
            with conn.transaction():
                row = self._held_row(conn, params)
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
        rows: dict[RuleKey, tuple[int, str | None, str | None, int | None]] = {}
        for key, u in state.uncertain.items():
            rows[key] = (u.amount, None, u.since or utc_now(), None)
        for key, entry in state.entries.items():
            rows[key] = (entry.amount, entry.coin_config_id, None, entry.pending)
        old: dict[RuleKey, tuple[int, str | None, str | None, int | None]] = {}
        for key, u in current.uncertain.items():
            old[key] = (u.amount, None, u.since or utc_now(), None)
        for key, entry in current.entries.items():
            old[key] = (entry.amount, entry.coin_config_id, None, entry.pending)
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
                    "coin_config_id, uncertain_since, pending_amount) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (env, company_id, configuration, event) DO UPDATE SET "
                    "amount = EXCLUDED.amount, coin_config_id = EXCLUDED.coin_config_id, "
                    "uncertain_since = EXCLUDED.uncertain_since, "
                    "pending_amount = EXCLUDED.pending_amount",
                    [(self.env, k.company_id, k.configuration, k.event, *v) for k, v in changed],
                )

    def replace_state(self, state: State) -> State:
        """``state push``: this state's lineage and entries, under the lock; the serial
        becomes the pushed one, or one more than the database's when that is higher."""
        psycopg = driver()
        params = self._params()
        conn = self._lock.conn
        s = self.schema
        try:
            with conn.transaction():
                row = self._held_row(conn, params)
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
        conn = self._lock.conn
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
                        f"WITH {fence_cte(s).strip()}, closed AS ("
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
                    f"{LOCK_CHECK} AND dirty",
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
                if record.kind != JournalKind.RESULT or record.outcome is None:
                    continue  # parse_journal gives every result an outcome
                updates = (Outcome.UPDATED, Outcome.UNVERIFIED)
                action = AuditAction.UPDATE if record.outcome in updates else AuditAction.CREATE
                unknown = (Outcome.UNKNOWN, Outcome.UNVERIFIED)
                outcome = Outcome.UNCERTAIN if record.outcome in unknown else record.outcome
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

    def read_audit(self) -> Iterator[dict[str, Any]]:
        return read_audit(self)
