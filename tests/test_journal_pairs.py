"""One journal write per create: a worker journals its next create's intent in the same
write as the result it just got (one fsync on the file backend, one statement on
postgres).

What is proved here, on both backends: every intent is durable before its create is
sent; a create costs one journal write, not two; and an intent journaled ahead whose
create is never sent (the run stopped in between) is closed, so it never becomes a
false uncertain create.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coins_sync.apply import ApplyStoppedError, Executor, wait
from coins_sync.apply.ledger import can_pair
from coins_sync.configs.model import RuleKey
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import StateError
from coins_sync.plan.reconcile import Action, Change, Plan
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import JournalKind, JournalRecord, PairJournal, Snapshot
from coins_sync.state.model import State
from coins_sync.state.store import StateStore

KEYS = [RuleKey("ACME", "DEFAULT", f"EVENT_{n}") for n in range(6)]
DESIRED = {key: 10 + n for n, key in enumerate(KEYS)}


class CountingJournal:
    """Delegates to a real journal; counts its writes and can run a hook after a pair."""

    def __init__(self, inner: PairJournal) -> None:
        self.inner = inner
        self.writes = 0
        self.after_pair: Callable[[], None] = lambda: None

    def append(
        self,
        record: JournalRecord,
        book: Callable[[], None] | None = None,
        *,
        book_on_failure: bool = False,
    ) -> None:
        self.writes += 1
        self.inner.append(record, book, book_on_failure=book_on_failure)

    def append_pair(
        self,
        record: JournalRecord,
        book: Callable[[], None],
        intent: JournalRecord,
        book_intent: Callable[[], None],
        *,
        book_on_failure: bool = False,
    ) -> None:
        self.writes += 1
        self.inner.append_pair(record, book, intent, book_intent, book_on_failure=book_on_failure)
        self.after_pair()

    def checkpoint(self, snapshot: Snapshot) -> State:
        return self.inner.checkpoint(snapshot)

    def close(self) -> None:
        self.inner.close()


class CheckingApi:
    """Creates in memory; before each create, ``durable(key)`` must say its intent is
    already stored (read back from the backend, not from this process's memory)."""

    def __init__(self, durable: Callable[[RuleKey], bool]) -> None:
        self.durable = durable
        self.lock = threading.Lock()
        self.sent: list[RuleKey] = []
        self.problems: list[str] = []

    def create(self, key: RuleKey, amount: int) -> RemoteConfig:
        if not self.durable(key):
            self.problems.append(f"{key}: sent before its intent was durable")
        with self.lock:
            self.sent.append(key)
            return RemoteConfig(f"PAIR{len(self.sent):04d}", key, amount)

    def update(
        self, coin_config_id: str, amount: int, *, key: RuleKey | None = None
    ) -> RemoteConfig:
        raise AssertionError("no updates here")

    def get(self, coin_config_id: str) -> RemoteConfig:
        raise AssertionError("no imports here")


def creates() -> Plan:
    return Plan(tuple(Change(Action.CREATE, key, DESIRED[key]) for key in KEYS), managed=0)


@contextmanager
def file_backend(tmp_path: Path) -> Iterator[tuple[StateStore, Callable[[RuleKey], bool]]]:
    store = FileStateStore(tmp_path / "state" / "team.json")

    def durable(key: RuleKey) -> bool:
        text = store.journal_path.read_text("utf-8") if store.journal_path.exists() else ""
        return f'"event":"{key.event}","kind":"intent"' in text

    with store.lock("test"):
        yield store, durable


@contextmanager
def pg_backend(dsn: str, tmp_path: Path) -> Iterator[tuple[StateStore, Callable[[RuleKey], bool]]]:
    import psycopg

    from coins_sync.state.postgres import PostgresStateStore

    store = PostgresStateStore("team", "pairs", dsn=dsn, rescue_path=tmp_path / "rescue.jsonl")
    with psycopg.connect(dsn, autocommit=True) as other, store.lock("test"):

        def durable(key: RuleKey) -> bool:
            row = other.execute(
                "SELECT count(*) FROM pairs.operation WHERE event = %s AND outcome IS NULL",
                (key.event,),
            ).fetchone()
            return bool(row and row[0] == 1)

        yield store, durable


@contextmanager
def backend(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[StateStore, Callable[[RuleKey], bool]]]:
    if name == "file":
        with file_backend(tmp_path) as found:
            yield found
    else:
        with pg_backend(request.getfixturevalue("pg_dsn"), tmp_path) as found:
            yield found


def run(store: StateStore, api: CheckingApi) -> tuple[Executor, CountingJournal]:
    state, _ = store.recover()
    state = store.write(state)
    inner = store.journal(state)
    assert can_pair(inner)
    journal = CountingJournal(inner)
    executor = Executor(api, journal, state, desired=DESIRED, parallelism=1)
    return executor, journal


@pytest.mark.parametrize("name", ["file", "postgres"])
def test_each_create_costs_one_journal_write_and_its_intent_is_durable_first(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with backend(name, tmp_path, request) as (store, durable):
        api = CheckingApi(durable)
        executor, journal = run(store, api)
        wait(executor, executor.start(creates()), tick=0.01)
        report = executor.finish()
        assert not api.problems
        assert len(report.created) == len(KEYS)
        # the first intent alone, then each result with the next intent, the last alone
        assert journal.writes == len(KEYS) + 1
        final = store.read()
        assert sorted(final.entries) == sorted(KEYS)
        assert not final.uncertain


@pytest.mark.parametrize("name", ["file", "postgres"])
def test_a_stop_between_an_intent_journaled_ahead_and_its_send_closes_the_intent(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with backend(name, tmp_path, request) as (store, durable):
        api = CheckingApi(durable)
        executor, journal = run(store, api)
        # a Ctrl-C lands right after the first result was written with the next intent
        journal.after_pair = lambda: executor.interrupt("SIGINT")
        wait(executor, executor.start(creates()), tick=0.01)
        report = executor.finish()
        assert api.sent == KEYS[:1]
        assert report.created == KEYS[:1]
        assert report.not_started == len(KEYS) - 1
        final = store.read()
        assert list(final.entries) == KEYS[:1]
        assert not final.uncertain  # the next create's intent was closed: it was not sent
        again, _ = store.recover()
        assert not again.uncertain


def test_the_fold_drops_an_intent_closed_as_not_sent() -> None:
    from coins_sync.state.journal import fold

    key = KEYS[0]
    intent = JournalRecord(JournalKind.INTENT, key, 10, at="2026-01-01T00:00:00Z")
    closed = JournalRecord(JournalKind.RESULT, key, 10, "failed", at="2026-01-01T00:00:01Z")
    assert key in fold(State(lineage="L"), [intent]).uncertain
    assert not fold(State(lineage="L"), [intent, closed]).uncertain


def test_an_intent_journaled_ahead_survives_a_mid_run_fold(tmp_path: Path) -> None:
    """The intent written with a result is open until its own result: a fold meanwhile
    keeps it in the journal, so a crash before the answer makes it uncertain, never
    silently forgotten (and re-sent as a duplicate)."""
    from coins_sync.apply.ledger import Ledger

    with file_backend(tmp_path) as (store, durable):
        state = store.write(store.recover()[0])
        ledger = Ledger(store.journal(state), state)
        first, second = KEYS[:2]
        ledger.intent(first, DESIRED[first])
        ahead = ledger.created(first, DESIRED[first], "PAIR0001", then=(second, DESIRED[second]))
        assert ahead is not None and durable(second)
        ledger.fold()  # a mid-run fold before the second create is answered
        assert durable(second)  # still journaled after the fold
        crashed = store.read()  # what the next command sees if we die now
        assert second in crashed.uncertain
        assert first in crashed.entries


def test_a_failed_combined_write_still_books_the_confirmed_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server confirmed a create; the write of its result (with the next intent)
    fails on a full disk. The result is kept in memory and folded at the end, and the
    next create, whose intent never reached the disk, is not sent."""
    import errno

    from coins_sync.state.files import AppendLog

    real = AppendLog.append_locked
    calls = {"n": 0}

    def second_write_fails(self: AppendLog, line: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first result, paired with the second intent
            self.close_locked()
            raise StateError(f"{self.path}: cannot append to the journal: [Errno {errno.ENOSPC}]")
        real(self, line)

    with file_backend(tmp_path) as (store, durable):
        api = CheckingApi(durable)
        executor, _ = run(store, api)
        monkeypatch.setattr(AppendLog, "append_locked", second_write_fails)
        wait(executor, executor.start(creates()), tick=0.01)
        with pytest.raises(ApplyStoppedError, match="cannot append to the journal") as stopped:
            executor.finish()
        report = stopped.value.report
        monkeypatch.setattr(AppendLog, "append_locked", real)
        assert not api.problems
        assert api.sent == KEYS[:1]  # nothing after the failed write
        final = store.read()
        assert list(final.entries) == KEYS[:1]  # the confirmed create was not lost
        assert final.entries[KEYS[0]].coin_config_id == "PAIR0001"
        assert not final.uncertain
        assert report.created == KEYS[:1]
