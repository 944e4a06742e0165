"""What a send's answer means, what is checked before a send, and a Ctrl-C that can
never deadlock (issue 20: items 1, 4 and 6; mutants C3 and C5).

The client is the real :class:`CoinsClient` on ``httpx.MockTransport``; the executor
runs with the hand-written fakes of ``tests/test_executor_unit.py``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from coins_sync.apply.run import sigint_stops
from coins_sync.configs.model import RuleKey
from coins_sync.enkash import (
    ClientOptions,
    CoinsClient,
    Credentials,
    RemoteConfig,
    make_http_client,
)
from coins_sync.errors import ApiError, AuthError, OutcomeUnknownError
from coins_sync.plan.reconcile import Action, Change, Plan
from coins_sync.state.audit import AuditAction, AuditRecord
from coins_sync.state.journal import JournalRecord, Outcome
from coins_sync.state.model import State, StateEntry
from tests.test_executor_unit import DESIRED, KEYS, FakeApi, FakeJournal, executor_for, run

KEY = RuleKey("ACME", "DEFAULT", "MEAL")
ID = "WCC1"

Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler, **options: Any) -> CoinsClient:
    opts = ClientOptions(api_url="https://coins.test", max_retries=2, **options)
    http = make_http_client(opts, transport=httpx.MockTransport(handler))
    return CoinsClient(http, Credentials(token="t0ken"), opts, sleep=lambda _: None)


def scripted(*steps: httpx.Response | Exception) -> tuple[Handler, list[str]]:
    """Answer each request with the next step; record each request's method."""
    queue = list(steps)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        step = queue.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    return handler, seen


def payload(amount: int) -> dict[str, Any]:
    return {"coinConfigId": ID, **KEY.as_dict(), "amount": amount}


# --- item 1: a 401 after a PATCH that may have been applied --------------------------


def test_a_401_after_a_timed_out_patch_leaves_the_outcome_unknown() -> None:
    """Attempt 1 timed out (the server may hold 9); the retry is refused with a 401. The
    update is not a plain failure: it may have been applied."""
    handler, seen = scripted(httpx.ReadTimeout("lost"), httpx.Response(401, json={}))
    with client_with(handler) as client, pytest.raises(OutcomeUnknownError) as raised:
        client.update(ID, 9, key=KEY)
    assert seen == ["PATCH", "PATCH"]
    assert "may or may not have applied" in str(raised.value)
    assert isinstance(raised.value.__cause__, AuthError)


def test_a_401_on_the_first_patch_is_a_plain_auth_failure() -> None:
    handler, _ = scripted(httpx.Response(401, json={}))
    with client_with(handler) as client, pytest.raises(AuthError) as raised:
        client.update(ID, 9, key=KEY)
    assert not isinstance(raised.value, OutcomeUnknownError)


def test_apply_keeps_the_pending_mark_and_stops_when_the_retry_gets_a_401() -> None:
    """End to end through the executor: the entry keeps its amount, is marked pending
    at the amount sent, and the run stops at the refused credential."""
    handler, seen = scripted(httpx.ReadTimeout("lost"), httpx.Response(401, json={}))
    other = RuleKey("ACME", "DEFAULT", "FUEL")
    state = State(
        lineage="L1",
        serial=1,
        entries={KEY: StateEntry(KEY, 6, ID), other: StateEntry(other, 1, "WCC2")},
    )
    plan = Plan(
        (
            Change(Action.UPDATE, KEY, 9, before=6, coin_config_id=ID),
            Change(Action.UPDATE, other, 2, before=1, coin_config_id="WCC2"),
        ),
        managed=2,
    )
    journal = FakeJournal()
    with client_with(handler) as client:
        executor = executor_for(
            client, journal, state=state, desired={KEY: 9, other: 2}, parallelism=1
        )
        run(executor, plan)
        report = executor.finish()
    assert seen == ["PATCH", "PATCH"]  # the FUEL update was never sent
    assert report.state is not None
    assert report.state.entries[KEY] == StateEntry(KEY, 6, ID, pending=9)
    assert report.stopped_by is not None and "401" in report.stopped_by
    assert dict(report.failed)[KEY].startswith("outcome unknown")


# --- item 4: a create refused with an id in the answer ---------------------------------


REFUSED_WITH_ID = {"response_code": 7, "response_message": "duplicate", "payload": payload(6)}


@pytest.mark.parametrize("status", [200, 400, 409, 429])
def test_a_create_answer_that_names_an_id_is_never_surely_not_created(status: int) -> None:
    handler, seen = scripted(httpx.Response(status, json=REFUSED_WITH_ID))
    with client_with(handler) as client, pytest.raises(OutcomeUnknownError) as raised:
        client.create(KEY, 6)
    assert seen == ["POST"]  # never resent
    assert f"names coinConfigId {ID}" in str(raised.value)


@pytest.mark.parametrize("status", [200, 400])
def test_a_create_refused_without_an_id_is_a_plain_failure(status: int) -> None:
    body = {"response_code": 7, "response_message": "invalid event"}
    handler, _ = scripted(httpx.Response(status, json=body))
    with client_with(handler) as client, pytest.raises(ApiError) as raised:
        client.create(KEY, 6)
    assert not isinstance(raised.value, OutcomeUnknownError)


def test_apply_marks_a_create_answered_with_an_id_and_an_error_code_uncertain() -> None:
    handler, _ = scripted(httpx.Response(200, json=REFUSED_WITH_ID))
    with client_with(handler) as client:
        executor = executor_for(client, FakeJournal(), desired={KEY: 6}, parallelism=1)
        run(executor, Plan((Change(Action.CREATE, KEY, 6),), managed=0))
        report = executor.finish()
    assert report.state is not None
    assert KEY in report.state.uncertain and KEY not in report.state.entries
    ((key, reason),) = report.uncertain
    assert key == KEY and ID in reason


