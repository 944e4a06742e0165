"""The bookkeeping of one apply: each result into the journal and the audit log, and the
folds that turn the results into the state.

What is promised:

* A result is booked (state entries, uncertain creates, the report) under the journal's
  mutex, and booked even when its journal line could not be written, so a create the
  server confirmed is never forgotten by this process.
* A failed audit write is reported at the end and never stops the journal from
  recording what the server did.
* During the run, results are folded into the state once enough have piled up: at
  least ``fold_every`` and at least a quarter of the state, so total work stays linear.
* When the final fold fails, every confirmed id is listed in the report and the results
  go to a rescue file when the backend keeps one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard

from coins_sync.apply.report import ApplyReport
from coins_sync.configs.model import RuleKey
from coins_sync.errors import CheckpointError, StateError
from coins_sync.state.audit import AuditRecord, AuditSink
from coins_sync.state.journal import (
    CONFIRMED,
    Journal,
    JournalKind,
    JournalRecord,
    Outcome,
    PairJournal,
)
from coins_sync.state.model import State, StateEntry, Uncertain, utc_now

log = logging.getLogger(__name__)


def can_pair(journal: Journal) -> TypeGuard[PairJournal]:
    """Whether ``journal`` writes a result and the next intent together. Asked of the
    method itself: an isinstance check on the protocol breaks when a tool (mutmut)
    adds members to the protocol class."""
    return callable(getattr(journal, "append_pair", None))


class Ledger:
    """What one run has done, as the state will record it.

    ``entries``, ``uncertain`` and ``inflight`` start from ``state`` and are changed only
    by the ``book`` callbacks of :meth:`record` and :meth:`intent`, which run under the
    journal's mutex.
    """

    def __init__(
        self,
        journal: Journal,
        state: State,
        *,
        fold_every: int = 500,
        audit: AuditSink | None = None,
        rescue: Callable[[str, list[JournalRecord]], Path] | None = None,
    ) -> None:
        self.journal = journal
        self._pair = journal if can_pair(journal) else None
        self.audit = audit
        self.rescue = rescue
        self.fold_every = max(1, fold_every)
        self.entries: dict[RuleKey, StateEntry] = dict(state.entries)
        self.uncertain: dict[RuleKey, Uncertain] = dict(state.uncertain)
        self.inflight: dict[RuleKey, JournalRecord] = {}
        self.base = state
        self.audit_failures: list[StateError] = []
        self._results: list[JournalRecord] = []  # every result of this run, for a rescue
        self._since_fold = 0
        self._fold_lock = threading.Lock()

    def snapshot(self) -> tuple[State, list[JournalRecord]]:
        """The state as booked so far, and the intents still open (under the mutex)."""
        state = State(
            lineage=self.base.lineage,
            serial=self.base.serial,
            entries=dict(self.entries),
            uncertain=dict(self.uncertain),
        )
        return state, list(self.inflight.values())

    def maybe_fold(self) -> None:
        """Fold into the state once enough results have piled up (one fold at a time)."""
        threshold = max(self.fold_every, len(self.entries) // 4)
        if self._since_fold < threshold or not self._fold_lock.acquire(blocking=False):
            return
        try:
            self.base = self.journal.checkpoint(self.snapshot)
            self._since_fold = 0
        finally:
            self._fold_lock.release()

    def fold(self) -> State:
        """The final fold of every result into the state."""
        self.base = self.journal.checkpoint(self.snapshot)
        return self.base

    def intent(self, key: RuleKey, amount: int) -> JournalRecord:
        """Journal (and fsync) the intent to send ``key``; it stays open until a result."""
        intent = JournalRecord(JournalKind.INTENT, key, amount, at=utc_now())
        self.journal.append(intent, lambda: self.inflight.__setitem__(key, intent))
        return intent

    def record(
        self,
        record: JournalRecord,
        book: Callable[[], None],
        then: tuple[RuleKey, int] | None = None,
    ) -> JournalRecord | None:
        """Journal a result; ``book`` runs under the mutex even if the write fails.

        With ``then`` (the key and amount of the create this worker sends next), that
        create's intent is journaled in the same write when the journal can, and
        returned: the caller must then send that create, or close the intent with
        :meth:`not_sent`. None when no intent was written."""

        def booked() -> None:
            book()
            self._results.append(record)
            self._since_fold += 1

        pair = self._pair
        if then is None or pair is None:
            self.journal.append(record, booked, book_on_failure=True)
            return None
        key, amount = then
        intent = JournalRecord(JournalKind.INTENT, key, amount, at=utc_now())
        pair.append_pair(
            record,
            booked,
            intent,
            lambda: self.inflight.__setitem__(key, intent),
            book_on_failure=True,
        )
        return intent

    def not_sent(self, intent: JournalRecord) -> None:
        """Close an intent journaled ahead whose create will not be sent (the run is
        stopping): a ``failed`` result, which the fold drops, so it never becomes an
        uncertain create. Booked even if the write fails: nothing was sent, and a
        checkpoint of the file backend then drops the open intent."""
        key = intent.key
        record = JournalRecord(JournalKind.RESULT, key, intent.amount, Outcome.FAILED, at=utc_now())

        def closed() -> None:
            self.inflight.pop(key, None)

        self.journal.append(record, closed, book_on_failure=True)

    def write_audit(self, item: AuditRecord) -> None:
        """Write an audit line; a failure is reported at the end, never allowed to stop
        the journal from recording what the server did."""
        if self.audit is None:
            return
        try:
            self.audit.record(item)
        except StateError as e:
            log.error("%s", e)
            self.audit_failures.append(e)

    def save_unfolded(self, report: ApplyReport, error: BaseException | None = None) -> None:
        """The final fold failed with ``error``: list every confirmed id the state may
        lack, and try the rescue file. A :class:`CheckpointError` knows exactly which
        results are not in the state and where they are kept instead."""
        if isinstance(error, CheckpointError):
            report.unrecorded = list(error.unrecorded)
            report.rescue = error.kept
            return
        report.unrecorded = [
            (record.key, record.coin_config_id)
            for record in self._results
            if record.coin_config_id and record.outcome in CONFIRMED
        ]
        if self.rescue is None:
            return
        records = [*self._results, *self.inflight.values()]
        if not records:
            return
        try:
            report.rescue = self.rescue(self.base.lineage, records)
        except StateError as e:  # it names the file and the OS error
            log.error("%s", e)

    def close(self) -> None:
        """Close the journal, then the audit log, whatever the first raised."""
        try:
            self.journal.close()
        finally:
            if self.audit is not None:
                self.audit.close()
