"""The apply executor: send a plan's creates and updates, and never lose or repeat one.

The coins API has no idempotency key, no list and no delete, so the state is the only
memory of what exists. Every path here may be cut off at any instant; what is promised:

* Before a create is sent, an *intent* record is appended to the journal and fsynced.
  When the answer arrives, a *result* record follows. So after a crash every create is
  either confirmed (an entry), known not to have happened, or *uncertain* — never
  silently re-sent, because an intent without a result becomes uncertain.
* Results are folded into the state atomically at the end, and during long runs once
  enough results have piled up (a share of the state, so total work stays linear).
* An interrupt (SIGINT) stops new sends; requests in flight finish and are recorded,
  and the client stops waiting to retry (``on_stop``), so a stop is never held up by
  backoff sleeps.
* Any failure of a worker, of a journal write or of a checkpoint stops new sends too,
  and :meth:`Executor.finish` raises :class:`ApplyStoppedError` after folding what was
  done. The workers are always stopped and joined before the caller goes on, whatever
  raised (see :func:`wait` and :meth:`Executor.halt`).
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

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import (
    ApiError,
    AuthError,
    CoinsSyncError,
    OutcomeUnknownError,
    StateConflictError,
    StateError,
    UnreachableError,
)
from coins_sync.plan.reconcile import Action, Change, Plan
from coins_sync.plan.saved import check_consistent, check_fresh, load_plan
from coins_sync.state.audit import AuditRecord, AuditSink
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import Journal, JournalKind, JournalRecord
from coins_sync.state.model import State, StateEntry, Uncertain, utc_now
from coins_sync.workspace import Workspace, unverified

log = logging.getLogger(__name__)


class CoinsApi(Protocol):
    """The calls apply needs; :class:`coins_sync.enkash.CoinsClient` provides them."""

    def create(self, key: RuleKey, amount: int) -> RemoteConfig: ...

    def get(self, coin_config_id: str) -> RemoteConfig: ...

    def update(
        self, coin_config_id: str, amount: int, *, key: RuleKey | None = None
    ) -> RemoteConfig: ...


@dataclass
class ApplyReport:
    """What an apply did. ``failed`` and ``uncertain`` list keys with a short reason."""

    created: list[RuleKey] = field(default_factory=list)
    imported: list[RuleKey] = field(default_factory=list)
    updated: list[RuleKey] = field(default_factory=list)
    failed: list[tuple[RuleKey, str]] = field(default_factory=list)
    uncertain: list[tuple[RuleKey, str]] = field(default_factory=list)
    skipped_uncertain: list[RuleKey] = field(default_factory=list)
    #: Why the run stopped early: a refused credential or an unreachable API.
    stopped_by: str | None = None
    not_started: int = 0
    interrupted: bool = False
    signal_name: str = ""  # "SIGTERM" when that stopped the run, else "" (SIGINT or none)
    #: Confirmed results that the state file could not take: (key, coinConfigId). Printed
    #: so that no id the server confirmed is known only to a lost process.
    unrecorded: list[tuple[RuleKey, str]] = field(default_factory=list)
    rescue: Path | None = None
    state: State | None = None

    @property
    def ok(self) -> bool:
        # an uncertain create left unresolved needs a person, so it is not "ok" either
        return not (self.failed or self.uncertain or self.skipped_uncertain or self.interrupted)

    def summary(self) -> str:
        parts = [
            f"{len(self.created)} created",
            f"{len(self.updated)} updated",
            f"{len(self.failed)} failed",
            f"{len(self.uncertain)} uncertain",
        ]
        if self.imported:
            parts.insert(1, f"{len(self.imported)} imported")
        if self.skipped_uncertain:
            parts.append(f"{len(self.skipped_uncertain)} uncertain skipped")
        if self.not_started:
            parts.append(f"{self.not_started} not started")
        return "Apply: " + ", ".join(parts) + "."


class ApplyStoppedError(StateError):
    """An apply stopped early because a worker, a journal write or a checkpoint failed.

    ``report`` says what was done before it stopped; its ``state`` is what was folded.
    """

    def __init__(self, message: str, report: ApplyReport) -> None:
        super().__init__(message)
        self.report = report


def _describe(error: BaseException) -> str:
    if isinstance(error, CoinsSyncError):
        return str(error)
    if isinstance(error, OSError):  # of a rename, the target is the file that matters
        target = error.filename2 or error.filename
        where = f": {target}" if target else ""
        return f"{error.strerror or error}{where}"
    return f"unexpected {type(error).__name__}: {error}"


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
        self.rescue = rescue
        self._results: list[JournalRecord] = []  # every result of this run, for a rescue
        self.desired = desired
        self.on_stop = on_stop
        self._stop_announced = False
        self.journal = journal
        self.parallelism = max(1, parallelism)
        self.fold_every = max(1, fold_every)
        self.audit = audit
        self.stop = stop or threading.Event()
        self.report = ApplyReport()
        self._entries: dict[RuleKey, StateEntry] = dict(state.entries)
        self._uncertain: dict[RuleKey, Uncertain] = dict(state.uncertain)
        self._inflight: dict[RuleKey, JournalRecord] = {}
        self._base = state
        self._since_fold = 0
        self._fold_lock = threading.Lock()
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
        self._audit_failures: list[StateError] = []

    # bookkeeping (always called under the journal's mutex) ----------------------

    def _snapshot(self) -> tuple[State, list[JournalRecord]]:
        state = State(
            lineage=self._base.lineage,
            serial=self._base.serial,
            entries=dict(self._entries),
            uncertain=dict(self._uncertain),
        )
        return state, list(self._inflight.values())

    def _maybe_fold(self) -> None:
        threshold = max(self.fold_every, len(self._entries) // 4)
        if self._since_fold < threshold or not self._fold_lock.acquire(blocking=False):
            return
        try:
            self._base = self.journal.checkpoint(self._snapshot)
            self._since_fold = 0
        finally:
            self._fold_lock.release()

    def _record(self, record: JournalRecord, book: Callable[[], None]) -> None:
        def booked() -> None:
            book()
            self._results.append(record)
            self._since_fold += 1

        self.journal.append(record, booked, book_on_failure=True)

    # one change -----------------------------------------------------------------

    def _refused(self, action: str, change: Change) -> bool:
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
        before = change.before if action == "update" else None
        self._audit(
            AuditRecord(
                action, change.key, "failed", before, change.amount, change.coin_config_id, reason
            )
        )
        return True

    def _create(self, change: Change) -> None:
        if self._refused("create", change):
            return
        key, amount = change.key, change.amount
        intent = JournalRecord(JournalKind.INTENT, key, amount, at=utc_now())
        self.journal.append(intent, lambda: self._inflight.__setitem__(key, intent))
        try:
            remote = self.api.create(key, amount)
        except OutcomeUnknownError as e:
            reason = str(e)

            def unknown() -> None:
                self._inflight.pop(key, None)
                self._uncertain[key] = Uncertain(key, amount, intent.at)
                self.report.uncertain.append((key, reason))

            self._audit(AuditRecord("create", key, "uncertain", None, amount, message=reason))
            self._record(
                JournalRecord(JournalKind.RESULT, key, amount, "unknown", at=utc_now()), unknown
            )
            return
        except ApiError as e:
            reason = str(e)

            def failed() -> None:
                self._inflight.pop(key, None)
                self.report.failed.append((key, reason))

            self._audit(AuditRecord("create", key, "failed", None, amount, message=reason))
            self._record(
                JournalRecord(JournalKind.RESULT, key, amount, "failed", at=utc_now()), failed
            )
            self._stop_if_hopeless(e)
            return

        def created() -> None:
            self._inflight.pop(key, None)
            self._entries[key] = StateEntry(key, remote.amount, remote.coin_config_id)
            self._uncertain.pop(key, None)
            self.report.created.append(key)

        record = JournalRecord(
            JournalKind.RESULT, key, amount, "created", remote.coin_config_id, utc_now()
        )
        # the audit line goes first: if we die between the two, the audit log still
        # says what the server created, and the journal's open intent makes it uncertain
        self._audit(AuditRecord("create", key, "created", None, amount, remote.coin_config_id))
        self._record(record, created)

    def _import(self, change: Change) -> None:
        if self._refused("import", change):
            return
        key, amount, config_id = change.key, change.amount, change.coin_config_id
        if config_id is None:  # a plan always carries it; a hand-edited one may not
            self.report.failed.append((key, "import without a coinConfigId"))
            return
        intent = JournalRecord(JournalKind.INTENT, key, amount, at=utc_now())
        self.journal.append(intent, lambda: self._inflight.__setitem__(key, intent))
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
                self._inflight.pop(key, None)
                self.report.failed.append((key, why))

            log.error("%s: %s", key, why)
            self._audit(AuditRecord("import", key, "failed", None, amount, config_id, why))
            self._record(
                JournalRecord(JournalKind.RESULT, key, amount, "failed", at=utc_now()), refused
            )
            return
        found = remote

        def imported() -> None:
            self._inflight.pop(key, None)
            self._entries[key] = StateEntry(key, found.amount, found.coin_config_id)
            self._uncertain.pop(key, None)
            self.report.imported.append(key)

        record = JournalRecord(
            JournalKind.RESULT, key, found.amount, "imported", found.coin_config_id, utc_now()
        )
        self._audit(AuditRecord("import", key, "imported", None, found.amount, config_id))
        self._record(record, imported)
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
        if self._refused("update", change):
            return
        try:
            remote = self.api.update(config_id, amount, key=key)
        except OutcomeUnknownError as e:
            self._update_unknown(change, config_id, str(e))
            return
        except ApiError as e:
            reason = str(e)
            self.report.failed.append((key, reason))
            self._audit(
                AuditRecord("update", key, "failed", change.before, amount, config_id, reason)
            )
            self._stop_if_hopeless(e)
            return

        def updated() -> None:
            self._entries[key] = StateEntry(key, remote.amount, remote.coin_config_id)
            self.report.updated.append(key)

        record = JournalRecord(
            JournalKind.RESULT, key, amount, "updated", remote.coin_config_id, utc_now()
        )
        self._audit(
            AuditRecord("update", key, "updated", change.before, amount, remote.coin_config_id)
        )
        self._record(record, updated)

    def _update_unknown(self, change: Change, config_id: str, reason: str) -> None:
        """The PATCH may or may not have been applied: the entry keeps its amount and is
        marked ``pending``, so the next plan reads it back instead of trusting it."""
        key, amount = change.key, change.amount

        def unverified() -> None:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries[key] = replace(entry, pending=amount)
            self.report.failed.append((key, f"outcome unknown: {reason}"))

        self._audit(
            AuditRecord("update", key, "uncertain", change.before, amount, config_id, reason)
        )
        self._record(
            JournalRecord(JournalKind.RESULT, key, amount, "unverified", config_id, utc_now()),
            unverified,
        )

    def _audit(self, item: AuditRecord) -> None:
        """Write an audit line; a failure is reported at the end, never allowed to stop
        the journal from recording what the server did."""
        if self.audit is None:
            return
        try:
            self.audit.record(item)
        except StateError as e:
            log.error("%s", e)
            self._audit_failures.append(e)

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
                self._maybe_fold()
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

    def _stopped(self, fold_error: Exception | None) -> ApplyStoppedError:
        parts = []
        if self._errors:
            first = f"apply stopped: {_describe(self._errors[0])}; nothing new was sent after it"
            if len(self._errors) > 1:
                first += f" ({len(self._errors) - 1} more worker(s) failed too)"
            parts.append(first)
        if fold_error is None:
            parts.append("Every result confirmed so far is recorded in the state")
        else:
            what = (
                "apply did not overwrite the state"
                if isinstance(fold_error, StateConflictError)
                else "apply could not write its results into the state"
            )
            where = self._rescue_note()
            parts.append(
                f"{what[0].upper() if parts else what[0]}{what[1:]} ({_describe(fold_error)}). "
                f"{where}; the next coins-sync command folds them into the state: run "
                "`coins-sync plan` and check it before applying again"
            )
        return ApplyStoppedError(". ".join(parts), self.report)

    def _rescue_note(self) -> str:
        if self.report.rescue is not None:
            return (
                f"The state on disk was left as it is; this run's results are kept in "
                f"{self.report.rescue} (and the journal)"
            )
        return (
            "The state on disk was left as it is; the journal and the audit log keep what "
            "was done, and the confirmed ids are listed above"
        )

    def _save_unfolded(self) -> None:
        """The final fold failed: list every confirmed id and try the rescue file."""
        self.report.unrecorded = [
            (record.key, record.coin_config_id)
            for record in self._results
            if record.coin_config_id and record.outcome in ("created", "updated", "imported")
        ]
        if self.rescue is None:
            return
        records = [*self._results, *self._inflight.values()]
        if not records:
            return
        try:
            self.report.rescue = self.rescue(self._base.lineage, records)
        except OSError as e:
            log.error("cannot write the rescue file: %s", _describe(e))

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
            self._base = self.journal.checkpoint(self._snapshot)
        except Exception as e:
            log.debug("final checkpoint failed", exc_info=True)
            fold_error = e
            self._save_unfolded()
        finally:
            try:
                self.journal.close()
            finally:
                if self.audit is not None:
                    self.audit.close()
        self.report.state = self._base
        if self._errors or fold_error is not None:
            raise self._stopped(fold_error)
        if self._audit_failures:
            raise StateError(
                f"{len(self._audit_failures)} audit record(s) could not be written "
                f"({self._audit_failures[0]}); the state is complete"
            )
        return self.report


def wait(
    executor: Executor,
    threads: list[threading.Thread],
    on_tick: Callable[[int, int], None] | None = None,
    tick: float = 0.2,
) -> None:
    """Wait for the workers; on Ctrl-C stop new sends and let requests in flight finish.

    Completion is the executor's own count of returned workers, never
    ``Thread.is_alive()``: before Python 3.13 a KeyboardInterrupt inside ``Thread.join()``
    can mark a thread that is still running as stopped (CPython gh-90882), and the state
    would then be folded and the client closed under a live request.

    Whatever raises here (the progress callback included) first stops new sends and
    waits for every worker (:meth:`Executor.halt`), so the caller never releases the
    state lock or closes the client under a live worker.
    """
    announced = False
    try:
        while True:
            try:
                done = executor.wait_done(tick)
            except KeyboardInterrupt:
                executor.interrupt()
                done = False
            executor.announce_stop()
            if executor.interrupted:
                if not announced:
                    log.warning("interrupted: finishing requests in flight, sending nothing new")
                    announced = True
            elif on_tick is not None:
                on_tick(executor.done, executor.total)
            if done:
                break
    except BaseException:
        executor.halt(tick)
        raise
    for thread in threads:
        thread.join()  # every worker has returned; this only reaps it


@contextlib.contextmanager
def sigint_stops(executor: Executor) -> Iterator[None]:
    """While an apply runs, SIGINT (Ctrl-C) and SIGTERM (a CI cancellation, ``kill``) call
    ``executor.interrupt()`` instead of ending the process at an arbitrary point, so the
    results are always folded and no new send starts; the caller exits 130 or 143. A
    second signal while draining changes nothing (only SIGKILL ends it then). Only the
    main thread can own signal handlers; elsewhere this does nothing, and :func:`wait`
    still turns a KeyboardInterrupt into an interrupt. An ignored signal (e.g. SIGINT
    under nohup) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        executor.interrupt("SIGTERM" if signum == signal.SIGTERM else "")

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, on_signal)
        yield
    finally:
        for caught, handler in previous.items():
            signal.signal(caught, handler)