# --- item 6: a signal while the main thread is inside stop.set() ------------------------


class SignalInsideSet(threading.Event):
    """An Event whose ``set()`` receives SIGINT while it holds its lock, as when Ctrl-C
    arrives during ``stop.set()`` on the error path. A real Event's lock is not
    re-entrant, so a handler that calls ``set()`` again would wait forever; here that
    re-entry is recorded instead of hanging the test."""

    def __init__(self) -> None:
        super().__init__()
        self.guard = threading.Lock()
        self.reentered = False

    def set(self) -> None:
        if not self.guard.acquire(blocking=False):
            self.reentered = True  # the deadlock
            return
        try:
            signal.raise_signal(signal.SIGINT)  # its handler runs here, lock held
            super().set()
        finally:
            self.guard.release()


def test_ctrl_c_during_stop_set_never_reenters_it() -> None:
    stop = SignalInsideSet()
    api = FakeApi()
    executor = executor_for(api, FakeJournal(), stop=stop, parallelism=1)
    with sigint_stops(executor):
        stop.set()  # e.g. halt() after an error; Ctrl-C arrives right now
    assert not stop.reentered, "the signal handler re-entered stop.set()"
    assert executor.interrupted


def test_an_interrupt_from_a_handler_still_stops_new_sends() -> None:
    """The handler only sets a flag; workers see it before their next send, and the
    waiting thread turns it into ``stop`` and calls ``on_stop``."""
    stopped: list[bool] = []
    api = FakeApi()
    executor = executor_for(api, FakeJournal(), parallelism=1, on_stop=lambda: stopped.append(True))
    executor.interrupt("SIGTERM")  # what the handler does, before anything is sent
    run(executor, creates_all())
    report = executor.finish()
    assert api.sent == []
    assert report.interrupted and report.signal_name == "SIGTERM"
    assert executor.stop.is_set() and stopped == [True]
    assert report.not_started == len(KEYS)


def creates_all() -> Plan:
    return Plan(tuple(Change(Action.CREATE, key, DESIRED[key]) for key in KEYS), managed=0)


# --- C3 and C5: the send-time check on every way out ------------------------------------


class Audit:
    """The AuditSink protocol in memory."""

    def __init__(self) -> None:
        self.items: list[AuditRecord] = []

    def record(self, item: AuditRecord) -> None:
        self.items.append(item)

    def close(self) -> None:
        pass


class PairJournal(FakeJournal):
    """A fake journal that writes a result and the next create's intent together, as
    the file and PostgreSQL journals do (so an intent can be journaled ahead)."""

    def append_pair(
        self,
        record: JournalRecord,
        book: Callable[[], None],
        intent: JournalRecord,
        book_intent: Callable[[], None],
        *,
        book_on_failure: bool = False,
    ) -> None:
        self.append(record, book, book_on_failure=book_on_failure)
        self.append(intent, book_intent)


def test_no_intent_is_journaled_ahead_for_a_create_the_configs_refuse() -> None:
    """A is created; the worker's next change, B, asks for an amount the configs no
    longer hold. B's intent is never journaled with A's result, and B is never sent
    (mutant C3 dropped the check made before journaling the next intent)."""
    first, second, _ = KEYS
    api = FakeApi()
    journal = PairJournal()
    desired = {first: DESIRED[first], second: 99}
    plan = Plan(
        (Change(Action.CREATE, first, DESIRED[first]), Change(Action.CREATE, second, 6)),
        managed=0,
    )
    audit = Audit()
    executor = executor_for(api, journal, desired=desired, parallelism=1, audit=audit)
    run(executor, plan)
    report = executor.finish()
    assert api.sent == [("create", first, DESIRED[first])]
    assert [r.key for r in journal.records if r.kind == "intent"] == [first]
    assert dict(report.failed) == {second: "not sent: the configs say amount 99, the plan 6"}
    assert report.state is not None and second not in report.state.uncertain
    assert [(a.action, a.key, a.outcome) for a in audit.items] == [
        (AuditAction.CREATE, first, Outcome.CREATED),
        (AuditAction.CREATE, second, Outcome.FAILED),
    ]


class ReadingApi(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, coin_config_id: str) -> RemoteConfig:
        self.reads.append(coin_config_id)
        return RemoteConfig(coin_config_id, KEY, 6)


@pytest.mark.parametrize("desired", [{}, {KEY: 7}], ids=["not-in-configs", "other-amount"])
def test_an_import_the_configs_do_not_ask_for_is_never_sent(desired: dict[RuleKey, int]) -> None:
    """Mutant C5 sent an import (its GET, then maybe a PATCH) without the send-time check."""
    api = ReadingApi()
    journal = FakeJournal()
    plan = Plan((Change(Action.IMPORT, KEY, 6, coin_config_id=ID),), managed=0)
    audit = Audit()
    executor = executor_for(api, journal, desired=desired, parallelism=1, audit=audit)
    run(executor, plan)
    report = executor.finish()
    assert api.reads == [] and api.sent == []
    assert journal.records == []  # no intent either
    ((key, reason),) = report.failed
    assert key == KEY and reason.startswith("not sent:")
    (item,) = audit.items
    assert (item.action, item.key, item.outcome, item.after, item.coin_config_id) == (
        AuditAction.IMPORT,
        KEY,
        Outcome.FAILED,
        6,
        ID,
    )
    assert item.message == reason
    assert report.state is not None and KEY not in report.state.entries
