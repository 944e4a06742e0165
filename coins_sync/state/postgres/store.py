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
from coins_sync.inputs import read_input
from coins_sync.state.audit import AuditAction, AuditRecord, current_actor, current_commit
from coins_sync.state.fence import sort_fenced
from coins_sync.state.journal import JournalKind, Outcome, fold, parse_journal
from coins_sync.state.model import State, StateEntry, Uncertain, utc_now
from coins_sync.state.postgres import migrations
from coins_sync.state.postgres.audit import PostgresAudit, read_audit
from coins_sync.state.postgres.connection import Database, driver, storable
from coins_sync.state.postgres.journal import PostgresJournal
from coins_sync.state.postgres.lock import StateLock, fence, lock_check

SET_SERIAL = "UPDATE {s}.environment SET lineage = %s, serial = %s WHERE name = %s"

#: Recovery: open intents of a run that died become uncertain entries (fenced).
ABANDON = (
    "WITH {fence}, closed AS ("
    "  UPDATE {s}.operation SET outcome = 'abandoned', done_at = now() "
    "  WHERE env = %(env)s AND outcome IS NULL "
    "    AND EXISTS (SELECT 1 FROM fence) "
    "  RETURNING company_id, configuration, event, amount, intent_at), "
    # a PATCH sent and never answered: its entry is marked pending
    "pend AS (UPDATE {s}.entry AS p SET pending_amount = c.amount "
    "  FROM closed c WHERE p.env = %(env)s AND p.company_id = c.company_id "
    "    AND p.configuration = c.configuration AND p.event = c.event "
    "    AND p.coin_config_id IS NOT NULL AND p.pending_amount IS NULL) "
    "INSERT INTO {s}.entry (env, company_id, configuration, event, amount, "
    "  coin_config_id, uncertain_since) "
    "SELECT %(env)s, company_id, configuration, event, amount, NULL, intent_at "
    "FROM closed ON CONFLICT DO NOTHING "
    "RETURNING (SELECT count(*) FROM fence)"
)

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
        self._audit: PostgresAudit | None = None

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
        except psycopg.Error as e:
            raise self.error("cannot read the state", e) from e
        finally:
            conn.close()
        return self._with_rescue(state)

    def _with_rescue(self, state: State) -> State:
        """``state`` with the local rescue file folded in, in memory only (fenced:
        state/fence.py), so a plan shows rescued creates as recorded. The file stays
        until the next apply (or state rm/import) folds it into the database."""
        try:
            raw = read_input(self.rescue_path)
        except FileNotFoundError:
            return state
        except OSError as e:
            log.warning("%s: cannot read the rescue file: %s", self.rescue_path, e)
            return state
        try:
            replay = parse_journal(raw, state.lineage or self._lineage, str(self.rescue_path))
        except StateError as e:  # another lineage: the next apply refuses it, loudly
            log.warning("%s", e)
            return state
        fenced = sort_fenced(state, [r for r in replay.records if r.kind == JournalKind.RESULT])
        for message in (*replay.damaged, *fenced.notes(str(self.rescue_path), state.serial)):
            log.warning("%s", message)
        return fold(state, fenced.fold)

    def _read_in(self, conn: Any) -> State:
        sql = self.sql
        row = conn.execute(
            sql("SELECT lineage, serial FROM {s}.environment WHERE name = %s"), (self.env,)
        ).fetchone()
        if row is None or not row[0]:
            return State.new()
        lineage, serial = str(row[0]), int(row[1])
        entries: dict[RuleKey, StateEntry] = {}
        uncertain: dict[RuleKey, Uncertain] = {}
        cursor = conn.execute(
            sql(
                "SELECT company_id, configuration, event, amount, coin_config_id, "
                "uncertain_since, pending_amount, retired FROM {s}.entry WHERE env = %s"
            ),
            (self.env,),
        )
        for company, configuration, event, amount, config_id, since, pending, retired in cursor:
            key = RuleKey(company, configuration, event)
            if config_id is not None:
                entries[key] = StateEntry(
                    key,
                    int(amount),
                    config_id,
                    None if pending is None else int(pending),
                    bool(retired),
                )
            else:
                uncertain[key] = Uncertain(key, int(amount), since)
        cursor = conn.execute(
            sql(
                "SELECT company_id, configuration, event, amount, intent_at "
                "FROM {s}.operation WHERE env = %s AND outcome IS NULL"
            ),
            (self.env,),
        )
        for company, configuration, event, amount, since in cursor:
            key = RuleKey(company, configuration, event)
            entry = entries.get(key)
            if entry is None:  # a create sent and never answered
                uncertain[key] = Uncertain(key, int(amount), since, open=True)
            elif entry.pending is None:  # a PATCH sent and never answered
                entries[key] = replace(entry, pending=int(amount))
        return State(lineage=lineage, serial=serial, entries=entries, uncertain=uncertain)

    # locking --------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0) -> Iterator[None]:
        with self._lock.hold(command, timeout):
            self._lineage = self._lock.lineage
            yield

    def pending_files(self) -> list[Path]:
        """The local rescue file, when there is one: its results are not in the database."""
        return [self.rescue_path] if self.rescue_path.is_file() else []

    def lock_holder(self) -> str | None:
        """Who holds the state lock now, without taking it; None when nobody does."""
        return self._lock.current_holder()

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
        row = conn.execute(
            self.sql(
                "SELECT lineage, serial FROM {s}.environment{lock_check} FOR UPDATE",
                lock_check=lock_check(self),
            ),
            params,
        ).fetchone()
        if row is None:
            raise self._fenced("nothing was written")
        return str(row[0]), int(row[1])

    def write(self, state: State) -> State:
        """Persist ``state`` under the lock (fenced): only the changed entries."""
        psycopg = driver()
        params = self._lock.params()
        conn = self._lock.conn
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
                    self.sql(SET_SERIAL),
                    (new_lineage, new_serial, self.env),
                )
        except psycopg.Error as e:
            raise self.error("cannot write the state", e) from e
        self._lineage = new_lineage
        return replace(state, lineage=new_lineage, serial=new_serial, exists=True)

    def _replace_entries(self, conn: Any, current: State, state: State) -> None:
        sql = self.sql
        rows: dict[RuleKey, tuple[int, str | None, str | None, int | None, bool]] = {}
        for key, u in state.uncertain.items():
            rows[key] = (u.amount, None, u.since or utc_now(), None, False)
        for key, entry in state.entries.items():
            rows[key] = (entry.amount, entry.coin_config_id, None, entry.pending, entry.retired)
        old: dict[RuleKey, tuple[int, str | None, str | None, int | None, bool]] = {}
        for key, u in current.uncertain.items():
            old[key] = (u.amount, None, u.since or utc_now(), None, False)
        for key, entry in current.entries.items():
            old[key] = (entry.amount, entry.coin_config_id, None, entry.pending, entry.retired)
        gone = [k for k in old if k not in rows]
        changed = [(k, v) for k, v in rows.items() if old.get(k) != v]
        with conn.cursor() as cur:
            if gone:
                cur.executemany(
                    sql(
                        "DELETE FROM {s}.entry WHERE env = %s AND company_id = %s "
                        "AND configuration = %s AND event = %s"
                    ),
                    [(self.env, k.company_id, k.configuration, k.event) for k in gone],
                )
            if changed:
                cur.executemany(
                    sql(
                        "INSERT INTO {s}.entry (env, company_id, configuration, event, amount, "
                        "coin_config_id, uncertain_since, pending_amount, retired) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (env, company_id, configuration, event) DO UPDATE SET "
                        "amount = EXCLUDED.amount, coin_config_id = EXCLUDED.coin_config_id, "
                        "uncertain_since = EXCLUDED.uncertain_since, "
                        "pending_amount = EXCLUDED.pending_amount, retired = EXCLUDED.retired"
                    ),
                    [
                        storable([self.env, k.company_id, k.configuration, k.event, *v])
                        for k, v in changed
                    ],
                )

    def replace_state(self, state: State) -> State:
        """``state push``: this state's lineage and entries, under the lock; the serial
        becomes the pushed one, or one more than the database's when that is higher."""
        psycopg = driver()
        params = self._lock.params()
        conn = self._lock.conn
        try:
            with conn.transaction():
                row = self._held_row(conn, params)
                current = self._read_in(conn) if row[0] else State.new()
                serial = max(state.serial, int(row[1]) + 1)
                self._replace_entries(conn, current, state)
                conn.execute(
                    self.sql(SET_SERIAL),
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
        """Fold a local rescue file, then turn open intents into uncertain entries
        (fenced: a run that no longer holds the lock gets FencedError)."""
        psycopg = driver()
        params = self._lock.params()
        conn = self._lock.conn
        sql = self.sql
        messages: list[str] = []
        open_intents = sql("SELECT count(*) FROM {s}.operation WHERE env = %s AND outcome IS NULL")
        try:
            stored = self._read_in(conn)
            if self.rescue_path.exists():
                messages += self._fold_rescue(stored)
            with conn.transaction():
                open_row = conn.execute(open_intents, (self.env,)).fetchone()
                if open_row is not None and open_row[0]:
                    row = conn.execute(sql(ABANDON, fence=fence(self, True)), params).fetchall()
                    count = conn.execute(open_intents, (self.env,)).fetchone()
                    if count is not None and count[0]:
                        raise self._fenced("nothing was recovered")
                    if row:
                        messages.append(
                            f"{len(row)} create(s) left in flight by an earlier run are "
                            "now uncertain"
                        )
                # an earlier run (or the rescue fold above) wrote after the last bump
                bumped = conn.execute(
                    sql(
                        "UPDATE {s}.environment SET serial = serial + dirty::int, "
                        "dirty = false{lock_check} RETURNING 1",
                        lock_check=lock_check(self),
                    ),
                    params,
                ).fetchone()
                if bumped is None:
                    raise self._fenced("nothing was recovered")
            state = self._read_in(conn)
        except psycopg.Error as e:
            raise self.error("cannot recover the state", e) from e
        for message in messages:
            log.warning("%s", message)
        return state, tuple(messages)

    def _fenced(self, what: str) -> FencedError:
        return FencedError(
            f"{self.describe()}: this run lost the state lock ({self._lock.lost()}); {what}"
        )

    def _fold_rescue(self, stored: State) -> list[str]:
        path = self.rescue_path
        try:
            raw = read_input(path)
        except OSError as e:
            raise StateError(f"{path}: cannot read the rescue file: {e.strerror or e}") from e
        lineage = stored.lineage or self._lineage
        replay = parse_journal(raw, lineage, str(path))
        fenced = sort_fenced(stored, replay.records)
        journal = PostgresJournal(self, self._lock, lineage, None)
        audit = self._audit or self.audit_log(self.environ, route=False)
        note = "recorded from the rescue file after a lost database connection"
        try:
            for record in fenced.fold:
                if record.kind != JournalKind.RESULT or record.outcome is None:
                    continue  # parse_journal gives every result an outcome
                updates = (Outcome.UPDATED, Outcome.UNVERIFIED)
                action = AuditAction.UPDATE if record.outcome in updates else AuditAction.CREATE
                if record.outcome in (Outcome.MOVED, Outcome.RETIRED):
                    moved = record.outcome == Outcome.MOVED
                    action = AuditAction.MOVE if moved else AuditAction.RETIRE
                unknown = (Outcome.UNKNOWN, Outcome.UNVERIFIED)
                outcome = Outcome.UNCERTAIN if record.outcome in unknown else record.outcome
                item = AuditRecord(
                    action,
                    record.key,
                    outcome,
                    None,
                    record.amount,
                    record.coin_config_id,
                    moved_from=record.moved_from,
                )
                journal.stash(record.key, audit.data(item, note))
                journal.append(record)
        finally:
            journal.close()
        notes = fenced.notes(str(path), stored.serial)
        if fenced.stale:  # kept for a person, never deleted
            aside = path.with_name(f"{path.name}.stale-{int(time.time())}")
            os.replace(path, aside)
            notes.append(f"stale {path.name} kept as {aside}")
        else:
            aside = path.with_name(f"{path.name}.folded-{int(time.time())}")
            os.replace(path, aside)
            aside.unlink()
        return [
            *replay.damaged,
            f"folded {len(fenced.fold)} of {len(replay.records)} record(s) from the rescue "
            f"file {path}",
            *notes,
        ]

    def journal(self, state: State) -> PostgresJournal:
        """The journal of one apply; this store's audit records go through it."""
        self._lineage = state.lineage
        journal = PostgresJournal(
            self, self._lock, state.lineage, self.rescue_path, serial=state.serial
        )
        self._journal = journal
        if self._audit is not None:
            self._audit.route = journal
        return journal

    # audit ----------------------------------------------------------------------

    def audit_log(self, environ: Mapping[str, str], *, route: bool = True) -> PostgresAudit:
        """The audit log, fenced by this store's lock; during an apply (``route``) its
        records go through the apply's journal."""
        audit = PostgresAudit(
            self, self._lock, self._ensure_schema, current_actor(environ), current_commit(environ)
        )
        if route:
            self._audit = audit
            if self._journal is not None and not self._journal.closed:
                audit.route = self._journal
        return audit

    def read_audit(self) -> Iterator[dict[str, Any]]:
        return read_audit(self)
