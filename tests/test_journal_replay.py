"""A journal replayed after a crash: the same scenario on each backend (issue 20:
mutants F5, F6 and F7 of the fold).

A run that dies before its final fold leaves its results in the file backend's journal
(or its rescue file), or in the PostgreSQL backend's rescue file. The next command
replays them; what it must then hold does not depend on the backend, so every scenario
runs against each through one parametrised fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import JournalKind, JournalRecord, Outcome
from coins_sync.state.model import State, StateEntry, Uncertain

KEY = RuleKey("ACME", "DEFAULT", "MEAL")
AT = "2026-01-01T00:00:00Z"  # every intent's time
LATER = "2026-01-01T00:00:09Z"  # every result's time

#: (the state before the run, the lines the run left) -> the state the next command sees
Replay = Callable[[State, Sequence[JournalRecord]], State]


def intent(amount: int) -> JournalRecord:
    return JournalRecord(JournalKind.INTENT, KEY, amount, at=AT)


def result(outcome: Outcome, amount: int, config_id: str | None = None) -> JournalRecord:
    return JournalRecord(JournalKind.RESULT, KEY, amount, outcome, config_id, at=LATER)


def lines(state: State, records: Sequence[JournalRecord]) -> bytes:
    """The lines a run left, written under the state it ran on (its lineage and its
    serial, the fence a rescue or journal line carries)."""
    return b"".join(record.to_line(state.lineage, state.serial) for record in records)


def file_replay(tmp_path: Path, where: str) -> Replay:
    def replay(before: State, records: Sequence[JournalRecord]) -> State:
        store = FileStateStore(tmp_path / "state" / "default.json")
        store.path.parent.mkdir()
        written = store.write(before)
        target = store.journal_path if where == "journal" else store.rescue_path
        target.write_bytes(lines(written, records))
        with store.lock("test"):
            state, _ = store.recover()
        return state

    return replay


def postgres_replay(tmp_path: Path, dsn: str) -> Replay:
    from coins_sync.state.postgres import PostgresStateStore

    def replay(before: State, records: Sequence[JournalRecord]) -> State:
        rescue = tmp_path / "default.pg-rescue.jsonl"
        store = PostgresStateStore("team", dsn=dsn, rescue_path=rescue)
        with store.lock("test"):
            written = store.write(before)
        rescue.write_bytes(lines(written, records))
        with store.lock("test"):
            state, _ = store.recover()
        return state

    return replay


@pytest.fixture(params=["file-journal", "file-rescue", "postgres-rescue"])
def replay(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Replay]:
    """The same crash, replayed by each backend (the PostgreSQL one in a fresh database
    of the session's throw-away cluster)."""
    if request.param == "postgres-rescue":
        dsn: Any = request.getfixturevalue("pg_dsn")
        yield postgres_replay(tmp_path, dsn)
    else:
        yield file_replay(tmp_path, request.param.removeprefix("file-"))


@pytest.fixture(params=["journal", "rescue"])
def file_only(request: pytest.FixtureRequest, tmp_path: Path) -> Replay:
    """The file backend alone: PostgreSQL keeps its intents in the database (an open
    operation row becomes uncertain there), so its rescue file holds results only."""
    return file_replay(tmp_path, request.param)


def test_a_create_with_an_unknown_outcome_is_uncertain_after_replay(replay: Replay) -> None:
    """F6: the fold ignored "unknown" results, so the key was neither an entry nor
    uncertain, and the next plan created it again."""
    state = replay(State("L"), [intent(6), result(Outcome.UNKNOWN, 6)])
    assert KEY not in state.entries
    assert state.uncertain[KEY].amount == 6
    assert state.uncertain[KEY].since in (AT, LATER)


def test_a_create_sent_and_never_answered_is_uncertain_since_its_intent(
    file_only: Replay,
) -> None:
    state = file_only(State("L"), [intent(6)])
    assert state.uncertain == {KEY: Uncertain(KEY, 6, AT)}
    assert not state.entries


def test_a_create_closed_as_not_sent_is_dropped(replay: Replay) -> None:
    state = replay(State("L"), [intent(6), result(Outcome.FAILED, 6)])
    assert not state.uncertain and not state.entries


def test_a_create_confirmed_after_an_uncertain_one_is_no_longer_uncertain(
    replay: Replay,
) -> None:
    """F5: a key re-created (``--retry-uncertain``) stayed uncertain as well as recorded."""
    before = State("L", uncertain={KEY: Uncertain(KEY, 6, AT)})
    state = replay(before, [intent(6), result(Outcome.CREATED, 6, "WCC7")])
    assert state.entries[KEY] == StateEntry(KEY, 6, "WCC7")
    assert KEY not in state.uncertain


def test_an_unknown_then_confirmed_create_in_one_journal_is_recorded_once(
    replay: Replay,
) -> None:
    records = [
        intent(6),
        result(Outcome.UNKNOWN, 6),
        intent(6),
        result(Outcome.CREATED, 6, "WCC8"),
    ]
    state = replay(State("L"), records)
    assert state.entries[KEY] == StateEntry(KEY, 6, "WCC8")
    assert not state.uncertain


def test_an_update_with_an_unknown_outcome_keeps_its_pending_amount_after_replay(
    replay: Replay,
) -> None:
    """F7: the fold lost ``pendingAmount``, so the next plan trusted the old amount."""
    before = State("L", entries={KEY: StateEntry(KEY, 6, "WCC1")})
    state = replay(before, [result(Outcome.UNVERIFIED, 9, "WCC1")])
    assert state.entries[KEY] == StateEntry(KEY, 6, "WCC1", pending=9)


def test_a_confirmed_update_after_an_unknown_one_clears_the_mark(replay: Replay) -> None:
    before = State("L", entries={KEY: StateEntry(KEY, 6, "WCC1")})
    records = [result(Outcome.UNVERIFIED, 9, "WCC1"), result(Outcome.UPDATED, 9, "WCC1")]
    state = replay(before, records)
    assert state.entries[KEY] == StateEntry(KEY, 9, "WCC1")
