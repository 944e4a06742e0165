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
from dataclasses import replace
from pathlib import Path
from typing import TypeGuard

from coins_sync.apply.report import ApplyReport
from coins_sync.configs.model import RuleKey
from coins_sync.enkash.wire import RemoteConfig
from coins_sync.errors import CheckpointError, StateError
from coins_sync.plan.reconcile import Action, Change
from coins_sync.state.audit import AuditAction, AuditRecord, AuditSink
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

#: The key and amount of the create a worker sends next, whose intent may be journaled
#: with the current result (one write), or None.
Then = tuple[RuleKey, int] | None


#: The audit action of each PATCH a plan can send.
_PATCH_ACTION = {
    Action.UPDATE: AuditAction.UPDATE,
    Action.MOVE: AuditAction.MOVE,
    Action.RETIRE: AuditAction.RETIRE,
}


def can_pair(journal: Journal) -> TypeGuard[PairJournal]:
    """Whether ``journal`` writes a result and the next intent together. Asked of the
    method itself: an isinstance check on the protocol breaks when a tool (mutmut)
    adds members to the protocol class."""
    return callable(getattr(journal, "append_pair", None))


class Ledger:
    """What one run has done, as the state will record it, and as the report says.

    Every result goes through one of the methods below, which write the audit line and
    the journal line and then book the result (state entries, uncertain creates, open
    intents, the report) under the journal's mutex. Nothing else changes the booked
    state: callers say what happened, never how it is recorded.
    """

    def __init__(
        self,
        journal: Journal,
        state: State,
        report: ApplyReport | None = None,
        *,
        fold_every: int = 500,
        audit: AuditSink | None = None,
        rescue: Callable[[str, list[JournalRecord]], Path] | None = None,
    ) -> None:
        self.journal = journal
        self._pair = journal if can_pair(journal) else None
        self.audit = audit
        self.rescue = rescue
        self.report = report if report is not None else ApplyReport()
        self.fold_every = max(1, fold_every)
        self._entries: dict[RuleKey, StateEntry] = dict(state.entries)
        self._uncertain: dict[RuleKey, Uncertain] = dict(state.uncertain)
        self._inflight: dict[RuleKey, JournalRecord] = {}
        self.base = state
        self.audit_failures: list[StateError] = []
        self._results: list[JournalRecord] = []  # every result of this run, for a rescue
        self._since_fold = 0
        self._fold_lock = threading.Lock()

    # what the state will record ------------------------------------------------------

    def snapshot(self) -> tuple[State, list[JournalRecord]]:
        """The state as booked so far, and the intents still open (under the mutex)."""
        state = State(
            lineage=self.base.lineage,
            serial=self.base.serial,
            entries=dict(self._entries),
            uncertain=dict(self._uncertain),
        )
        return state, list(self._inflight.values())

    def maybe_fold(self) -> None:
        """Fold into the state once enough results have piled up (one fold at a time)."""
        threshold = max(self.fold_every, len(self._entries) // 4)
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

    # intents -------------------------------------------------------------------------

    def intent(self, key: RuleKey, amount: int) -> JournalRecord:
        """Journal (and fsync) the intent to send ``key``; it stays open until a result."""
        intent = JournalRecord(JournalKind.INTENT, key, amount, at=utc_now())
        self.journal.append(intent, lambda: self._open(intent))
        return intent

    def patch_intent(self, change: Change) -> JournalRecord:
        """Journal (and fsync) the intent to PATCH ``change``'s config, under the key the
        state records (a move's old key): if no result follows, the entry is marked
        ``pending`` and read back, as for a PATCH whose answer was lost."""
        key = change.moved_from or change.key
        intent = JournalRecord(JournalKind.INTENT, key, change.amount, at=utc_now())
        self.journal.append(intent, lambda: self._open(intent))
        return intent

    def not_sent(self, intent: JournalRecord) -> None:
        """Close an intent journaled ahead whose create will not be sent (the run is
        stopping, or the send-time check refused it): a ``failed`` result, which the
        fold drops, so it never becomes an uncertain create. Booked even if the write
        fails: nothing was sent, and a checkpoint of the file backend then drops the
        open intent."""
        key = intent.key
        record = JournalRecord(JournalKind.RESULT, key, intent.amount, Outcome.FAILED, at=utc_now())
        self.journal.append(record, lambda: self._close(key), book_on_failure=True)

    # results of a create -------------------------------------------------------------

    def created(
        self, key: RuleKey, amount: int, coin_config_id: str, then: Then = None
    ) -> JournalRecord | None:
        """The server created ``key`` as ``coin_config_id``. With ``then``, the next
        create's intent is journaled in the same write (see :meth:`_result`)."""
        # the audit line goes first: if we die between the two, the audit log still
        # says what the server created, and the journal's open intent makes it uncertain
        self.write_audit(
            AuditRecord(AuditAction.CREATE, key, Outcome.CREATED, None, amount, coin_config_id)
        )
        record = JournalRecord(
            JournalKind.RESULT, key, amount, Outcome.CREATED, coin_config_id, utc_now()
        )

        def book() -> None:
            self._close(key)
            self._entries[key] = StateEntry(key, amount, coin_config_id)
            self._uncertain.pop(key, None)
            self.report.created.append(key)

        return self._result(record, book, then)

    def create_unknown(self, intent: JournalRecord, reason: str) -> None:
        """A create was sent and its outcome is unknown: the key becomes uncertain."""
        key, amount = intent.key, intent.amount
        self.write_audit(
            AuditRecord(AuditAction.CREATE, key, Outcome.UNCERTAIN, None, amount, message=reason)
        )

        def book() -> None:
            self._close(key)
            self._uncertain[key] = Uncertain(key, amount, intent.at)
            self.report.uncertain.append((key, reason))

        record = JournalRecord(JournalKind.RESULT, key, amount, Outcome.UNKNOWN, at=utc_now())
        self._result(record, book)

    def create_failed(self, key: RuleKey, amount: int, reason: str) -> None:
        """The server surely did not create ``key``: its intent is closed."""
        self.write_audit(
            AuditRecord(AuditAction.CREATE, key, Outcome.FAILED, None, amount, message=reason)
        )
        self._failed_result(key, amount, reason)

    # results of an import ------------------------------------------------------------

    def imported(
        self, key: RuleKey, amount: int, coin_config_id: str, then: Then = None
    ) -> JournalRecord | None:
        """The server holds ``coin_config_id`` as ``key`` at ``amount``: it is recorded."""
        self.write_audit(
            AuditRecord(AuditAction.IMPORT, key, Outcome.IMPORTED, None, amount, coin_config_id)
        )
        record = JournalRecord(
            JournalKind.RESULT, key, amount, Outcome.IMPORTED, coin_config_id, utc_now()
        )

        def book() -> None:
            self._close(key)
            self._entries[key] = StateEntry(key, amount, coin_config_id)
            self._uncertain.pop(key, None)
            self.report.imported.append(key)

        return self._result(record, book, then)

    def import_refused(self, key: RuleKey, amount: int, coin_config_id: str, why: str) -> None:
        """The id is not ``key`` on the server (or cannot be read): nothing is recorded."""
        log.info("%s: %s", key, why)  # the report lists it once, as failed
        self.write_audit(
            AuditRecord(AuditAction.IMPORT, key, Outcome.FAILED, None, amount, coin_config_id, why)
        )
        self._failed_result(key, amount, why)

    # results of an update ------------------------------------------------------------

    def updated(
        self, change: Change, coin_config_id: str, then: Then = None
    ) -> JournalRecord | None:
        """The server confirmed the update of ``change``."""
        key, amount = change.key, change.amount
        self.write_audit(
            AuditRecord(
                AuditAction.UPDATE, key, Outcome.UPDATED, change.before, amount, coin_config_id
            )
        )
        record = JournalRecord(
            JournalKind.RESULT, key, amount, Outcome.UPDATED, coin_config_id, utc_now()
        )

        def book() -> None:
            self._close(key)
            self._entries[key] = StateEntry(key, amount, coin_config_id)
            self.report.updated.append(key)

        return self._result(record, book, then)

    def moved(
        self, change: Change, remote: RemoteConfig, then: Then = None
    ) -> JournalRecord | None:
        """The server holds ``change``'s config under its new key: the entry is re-keyed
        under the same id, and the audit record names both keys."""
        old, key, config_id = change.moved_from, change.key, remote.coin_config_id
        assert old is not None  # a move always names its old key
        self.write_audit(
            AuditRecord(
                AuditAction.MOVE,
                key,
                Outcome.MOVED,
                change.before,
                remote.amount,
                config_id,
                "already moved on the server; recorded" if change.on_server else None,
                moved_from=old,
            )
        )
        record = JournalRecord(
            JournalKind.RESULT, key, remote.amount, Outcome.MOVED, config_id, utc_now(), old
        )

        def book() -> None:
            self._close(old)
            self._entries.pop(old, None)
            self._entries[key] = StateEntry(key, remote.amount, config_id)
            self._uncertain.pop(key, None)
            self.report.moved.append(key)

        return self._result(record, book, then)

    def retired(
        self, change: Change, coin_config_id: str, then: Then = None
    ) -> JournalRecord | None:
        """The server holds ``change``'s config at amount 0: kept, marked retired."""
        key = change.key
        self.write_audit(
            AuditRecord(AuditAction.RETIRE, key, Outcome.RETIRED, change.before, 0, coin_config_id)
        )
        record = JournalRecord(
            JournalKind.RESULT, key, 0, Outcome.RETIRED, coin_config_id, utc_now()
        )

        def book() -> None:
            self._close(key)
            self._entries[key] = StateEntry(key, 0, coin_config_id, retired=True)
            self.report.retired.append(key)

        return self._result(record, book, then)

    def update_failed(self, change: Change, coin_config_id: str, reason: str) -> None:
        """The server refused the PATCH (an update, a move or a retirement): the entry
        keeps its key and amount, and the intent is closed."""
        self.write_audit(
            AuditRecord(
                _PATCH_ACTION[change.action],
                change.key,
                Outcome.FAILED,
                change.before,
                change.amount,
                coin_config_id,
                reason,
                moved_from=change.moved_from,
            )
        )
        self._failed_result(change.moved_from or change.key, change.amount, reason)

    def update_unknown(self, change: Change, coin_config_id: str, reason: str) -> None:
        """The PATCH may or may not have been applied: the entry keeps its key and amount
        and is marked ``pending``, so the next plan reads it back instead of trusting it
        (a move found done on the server is then recorded without a second PATCH)."""
        key, amount = change.moved_from or change.key, change.amount
        self.write_audit(
            AuditRecord(
                _PATCH_ACTION[change.action],
                change.key,
                Outcome.UNCERTAIN,
                change.before,
                amount,
                coin_config_id,
                reason,
                moved_from=change.moved_from,
            )
        )

        def book() -> None:
            self._close(key)
            entry = self._entries.get(key)
            if entry is not None:
                self._entries[key] = replace(entry, pending=amount)
            self.report.failed.append((change.key, f"outcome unknown: {reason}"))

        record = JournalRecord(
            JournalKind.RESULT, key, amount, Outcome.UNVERIFIED, coin_config_id, utc_now()
        )
        self._result(record, book)

    # what was not sent ---------------------------------------------------------------

    def refused(self, action: AuditAction, change: Change, reason: str) -> None:
        """The send-time check refused ``change``: nothing was sent (or journaled)."""
        log.info("%s: %s", change.key, reason)  # the report lists it once, as failed
        self.report.failed.append((change.key, reason))
        before = change.before if action == AuditAction.UPDATE else None
        self.write_audit(
            AuditRecord(
                action,
                change.key,
                Outcome.FAILED,
                before,
                change.amount,
                change.coin_config_id,
                reason,
            )
        )

    def unusable(self, key: RuleKey, reason: str) -> None:
        """A change the plan could not carry out (e.g. no id): nothing was sent."""
        self.report.failed.append((key, reason))

    # the journal -----------------------------------------------------------------------

    def _open(self, intent: JournalRecord) -> None:
        self._inflight[intent.key] = intent

    def _close(self, key: RuleKey) -> None:
        self._inflight.pop(key, None)

    def _failed_result(self, key: RuleKey, amount: int, reason: str) -> None:
        """Close ``key``'s intent with a ``failed`` result (which the fold drops)."""

        def book() -> None:
            self._close(key)
            self.report.failed.append((key, reason))

        self._result(
            JournalRecord(JournalKind.RESULT, key, amount, Outcome.FAILED, at=utc_now()), book
        )

    def _result(
        self, record: JournalRecord, book: Callable[[], None], then: Then = None
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
        pair.append_pair(record, booked, intent, lambda: self._open(intent), book_on_failure=True)
        return intent

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

    def save_unfolded(self, error: BaseException | None = None) -> None:
        """The final fold failed with ``error``: list every confirmed id the state may
        lack, and try the rescue file. A :class:`CheckpointError` knows exactly which
        results are not in the state and where they are kept instead."""
        report = self.report
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
        records = [*self._results, *self._inflight.values()]
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
