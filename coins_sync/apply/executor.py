"""The apply executor: send a plan's creates and updates, and never lose or repeat one.

The coins API has no idempotency key, no list and no delete, so the state is the only
memory of what exists. Every path here may be cut off at any instant; what is promised:

* Before a create is sent, an *intent* record is appended to the journal and fsynced.
  When the answer arrives, a *result* record follows. So after a crash every create is
  either confirmed (an entry), known not to have happened, or *uncertain* — never
  silently re-sent, because an intent without a result becomes uncertain.
* Results are folded into the state atomically at the end, and during long runs once
  enough results have piled up (a share of the state, so total work stays linear); the
  bookkeeping is :class:`~coins_sync.apply.ledger.Ledger`'s.
* An interrupt (SIGINT) stops new sends; requests in flight finish and are recorded,
  and the client stops waiting to retry (``on_stop``), so a stop is never held up by
  backoff sleeps.
* Any failure of a worker, of a journal write or of a checkpoint stops new sends too,
  and :meth:`Executor.finish` raises :class:`ApplyStoppedError` after folding what was
  done. The workers are always stopped and joined before the caller goes on, whatever
  raised (see :func:`~coins_sync.apply.run.wait` and :meth:`Executor.halt`).
* Right before a create or update is sent, the key must still be in the configs with
  that amount (``desired``); anything else is refused and nothing is sent.
* Updates (PATCH) are idempotent, so they need no intent. An update whose outcome is
  unknown marks its entry ``pending`` (an "unverified" result): the next plan reads that
  id back instead of trusting the amount in state, so drift cannot hide behind it.
* An import (a rule with a ``coinConfigId`` not yet in the state) journals an intent,
  GETs the id and records it only when the server's companyId, configuration and event
  are the rule's, with the server's amount; a different amount is then PATCHed in the
  same run. A mismatch or a 404 records nothing and sends no create for the key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from coins_sync.apply.ledger import Ledger
from coins_sync.apply.report import ApplyReport, stopped_error
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import (
    ApiError,
    AuthError,
    OutcomeUnknownError,
    StateError,
    UnreachableError,
)
from coins_sync.plan import Action, Change, Plan
from coins_sync.rules import RuleKey
from coins_sync.state.audit import AuditAction, AuditRecord, AuditSink
from coins_sync.state.journal import Journal, JournalKind, JournalRecord, Outcome
from coins_sync.state.model import State, StateEntry, Uncertain, utc_now

log = logging.getLogger(__name__)


class CoinsApi(Protocol):
    """The calls apply needs; :class:`coins_sync.enkash.CoinsClient` provides them."""

    def create(self, key: RuleKey, amount: int) -> RemoteConfig: ...

    def get(self, coin_config_id: str) -> RemoteConfig: ...

    def update(
        self, coin_config_id: str, amount: int, *, key: RuleKey | None = None
    ) -> RemoteConfig: ...


def to_send(plan: Plan, retry_uncertain: bool = False) -> list[Change]:
    """The changes apply sends: creates and updates, and with ``retry_uncertain`` the
    uncertain creates whose rule is still in the configs (never one that was removed)."""
    return [
        change
        for change in plan.changes
        if change.action in (Action.CREATE, Action.IMPORT, Action.UPDATE)
        or (retry_uncertain and change.action is Action.UNCERTAIN and change.source is not None)
    ]


class Executor:
    """Runs one plan's changes with bounded parallelism, journaling every result.

    ``desired`` maps each rule in the configs to its amount: a change whose key is not
    there, or whose amount differs, is refused at the moment it would be sent.
    ``on_stop`` is called once, from the waiting thread, when the run stops early (an
    interrupt or a failure), e.g. ``CoinsClient.cancel`` to end retry waits at once.
    """

    def __init__(
        self,
        api: CoinsApi,
        journal: Journal,
        state: State,
        *,
        desired: Mapping[RuleKey, int],
        parallelism: int = 8,
        fold_every: int = 500,
        audit: AuditSink | None = None,
        stop: threading.Event | None = None,
        on_stop: Callable[[], None] | None = None,
        rescue: Callable[[str, list[JournalRecord]], Path] | None = None,
    ) -> None:
        self.api = api
        self.desired = desired
        self.on_stop = on_stop
        self._stop_announced = False
        self.parallelism = max(1, parallelism)
        self.stop = stop or threading.Event()
        self.report = ApplyReport()
        self.ledger = Ledger(journal, state, fold_every=fold_every, audit=audit, rescue=rescue)
        self._queue_lock = threading.Lock()
        self.done = 0
        self.total = 0
        self._interrupted = False
        self.signal_name = ""
        self._live = 0  # workers not yet returned; guarded by _queue_lock
        self._all_done = threading.Event()
        self._probe_taken = False  # guarded by _queue_lock
        self._probed = threading.Event()  # the first change has been sent and answered
        self._all_done.set()  # no worker runs until start()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []

    # one change -----------------------------------------------------------------

    def _refused(self, action: AuditAction, change: Change) -> bool:
        """True (and the change recorded as failed, nothing sent) unless the configs
        still ask for exactly this: the last check before a request goes out."""
        wanted = self.desired.get(change.key)
        if wanted == change.amount:
            return False
        if wanted is None:
            reason = f"not sent: {change.key} is not in the configs"
        else:
            reason = f"not sent: the configs say amount {wanted}, the plan {change.amount}"
        log.error("%s: %s", change.key, reason)
        self.report.failed.append((change.key, reason))
        before = change.before if action == AuditAction.UPDATE else None
        self.ledger.write_audit(
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
        return True

    def _create(self, change: Change) -> None:
        if self._refused(AuditAction.CREATE, change):
            return
        key, amount = change.key, change.amount
        intent = self.ledger.intent(key, amount)
        try:
            remote = self.api.create(key, amount)
        except OutcomeUnknownError as e:
            reason = str(e)

            def unknown() -> None:
                self.ledger.inflight.pop(key, None)
                self.ledger.uncertain[key] = Uncertain(key, amount, intent.at)
                self.report.uncertain.append((key, reason))

            self.ledger.write_audit(
                AuditRecord(
                    AuditAction.CREATE, key, Outcome.UNCERTAIN, None, amount, message=reason
                )
            )
            self.ledger.record(
                JournalRecord(JournalKind.RESULT, key, amount, Outcome.UNKNOWN, at=utc_now()),
                unknown,
            )
            return
        except ApiError as e:
            reason = str(e)

            def failed() -> None:
                self.ledger.inflight.pop(key, None)
                self.report.failed.append((key, reason))

            self.ledger.write_audit(
                AuditRecord(AuditAction.CREATE, key, Outcome.FAILED, None, amount, message=reason)
            )
            self.ledger.record(
                JournalRecord(JournalKind.RESULT, key, amount, Outcome.FAILED, at=utc_now()), failed
            )
            self._stop_if_hopeless(e)
            return

        def created() -> None:
            self.ledger.inflight.pop(key, None)
            self.ledger.entries[key] = StateEntry(key, remote.amount, remote.coin_config_id)
            self.ledger.uncertain.pop(key, None)
            self.report.created.append(key)

        record = JournalRecord(
            JournalKind.RESULT, key, amount, Outcome.CREATED, remote.coin_config_id, utc_now()
        )
        # the audit line goes first: if we die between the two, the audit log still
        # says what the server created, and the journal's open intent makes it uncertain
        self.ledger.write_audit(
            AuditRecord(
                AuditAction.CREATE, key, Outcome.CREATED, None, amount, remote.coin_config_id
            )
        )
        self.ledger.record(record, created)

    def _import(self, change: Change) -> None:
        if self._refused(AuditAction.IMPORT, change):
            return
        key, amount, config_id = change.key, change.amount, change.coin_config_id
        if config_id is None:  # a plan always carries it; a hand-edited one may not
            self.report.failed.append((key, "import without a coinConfigId"))
            return
        self.ledger.intent(key, amount)
        reason: str | None = None
        remote: RemoteConfig | None = None
        try:
            remote = self.api.get(config_id)
        except ApiError as e:
            if e.status == 404:
                reason = f"config {config_id} was not found on the server (404)"
            else:
                reason = f"cannot read config {config_id}: {e}"
            if isinstance(e, AuthError):
                self.stop.set()
        if remote is not None and remote.key != key:
            reason = (
                f"config {config_id} on the server is {remote.key}, not {key} as the configs say"
            )
        if reason is not None or remote is None:
            why = f"import refused: {reason}; nothing was recorded and no create is sent"

            def refused() -> None:
                self.ledger.inflight.pop(key, None)
                self.report.failed.append((key, why))

            log.error("%s: %s", key, why)
            self.ledger.write_audit(
                AuditRecord(AuditAction.IMPORT, key, Outcome.FAILED, None, amount, config_id, why)
            )
            self.ledger.record(
                JournalRecord(JournalKind.RESULT, key, amount, Outcome.FAILED, at=utc_now()),
                refused,
            )
            return
        found = remote

        def imported() -> None:
            self.ledger.inflight.pop(key, None)
            self.ledger.entries[key] = StateEntry(key, found.amount, found.coin_config_id)
            self.ledger.uncertain.pop(key, None)
            self.report.imported.append(key)

        record = JournalRecord(
            JournalKind.RESULT, key, found.amount, Outcome.IMPORTED, found.coin_config_id, utc_now()
        )
        self.ledger.write_audit(
            AuditRecord(AuditAction.IMPORT, key, Outcome.IMPORTED, None, found.amount, config_id)
        )
        self.ledger.record(record, imported)
        if found.amount != amount:  # the configs' amount wins, in this same run
            self._update(
                Change(
                    Action.UPDATE,
                    key,
                    amount,
                    before=found.amount,
                    source=change.source,
                    coin_config_id=config_id,
                )
            )

    def _update(self, change: Change) -> None:
        key, amount, config_id = change.key, change.amount, change.coin_config_id
        if config_id is None:  # a plan always carries it; a hand-edited one may not
            self.report.failed.append((key, "update without a coinConfigId"))
            return
        if self._refused(AuditAction.UPDATE, change):
            return
        try:
            remote = self.api.update(config_id, amount, key=key)
        except OutcomeUnknownError as e:
            self._update_unknown(change, config_id, str(e))
            return
        except ApiError as e:
            reason = str(e)
            self.report.failed.append((key, reason))
            self.ledger.write_audit(
                AuditRecord(
                    AuditAction.UPDATE,
                    key,
                    Outcome.FAILED,
                    change.before,
                    amount,
                    config_id,
                    reason,
                )
            )
            self._stop_if_hopeless(e)
            return

        def updated() -> None:
            self.ledger.entries[key] = StateEntry(key, remote.amount, remote.coin_config_id)
            self.report.updated.append(key)

        record = JournalRecord(
            JournalKind.RESULT, key, amount, Outcome.UPDATED, remote.coin_config_id, utc_now()
        )
        self.ledger.write_audit(
            AuditRecord(
                AuditAction.UPDATE,
                key,
                Outcome.UPDATED,
                change.before,
                amount,
                remote.coin_config_id,
            )
        )
        self.ledger.record(record, updated)

    def _update_unknown(self, change: Change, config_id: str, reason: str) -> None:
        """The PATCH may or may not have been applied: the entry keeps its amount and is
        marked ``pending``, so the next plan reads it back instead of trusting it."""
        key, amount = change.key, change.amount

        def unverified() -> None:
            entry = self.ledger.entries.get(key)
            if entry is not None:
                self.ledger.entries[key] = replace(entry, pending=amount)
            self.report.failed.append((key, f"outcome unknown: {reason}"))

        self.ledger.write_audit(
            AuditRecord(
                AuditAction.UPDATE, key, Outcome.UNCERTAIN, change.before, amount, config_id, reason
            )
        )
        self.ledger.record(
            JournalRecord(
                JournalKind.RESULT, key, amount, Outcome.UNVERIFIED, config_id, utc_now()
            ),
            unverified,
        )

    # the run ---------------------------------------------------------------------

    def _work(self, queue: Iterator[Change], errors: list[BaseException]) -> None:
        try:
            self._work_on(queue, errors)
        finally:
            with self._queue_lock:
                self._live -= 1
                if self._live <= 0:
                    self._all_done.set()

    def _stop_if_hopeless(self, error: ApiError) -> None:
        """A refused credential or an API that cannot be reached fails every call the
        same way: stop at the first one, so one clear error is reported, not one per key."""
        if isinstance(error, AuthError | UnreachableError):
            with self._queue_lock:
                if self.report.stopped_by is None:
                    self.report.stopped_by = str(error)
            self.stop.set()

    def _wait_for_probe(self) -> bool:
        """The first change is sent alone: it proves the credentials and the connection
        before the other workers start. True once this worker may take changes."""
        with self._queue_lock:
            if not self._probe_taken:
                self._probe_taken = True
                return True
        while not self._probed.wait(0.2):
            if self.stop.is_set():
                return False
        return not self.stop.is_set()

    def _work_on(self, queue: Iterator[Change], errors: list[BaseException]) -> None:
        if not self._wait_for_probe():
            return
        while not self.stop.is_set():
            with self._queue_lock:
                change = next(queue, None)
            if change is None:
                self._probed.set()
                return
            try:
                try:
                    if change.action is Action.UPDATE:
                        self._update(change)
                    elif change.action is Action.IMPORT:
                        self._import(change)
                    else:
                        self._create(change)
                finally:
                    with self._queue_lock:
                        self.done += 1
                    self._probed.set()
                self.ledger.maybe_fold()
            except BaseException as e:  # a journal write or a checkpoint failed: stop all
                log.debug("apply worker stopped", exc_info=True)
                errors.append(e)
                self.stop.set()
                return

    def interrupt(self, signal_name: str = "") -> None:
        """Stop sending: requests in flight finish and are recorded. Safe in a signal
        handler: a second call (a second signal while draining) returns at once instead of
        re-entering ``stop.set()``, so nothing already arrived is lost."""
        if self._interrupted:
            return
        self._interrupted = True
        self.signal_name = signal_name
        self.stop.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    def wait_done(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every worker to return; True once they have."""
        return self._all_done.wait(timeout)

    def announce_stop(self) -> None:
        """Once the run is stopping, call ``on_stop`` (once). Call from the waiting
        thread, never from a signal handler."""
        if self.stop.is_set() and not self._stop_announced:
            self._stop_announced = True
            if self.on_stop is not None:
                self.on_stop()

    def halt(self, tick: float = 0.2) -> None:
        """Stop new sends and return once every worker has returned and been joined.

        Requests in flight finish (their retry waits cut short by ``on_stop``) and are
        recorded. Returns at once when the workers are already done.
        """
        if not self._all_done.is_set():
            self.stop.set()
            try:
                self.announce_stop()
            finally:
                while True:  # bounded: each worker ends with its request in flight
                    try:
                        if self.wait_done(tick):
                            break
                    except KeyboardInterrupt:
                        self.interrupt()
        for thread in self._threads:
            thread.join()  # every worker has returned; this only reaps it

    def start(self, plan: Plan, retry_uncertain: bool = False) -> list[threading.Thread]:
        """Start the workers; the caller joins them (and may set ``stop``)."""
        todo = to_send(plan, retry_uncertain)
        sent = {change.key for change in todo}
        self.report.skipped_uncertain.extend(
            change.key for change in plan.of(Action.UNCERTAIN) if change.key not in sent
        )
        self.total = len(todo)
        queue = iter(todo)
        count = min(self.parallelism, max(1, len(todo)))
        threads = [
            threading.Thread(
                target=self._work, args=(queue, self._errors), name=f"apply-{i}", daemon=True
            )
            for i in range(count)
        ]
        self._live = count
        self._all_done.clear()
        for index, thread in enumerate(threads):
            try:
                thread.start()
            except BaseException:
                self.stop.set()  # the started ones stop; halt() joins them
                with self._queue_lock:
                    self._live -= count - index
                    if self._live <= 0:
                        self._all_done.set()
                raise
            self._threads.append(thread)
        return threads

    def finish(self) -> ApplyReport:
        """Stop and join the workers if still running, fold every result into the state
        and close the journal.

        Raises :class:`ApplyStoppedError` when a worker, a journal write or this fold
        failed; the report it carries says what was done and what was folded.
        """
        self.halt()
        self.report.interrupted = self._interrupted
        self.report.signal_name = self.signal_name
        self.report.not_started = self.total - self.done
        fold_error: Exception | None = None
        try:
            self.ledger.fold()
        except Exception as e:
            log.debug("final checkpoint failed", exc_info=True)
            fold_error = e
            self.ledger.save_unfolded(self.report)
        finally:
            self.ledger.close()
        self.report.state = self.ledger.base
        if self._errors or fold_error is not None:
            raise stopped_error(self.report, self._errors, fold_error)
        if self.ledger.audit_failures:
            raise StateError(
                f"{len(self.ledger.audit_failures)} audit record(s) could not be written "
                f"({self.ledger.audit_failures[0]}); the state is complete"
            )
        return self.report
