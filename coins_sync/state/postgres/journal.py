"""The journal of one apply on PostgreSQL: durability per call, by group commit.

A create's intent is one committed statement before it is sent. Its result, the entry
and the audit row are one statement. A run killed at any instant leaves an open intent
(uncertain next time) or a complete record. Journal writes lock the environment row FOR
SHARE, so concurrent writers never queue on it; the first write after a bump bumps the
serial and marks the row ``dirty``, and a checkpoint bumps it again and clears the mark.
When the database is lost after the API confirmed a change, the result goes to a local
rescue file (and stderr); the run stops with exit 1 and the next run folds the file in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from coins_sync.configs.model import RuleKey
from coins_sync.errors import FencedError, StateError
from coins_sync.state.audit import AuditRecord, audit_data, current_actor
from coins_sync.state.journal import JournalRecord, Snapshot
from coins_sync.state.model import State, utc_now
from coins_sync.state.postgres.audit import write_audit
from coins_sync.state.postgres.connection import driver
from coins_sync.state.postgres.lock import HELD, fence_cte, share_fence_cte

if TYPE_CHECKING:
    from coins_sync.state.postgres.store import PostgresStateStore

log = logging.getLogger(__name__)


class _Pending:
    """One record waiting for the group commit that writes it (see PostgresJournal)."""

    __slots__ = ("done", "error", "intents", "lead", "ready", "results")

    def __init__(self, intents: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        self.intents = intents
        self.results = results
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
            fence = (fence_cte(s) if bump else share_fence_cte(s)).strip()
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
                "    uncertain_since = EXCLUDED.uncertain_since, pending_amount = NULL "
                "  WHERE EXCLUDED.coin_config_id IS NOT NULL OR e.coin_config_id IS NULL "
                "  RETURNING 1), "
                # an update whose outcome is unknown: the entry keeps its amount, marked
                f"pend AS (UPDATE {s}.entry AS p SET pending_amount = r.amount "
                "  FROM fence f, r WHERE f.dirty AND r.outcome = 'unverified' "
                "    AND p.env = f.name AND p.company_id = r.company "
                "    AND p.configuration = r.configuration AND p.event = r.event "
                "    AND p.coin_config_id IS NOT NULL "
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

    def _row(self, record: JournalRecord) -> dict[str, Any]:
        """The JSON row of ``record`` for the statement (a result's with its audit)."""
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
        return row

    def append(
        self,
        record: JournalRecord,
        book: Callable[[], None] | None = None,
        *,
        book_on_failure: bool = False,
    ) -> None:
        row = self._row(record)
        if record.kind == "intent":
            self._append(_Pending([row], []), record, book, book_on_failure)
        else:
            self._append(_Pending([], [row]), record, book, book_on_failure)

    def append_pair(
        self,
        record: JournalRecord,
        book: Callable[[], None],
        intent: JournalRecord,
        book_intent: Callable[[], None],
        *,
        book_on_failure: bool = False,
    ) -> None:
        """The result ``record`` and the next create's ``intent`` in one statement: both
        committed, or neither (then the intent's create is not sent)."""

        def booked() -> None:
            book()
            book_intent()

        pending = _Pending([self._row(intent)], [self._row(record)])
        self._append(pending, record, booked, book_on_failure, book)

    def _append(
        self,
        pending: _Pending,
        record: JournalRecord,
        book: Callable[[], None] | None,
        book_on_failure: bool,
        book_failed: Callable[[], None] | None = None,
    ) -> None:
        """Commit ``pending``; ``record`` is what to rescue when it was a result."""
        psycopg = driver()
        try:
            if self._failed:
                raise FencedError("an earlier write of this run failed")
            self._commit(pending)
        except (psycopg.Error, StateError) as e:
            self._failed = True
            on_failure = book_failed or book
            if on_failure is not None and book_on_failure:
                on_failure()
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
            "intents": json.dumps([row for p in batch for row in p.intents]),
            "results": json.dumps([row for p in batch for row in p.results], sort_keys=True),
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
                write_audit(self._store, item, message)
        if self._failed:
            return state
        s = self._store.schema
        try:
            conn = self._conn()
            row = conn.execute(
                f"UPDATE {s}.environment SET serial = serial + 1, dirty = false{HELD} "
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