class ClosableApi(CoinsApi, Protocol):
    def get(self, coin_config_id: str) -> RemoteConfig: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ApplyRequest:
    """How to apply: a saved plan or a fresh one, and the user's overrides."""

    planfile: Path | None = None
    force: bool = False
    retry_uncertain: bool = False
    refresh: bool = False
    parallelism: int | None = None
    command: str = "apply"


def run_apply(
    workspace: Workspace,
    api_factory: Callable[[], ClosableApi],
    request: ApplyRequest,
    confirm: Callable[[Plan], bool],
    on_tick: Callable[[int, int], None] | None = None,
    audit: AuditSink | None = None,
) -> tuple[Plan, ApplyReport | None]:
    """Plan (or load a saved plan), confirm, and execute, all under the state lock.

    Returns the plan and the report; the report is None when nothing was sent because
    there was nothing to do or the user declined.
    """
    settings = workspace.settings
    store = workspace.store
    api: ClosableApi | None = None
    try:
        with store.lock(request.command, settings.lock_timeout):
            state, _ = store.recover()
            configs = workspace.load_configs()
            if request.planfile is not None:
                the_plan = load_plan(request.planfile)
                check_fresh(the_plan, settings.env, state, configs)
                check_consistent(the_plan, state, configs)
            elif request.refresh:
                api = api_factory()
                the_plan = workspace.plan(state, configs, refresh_with=api)
            elif unverified(state):  # read back the updates whose outcome is unknown
                api = api_factory()
                the_plan = workspace.plan(state, configs, verify_with=api)
            else:
                the_plan = workspace.plan(state, configs)
            the_plan.raise_if_unsafe(workspace.safety, force=request.force)
            if not to_send(the_plan, request.retry_uncertain) or not confirm(the_plan):
                return the_plan, None
            api = api or api_factory()
            if not state.exists:
                elsewhere = [] if request.force else workspace.states_elsewhere()
                if elsewhere:
                    raise StateError(
                        f"the state {store.describe()} does not exist yet, but "
                        f"{elsewhere[0]} already records rules under the same name; "
                        "starting a new, empty state would create every rule again. "
                        "Run from the project folder, or pass --state with the existing "
                        "file. Nothing was sent. (--force starts a new state anyway.)"
                    )
                state = store.write(state)  # fixes the lineage the journal is tied to
            executor = Executor(
                api,
                store.journal(state),
                state,
                desired={rule.key: rule.amount for rule in configs.rules},
                parallelism=request.parallelism or settings.parallelism,
                fold_every=settings.fold_every,
                audit=audit,
                on_stop=api.cancel,
                rescue=store.write_rescue if isinstance(store, FileStateStore) else None,
            )
            with sigint_stops(executor):
                try:
                    threads = executor.start(the_plan, retry_uncertain=request.retry_uncertain)
                    wait(executor, threads, on_tick)
                except BaseException:
                    # the workers are stopped and joined before the lock is released and
                    # the client closed; what they did is folded, then the error goes on
                    try:
                        executor.finish()
                    except Exception as e:
                        log.error("%s", _describe(e))
                    raise
                report = executor.finish()
            return the_plan, report
    finally:
        if api is not None:
            api.close()
