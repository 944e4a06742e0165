"""One change at a time: the send-time check, the request, and its result booked.

What is promised: right before a create, an import or an update goes out, the configs
must still ask for that key at that amount, or nothing is sent. A create is preceded by
a journaled intent; its answer (or its unknown outcome) becomes a result. A refused
credential or an unreachable API stops the whole run at its first occurrence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from coins_sync.apply.ledger import Ledger
from coins_sync.apply.report import ApplyReport
from coins_sync.configs.model import RuleKey
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import ApiError, AuthError, OutcomeUnknownError, UnreachableError
from coins_sync.plan.reconcile import Action, Change
from coins_sync.state.audit import AuditAction, AuditRecord
from coins_sync.state.journal import JournalKind, JournalRecord, Outcome
from coins_sync.state.model import StateEntry, Uncertain, utc_now

log = logging.getLogger(__name__)


class CoinsApi(Protocol):
    """The calls apply needs; :class:`coins_sync.enkash.CoinsClient` provides them."""

    def create(self, key: RuleKey, amount: int) -> RemoteConfig: ...

    def get(self, coin_config_id: str) -> RemoteConfig: ...

    def update(
        self, coin_config_id: str, amount: int, *, key: RuleKey | None = None
    ) -> RemoteConfig: ...


class Ahead:
    """The change a worker sends next, taken (by ``take``, at most once) when the
    current one is answered, so that a create's intent can be journaled in the same
    write as that answer's result. ``intent`` is set when it was."""

    def __init__(self, take: Callable[[], Change | None]) -> None:
        self._take = take
        self.taken = False
        self.change: Change | None = None
        self.intent: JournalRecord | None = None

    def next(self) -> Change | None:
        if not self.taken:
            self.taken = True
            self.change = self._take()
        return self.change


class Sender:
    """Sends single changes for an :class:`~coins_sync.apply.executor.Executor`; safe
    to call from its workers at once. ``stop`` is set when the run should send nothing
    more; ``lock`` guards ``report.stopped_by``."""

    def __init__(
        self,
        api: CoinsApi,
        desired: Mapping[RuleKey, int],
        ledger: Ledger,
        report: ApplyReport,
        stop: threading.Event,
        lock: threading.Lock,
    ) -> None:
        self.api = api
        self.desired = desired
        self.ledger = ledger
        self.report = report
        self.stop = stop
        self._lock = lock

    def send(
        self, change: Change, intent: JournalRecord | None = None, ahead: Ahead | None = None
    ) -> None:
        """Send one change (an uncertain create being retried is sent as a create).

        ``intent``: the create's intent, already journaled (see ``ahead``). With
        ``ahead``, a confirmed result takes the worker's next change and, when it is a
        create the configs still ask for, journals its intent in the same write
        (``ahead.intent``)."""
        if change.action is Action.UPDATE:
            self._update(change, ahead)
        elif change.action is Action.IMPORT:
            self._import(change, ahead)
        else:
            self._create(change, intent, ahead)

    def _then(self, ahead: Ahead | None) -> tuple[RuleKey, int] | None:
        """The key and amount of the next change when its intent may be journaled now:
        a create that the configs still ask for (else it is refused in its turn)."""
        if ahead is None:
            return None
        then = ahead.next()
        if then is None or then.action in (Action.UPDATE, Action.IMPORT):
            return None
        if self.desired.get(then.key) != then.amount:
            return None
        return then.key, then.amount

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
        log.info("%s: %s", change.key, reason)  # the report lists it once, as failed
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

    def _create(self, change: Change, intent: JournalRecord | None, ahead: Ahead | None) -> None:
        key, amount = change.key, change.amount
        if intent is None:
            if self._refused(AuditAction.CREATE, change):
                return
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
        if ahead is not None:
            ahead.intent = self.ledger.record(record, created, self._then(ahead))
        else:
            self.ledger.record(record, created)

    def _import(self, change: Change, ahead: Ahead | None) -> None:
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

            log.info("%s: %s", key, why)  # the report lists it once, as failed
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
        if found.amount == amount and ahead is not None:
            ahead.intent = self.ledger.record(record, imported, self._then(ahead))
        else:
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
                ),
                ahead,
            )

    def _update(self, change: Change, ahead: Ahead | None = None) -> None:
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
        if ahead is not None:
            ahead.intent = self.ledger.record(record, updated, self._then(ahead))
        else:
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

    def _stop_if_hopeless(self, error: ApiError) -> None:
        """A refused credential or an API that cannot be reached fails every call the
        same way: stop at the first one, so one clear error is reported, not one per key."""
        if isinstance(error, AuthError | UnreachableError):
            with self._lock:
                if self.report.stopped_by is None:
                    self.report.stopped_by = str(error)
            self.stop.set()
