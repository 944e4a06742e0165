"""The journal of one apply on PostgreSQL: durability per call, by group commit.

A create's intent is one committed statement before it is sent. Its result, the entry
and the audit row are one statement. A run killed at any instant leaves an open intent
(uncertain next time) or a complete record. Journal writes lock the environment row FOR
SHARE, so concurrent writers never queue on it; the first write after a bump bumps the
serial and marks the row ``dirty``, and a checkpoint bumps it again and clears the mark.
When the database is lost after the API confirmed a change, the result goes to a local
rescue file (and stderr); the run stops with exit 1, its checkpoint names every result
that is only in the rescue file (:class:`CheckpointError`), and the next run folds the
file in.

This module knows the connection and the lock, not the store or the audit writer: an
audit record reaches it as a ready JSON object (:meth:`PostgresJournal.stash`,
:meth:`PostgresJournal.append_audit`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from coins_sync.configs.model import RuleKey
from coins_sync.errors import CheckpointError, FencedError, StateError
from coins_sync.state.groupcommit import GroupCommit
from coins_sync.state.journal import CONFIRMED, JournalRecord, Outcome, Snapshot
from coins_sync.state.model import State, utc_now
from coins_sync.state.postgres.connection import Database, driver, storable
from coins_sync.state.postgres.lock import StateLock, fence, held_by

log = logging.getLogger(__name__)

#: The one statement of a group commit (``{fence}`` is the lock module's ``FENCE`` or
#: ``SHARE_FENCE``, ``{s}`` the schema). It returns (fence rows, dirty): (1, false)
#: wrote nothing to the state tables (retry with FENCE); (0, _) means fenced.
WRITE = """WITH {fence},
i AS (SELECT * FROM jsonb_to_recordset(%(intents)s::jsonb) AS i(company text,
  configuration text, event text, amount bigint, at text)),
r AS (SELECT * FROM jsonb_to_recordset(%(results)s::jsonb) AS r(company text,
  configuration text, event text, amount bigint, outcome text,
  config_id text, since text, write_entry boolean, op_outcome text, retired boolean,
  from_company text, from_configuration text, from_event text)),
ins AS (INSERT INTO {s}.operation (env, run_id, company_id, configuration,
  event, amount, intent_at) SELECT f.name, %(run)s, i.company,
  i.configuration, i.event, i.amount, i.at FROM fence f, i WHERE f.dirty
  RETURNING id),
op AS (UPDATE {s}.operation AS o SET outcome = r.op_outcome,
  coin_config_id = r.config_id, done_at = now() FROM r
  WHERE o.env = %(env)s AND o.company_id = coalesce(r.from_company, r.company)
    AND o.configuration = coalesce(r.from_configuration, r.configuration)
    AND o.event = coalesce(r.from_event, r.event)
    AND o.outcome IS NULL AND EXISTS (SELECT 1 FROM fence WHERE dirty)
  RETURNING o.id),
mv AS (DELETE FROM {s}.entry AS d USING fence f, r WHERE f.dirty
  AND r.write_entry AND r.from_company IS NOT NULL AND d.env = f.name
  AND d.company_id = r.from_company AND d.configuration = r.from_configuration
  AND d.event = r.from_event AND d.coin_config_id = r.config_id RETURNING 1),
ent AS (INSERT INTO {s}.entry AS e (env, company_id, configuration, event,
  amount, coin_config_id, uncertain_since, retired)
  SELECT f.name, r.company, r.configuration, r.event, r.amount,
    r.config_id, r.since, coalesce(r.retired, false) FROM fence f, r
  WHERE f.dirty AND r.write_entry
  ON CONFLICT (env, company_id, configuration, event) DO UPDATE SET
    amount = EXCLUDED.amount, coin_config_id = EXCLUDED.coin_config_id,
    uncertain_since = EXCLUDED.uncertain_since, pending_amount = NULL,
    retired = EXCLUDED.retired
  WHERE EXCLUDED.coin_config_id IS NOT NULL OR e.coin_config_id IS NULL
  RETURNING 1),
pend AS (UPDATE {s}.entry AS p SET pending_amount = r.amount
  FROM fence f, r WHERE f.dirty AND r.outcome = 'unverified'
    AND p.env = f.name AND p.company_id = r.company
    AND p.configuration = r.configuration AND p.event = r.event
    AND p.coin_config_id IS NOT NULL
  RETURNING 1),
aud AS (INSERT INTO {s}.audit (env, run_id, record)
  SELECT f.name, %(run)s, a.value FROM fence f,
    jsonb_array_elements(%(audits)s::jsonb) AS a
  WHERE f.dirty OR NOT %(state)s RETURNING 1)
