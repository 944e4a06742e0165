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
from pathlib import Path

from coins_sync import defaults
from coins_sync.apply.ledger import Ledger
from coins_sync.apply.report import ApplyReport, stopped_error
from coins_sync.apply.send import Ahead, CoinsApi, Sender
from coins_sync.configs.model import RuleKey
from coins_sync.errors import (
    StateError,
)
from coins_sync.plan.reconcile import Action, Change, Plan
from coins_sync.state.audit import AuditSink
from coins_sync.state.journal import Journal, JournalRecord
from coins_sync.state.model import State

log = logging.getLogger(__name__)


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
        parallelism: int = defaults.PARALLELISM,
        fold_every: int = 500,
        audit: AuditSink | None = None,
        stop: threading.Event | None = None,
        on_stop: Callable[[], None] | None = None,
        rescue: Callable[[str, list[JournalRecord]], Path] | None = None,
    ) -> None:
        self.on_stop = on_stop
        self._stop_announced = False
        self.parallelism = max(1, parallelism)
        self.stop = stop or threading.Event()
        self.report = ApplyReport()
        self.ledger = Ledger(
            journal, state, self.report, fold_every=fold_every, audit=audit, rescue=rescue
        )
        self._queue_lock = threading.Lock()
        self.sender = Sender(api, desired, self.ledger, self.report, self.stop, self._queue_lock)
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

    # the run ---------------------------------------------------------------------

    def _work(self, queue: Iterator[Change], errors: list[BaseException]) -> None:
        try:
            self._work_on(queue, errors)
        finally:
            with self._queue_lock:
                self._live -= 1
                if self._live <= 0:
                    self._all_done.set()

    def _wait_for_probe(self) -> bool:
        """The first change is sent alone: it proves the credentials and the connection
        before the other workers start. True once this worker may take changes."""
        with self._queue_lock:
            if not self._probe_taken:
                self._probe_taken = True
                return True
        while not self._probed.wait(0.2):
            if self.stopping():
                return False
        return not self.stopping()

    def _take(self, queue: Iterator[Change]) -> Change | None:
        """The next change to send; None when the queue is empty or the run stops."""
        with self._queue_lock:
            return None if self.stopping() else next(queue, None)

    def _work_on(self, queue: Iterator[Change], errors: list[BaseException]) -> None:
        if not self._wait_for_probe():
            return
        change = self._take(queue)
        intent: JournalRecord | None = None  # change's intent, journaled ahead
        while change is not None:
            if self.stopping():
                break
            ahead = Ahead(lambda: self._take(queue))
            sent, intent = intent, None  # from here on, sent is never closed as not sent
            try:
                try:
                    self.sender.send(change, sent, ahead)
                finally:
                    intent = ahead.intent
                    with self._queue_lock:
                        self.done += 1
                    self._probed.set()
                self.ledger.maybe_fold()
            except BaseException as e:  # a journal write or a checkpoint failed: stop all
                log.debug("apply worker stopped", exc_info=True)
                errors.append(e)
                self.stop.set()
                break
            change = ahead.change if ahead.taken else self._take(queue)
        else:
            self._probed.set()
        if intent is not None:  # journaled with the last result; the run stopped first
            try:
                self.ledger.not_sent(intent)
            except BaseException as e:  # reported unless it follows an earlier failure
                log.debug("apply worker could not close an intent", exc_info=True)
                if not errors:
                    errors.append(e)
                self.stop.set()

    def interrupt(self, signal_name: str = "") -> None:
        """Stop sending: requests in flight finish and are recorded.

        Safe in a signal handler, whenever the signal arrives: it only sets two plain
        attributes and takes no lock. (Setting ``stop`` here could deadlock: the handler
        runs in the main thread, which may be inside ``stop.set()`` holding the event's
        lock.) Workers see the interrupt before each send; the waiting thread turns it
        into ``stop`` at its next tick (:meth:`announce_stop`). A second call returns at
        once, so nothing already arrived is lost."""
        if self._interrupted:
            return
        self.signal_name = signal_name
        self._interrupted = True

    def stopping(self) -> bool:
        """Whether the run sends nothing more: stopped, or interrupted."""
        return self._interrupted or self.stop.is_set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    def wait_done(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every worker to return; True once they have."""
        return self._all_done.wait(timeout)

    def announce_stop(self) -> None:
        """Once the run is stopping (an interrupt included), set ``stop`` and call
        ``on_stop`` (once). Call from the waiting thread, never from a signal handler."""
        if self._interrupted and not self.stop.is_set():
            self.stop.set()
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
            self.ledger.save_unfolded(e)
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
