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
from typing import Protocol

from coins_sync.apply.ledger import Ledger
from coins_sync.apply.report import ApplyReport
from coins_sync.configs.model import RuleKey
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import (
    ApiError,
    AuthError,
    OutcomeUnknownError,
    RateLimitError,
    UnreachableError,
)
from coins_sync.plan.reconcile import Action, Change
from coins_sync.state.audit import AuditAction
from coins_sync.state.journal import JournalRecord

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
        a create that passes the send-time check (else it is refused in its turn, and
        no intent is ever journaled for it)."""
        if ahead is None:
            return None
        then = ahead.next()
        if then is None or then.action in (Action.UPDATE, Action.IMPORT):
            return None
        if self._refusal(then) is not None:
            return None
        return then.key, then.amount

    def _refusal(self, change: Change) -> str | None:
        """Why ``change`` must not be sent, or None when the configs still ask for
        exactly this key at this amount: the send-time check."""
        wanted = self.desired.get(change.key)
        if wanted == change.amount:
            return None
        if wanted is None:
            return f"not sent: {change.key} is not in the configs"
        return f"not sent: the configs say amount {wanted}, the plan {change.amount}"

    def _refused(self, action: AuditAction, change: Change) -> bool:
        """True (and the change recorded as failed, nothing sent) unless the configs
        still ask for exactly this: the last check before a request goes out."""
        reason = self._refusal(change)
        if reason is None:
            return False
        self.ledger.refused(action, change, reason)
        return True

    def _create(self, change: Change, intent: JournalRecord | None, ahead: Ahead | None) -> None:
        key, amount = change.key, change.amount
        if self._refused(AuditAction.CREATE, change):  # also when journaled ahead
            if intent is not None:
                self.ledger.not_sent(intent)
            return
        if intent is None:
            intent = self.ledger.intent(key, amount)
        try:
            remote = self.api.create(key, amount)
        except OutcomeUnknownError as e:
            self.ledger.create_unknown(intent, str(e))
            self._stop_if_hopeless(e)
            return
        except ApiError as e:
            self.ledger.create_failed(key, amount, str(e))
            self._stop_if_hopeless(e)
            return
        then = self._then(ahead)
        ahead_intent = self.ledger.created(key, remote.amount, remote.coin_config_id, then)
        if ahead is not None:
            ahead.intent = ahead_intent

    def _import(self, change: Change, ahead: Ahead | None) -> None:
        if self._refused(AuditAction.IMPORT, change):
            return
        key, amount, config_id = change.key, change.amount, change.coin_config_id
        if config_id is None:  # a plan always carries it; a hand-edited one may not
            self.ledger.unusable(key, "import without a coinConfigId")
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
            self._stop_if_hopeless(e)
        if remote is not None and remote.key != key:
            reason = (
                f"config {config_id} on the server is {remote.key}, not {key} as the configs say"
            )
        if reason is not None or remote is None:
            why = f"import refused: {reason}; nothing was recorded and no create is sent"
            self.ledger.import_refused(key, amount, config_id, why)
            return
        then = self._then(ahead) if remote.amount == amount else None
        ahead_intent = self.ledger.imported(key, remote.amount, remote.coin_config_id, then)
        if ahead is not None and then is not None:
            ahead.intent = ahead_intent
        if remote.amount != amount:  # the configs' amount wins, in this same run
            self._update(
                Change(
                    Action.UPDATE,
                    key,
                    amount,
                    before=remote.amount,
                    source=change.source,
                    coin_config_id=config_id,
                ),
                ahead,
            )

    def _update(self, change: Change, ahead: Ahead | None = None) -> None:
        config_id = change.coin_config_id
        if config_id is None:  # a plan always carries it; a hand-edited one may not
            self.ledger.unusable(change.key, "update without a coinConfigId")
            return
        if self._refused(AuditAction.UPDATE, change):
            return
        try:
            remote = self.api.update(config_id, change.amount, key=change.key)
        except OutcomeUnknownError as e:
            self.ledger.update_unknown(change, config_id, str(e))
            self._stop_if_hopeless(e)
            return
        except ApiError as e:
            self.ledger.update_failed(change, config_id, str(e))
            self._stop_if_hopeless(e)
            return
        ahead_intent = self.ledger.updated(change, remote.coin_config_id, self._then(ahead))
        if ahead is not None:
            ahead.intent = ahead_intent

    def _stop_if_hopeless(self, error: ApiError) -> None:
        """A refused credential, an API that cannot be reached, or a spent budget for
        waiting on the rate limit fails every call the same way: stop at the first one,
        so one clear error is reported, not one per key. An outcome made unknown by such
        a failure (a PATCH whose retry got a 401) stops the run too."""
        cause = error.__cause__ if isinstance(error, OutcomeUnknownError) else error
        if isinstance(cause, AuthError | UnreachableError | RateLimitError):
            with self._lock:
                if self.report.stopped_by is None:
                    self.report.stopped_by = str(cause)
            self.stop.set()