SELECT count(*), coalesce(bool_and(dirty), false) FROM fence"""

#: The checkpoint: the serial bumped if this run wrote since the last bump, the row
#: clean again; no row back means this run no longer holds the lock.
CHECKPOINT = (
    "UPDATE {s}.environment SET serial = serial + dirty::int, dirty = false{held} "
    "RETURNING lineage, serial"
)


#: How a result closes its intent in the ``operation`` table (its CHECK knows five).
_OPERATION_OUTCOME: dict[str, str] = {
    Outcome.IMPORTED: "created",
    Outcome.MOVED: "updated",
    Outcome.RETIRED: "updated",
    Outcome.UNVERIFIED: "unknown",
}


class _Pending:
    """One record waiting for the group commit that writes it (see PostgresJournal)."""

    __slots__ = ("audits", "intents", "results")

    def __init__(
        self,
        intents: list[dict[str, Any]],
        results: list[dict[str, Any]],
        audits: list[dict[str, Any]],
    ) -> None:
        self.intents = intents
        self.results = results
        self.audits = audits


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

    def __init__(
        self,
        db: Database,
        lock: StateLock,
        lineage: str,
        rescue_path: Path | None,
        *,
        serial: int | None = None,
    ) -> None:
        """``rescue_path`` None: results the database did not take are not kept aside
        (the fold of a rescue file, whose records are in that file already). ``serial``:
        the state's serial when the run began, tracked as this run writes: the fence of
        every line it puts in the rescue file (state/fence.py)."""
        self._db = db
        self._lock = lock
        self._lineage = lineage
        self._rescue_path = rescue_path
        self._serial = serial
        self._connection: Any = None
        self._closed = False
        self._mutex = threading.Lock()
        self._group = GroupCommit(self._write)
        self._audits: dict[RuleKey, dict[str, Any]] = {}
        self._params = lock.params()
        self._failed = False
        self._rescued: list[JournalRecord] = []  # results only in the rescue file
        self._kept = True  # False once writing the rescue file failed
        self._sql = {bump: db.sql(WRITE, fence=fence(db, bump)) for bump in (False, True)}
        self._rendered: dict[bool, bytes] = {}  # _sql for the connection, rendered once

    @property
    def closed(self) -> bool:
        return self._closed

    def _conn(self) -> Any:
        with self._mutex:
            if self._closed:
                raise FencedError(f"{self._db.describe()}: the journal is closed")
            if self._connection is None:
                conn = self._db.connect(purpose=f"apply {self._db.env}", long_lived=True)
                self._rendered = {bump: sql.as_bytes(conn) for bump, sql in self._sql.items()}
                self._connection = conn
            return self._connection

    def stash(self, key: RuleKey, audit: dict[str, Any]) -> None:
        """An audit record to write in the same statement as ``key``'s result."""
        with self._mutex:
            self._audits[key] = audit

    def append_audit(self, audit: dict[str, Any]) -> None:
        """An audit record with no result to go with it: committed, fenced like every
        write, before this returns. A failure raises and leaves the journal usable."""
        psycopg = driver()
        try:
            if self._failed:
                raise FencedError(f"{self._db.describe()}: an earlier write of this run failed")
            self._commit(_Pending([], [], [storable(audit)]))
        except psycopg.Error as e:
            raise self._db.error(self._failure(e, "recording an audit record"), e) from e

    def _row(self, record: JournalRecord, audits: list[dict[str, Any]]) -> dict[str, Any]:
        """The JSON row of ``record`` for the statement; a result's stashed audit record
        goes to ``audits``."""
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
            return row
        confirmed = record.outcome in CONFIRMED
        moved = record.moved_from
        if moved is not None:  # a move: its intent and the old entry are under this key
            row.update(
                from_company=moved.company_id,
                from_configuration=moved.configuration,
                from_event=moved.event,
            )
        row.update(
            outcome="created" if record.outcome == "imported" else record.outcome,
            op_outcome=_OPERATION_OUTCOME.get(str(record.outcome), str(record.outcome)),
            retired=record.outcome == Outcome.RETIRED,
            config_id=record.coin_config_id if confirmed else None,
            since=None if confirmed else at,
            write_entry=(confirmed and bool(record.coin_config_id)) or record.outcome == "unknown",
        )
        with self._mutex:
            audit = self._audits.pop(key, None)
        if audit is not None:
            audits.append(storable(audit))
        return row

    def append(
        self,
        record: JournalRecord,
        book: Callable[[], None] | None = None,
        *,
        book_on_failure: bool = False,
    ) -> None:
        audits: list[dict[str, Any]] = []
        row = self._row(record, audits)
        if record.kind == "intent":
            self._append(_Pending([row], [], audits), record, book, book_on_failure)
        else:
            self._append(_Pending([], [row], audits), record, book, book_on_failure)

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

        audits: list[dict[str, Any]] = []
        pending = _Pending([self._row(intent, audits)], [self._row(record, audits)], audits)
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
                raise FencedError(f"{self._db.describe()}: an earlier write of this run failed")
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
            what = "an intent" if record.kind == "intent" else "a result"
            raise self._db.error(self._failure(e, f"recording {what}"), e) from e
        if book is not None:
            book()

    def _commit(self, item: _Pending) -> None:
        """Return once ``item`` is committed (raise what its write raised); see
        :class:`~coins_sync.state.groupcommit.GroupCommit`."""
        self._group.commit(item)

    def _write(self, batch: list[_Pending]) -> None:
        """One fenced statement (two after a bump) that commits every record of ``batch``."""
        state = any(p.intents or p.results for p in batch)
        params = {
            **self._params,
            "intents": json.dumps([row for p in batch for row in p.intents]),
            "results": json.dumps([row for p in batch for row in p.results], sort_keys=True),
            "audits": json.dumps([row for p in batch for row in p.audits], sort_keys=True),
            "state": state,
        }
        conn = self._conn()
        row = conn.execute(self._rendered[False], params, prepare=True).fetchone()
        if state and row and row[0] and not row[1]:  # clean: the first write since a bump
            row = conn.execute(self._rendered[True], params, prepare=True).fetchone()
            if row and row[0] and self._serial is not None:
                self._serial += 1  # that write bumped the serial
        if not row or not row[0]:
            raise FencedError(
                f"{self._db.describe()}: this run lost the state lock ({self._lock.lost()}); "
                "it stops writing and sending"
            )

    @staticmethod
    def _failure(e: BaseException, doing: str) -> str:
        """What went wrong, for a database error: a lost connection is said so, and so
        is a refusal of the database (nothing is blamed on the network then)."""
        psycopg = driver()
        if isinstance(e, psycopg.OperationalError) and not isinstance(
            e, psycopg.errors.QueryCanceled
        ):
            return f"lost the database while {doing}"
        return f"the database refused {doing}"

    def _rescue_result(self, record: JournalRecord) -> None:
        """Keep a result the database did not take: the rescue file and stderr."""
        path = self._rescue_path
        if path is None:
            return
        line = record.to_line(self._lineage, self._serial)
        with self._mutex:
            self._rescued.append(record)
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
                self._kept = False
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
        since the last bump) and read back.

        Raises :class:`CheckpointError` when this run no longer holds the lock or the
        database: it names every result that is only in the rescue file (none when every
        result was committed before)."""
        state, _ = snapshot()
        with self._mutex:
            leftovers = list(self._audits.values())  # no result followed (never expected)
            self._audits.clear()
        for audit in leftovers:
            with contextlib.suppress(StateError):
                self.append_audit(audit)
        if self._failed:
            self._raise_unrecorded()
            return state  # every result was committed; the error that stopped the run says why
        psycopg = driver()
        try:
            row = (
                self._conn()
                .execute(self._db.sql(CHECKPOINT, held=held_by(self._db)), self._params)
                .fetchone()
            )
        except (psycopg.Error, StateError) as e:
            raise CheckpointError(
                f"{self._db.describe()}: {self._failure(e, 'making the checkpoint')} "
                f"({self._db.detail(e)}); every result of this run was recorded "
                "before it, and the next run brings the serial up to date"
            ) from e
        if row is None:
            raise CheckpointError(
                f"{self._db.describe()}: this run lost the state lock before its "
                f"checkpoint ({self._lock.lost()}); every result of this run was recorded "
                "before it, and the next run brings the serial up to date"
            )
        self._serial = int(row[1])
        return replace(state, lineage=str(row[0]), serial=int(row[1]), exists=True)

    def _raise_unrecorded(self) -> None:
        """The CheckpointError of a run whose writes failed, if any result the server
        answered is only in the rescue file (or nowhere)."""
        with self._mutex:
            kept = [r for r in self._rescued if r.outcome != Outcome.FAILED]
            written = self._kept
        if not kept:
            return
        path = self._rescue_path
        confirmed = [
            (r.key, r.coin_config_id) for r in kept if r.outcome in CONFIRMED and r.coin_config_id
        ]
        where = (
            f"only in the rescue file {path}; the next run that takes the state lock "
            "here (apply, state rm, state import) folds it in"
            if written
            else f"not even in the rescue file {path}, which could not be written: "
            "record them by hand (`coins-sync state import KEY ID`)"
        )
        ids = "; ".join(f"{key} as {config_id}" for key, config_id in confirmed[:20])
        more = f" and {len(confirmed) - 20} more" if len(confirmed) > 20 else ""
        listed = f": {ids}{more}" if ids else ""
        raise CheckpointError(
            f"{self._db.describe()}: {len(kept)} result(s) the server answered are not in "
            f"the database, {where}{listed}",
            confirmed,
            path if written else None,
        )

    def close(self) -> None:
        with self._mutex:
            conn, self._connection, self._closed = self._connection, None, True
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
