"""The postgres serial under concurrent journal writes: writes only lock the environment
row FOR SHARE, yet a saved plan read before or during an apply that changed entries is
stale after it, whether that apply finished or died."""

from __future__ import annotations

import threading
from pathlib import Path

from coins_sync.configs.model import RuleKey
from coins_sync.sandbox import SandboxServer
from coins_sync.state.journal import JournalKind, JournalRecord
from coins_sync.state.model import State
from coins_sync.state.postgres import PostgresStateStore
from tests.conftest import Invoke
from tests.test_postgres_state import team_project, token


def store_for(dsn: str) -> PostgresStateStore:
    return PostgresStateStore("team", "coins_sync", dsn=dsn)


def key(i: int) -> RuleKey:
    return RuleKey("CEKEKCARDS", "DEFAULT", f"EVENT_{i}")


def create(journal: object, i: int) -> None:
    append = journal.append  # type: ignore[attr-defined]
    append(JournalRecord(JournalKind.INTENT, key(i), i, at="t"))
    append(JournalRecord(JournalKind.RESULT, key(i), i, "created", f"ID{i}", "t"))


def snapshot_of(state: State) -> object:
    return lambda: (state, [])


def test_a_plan_read_before_or_during_an_apply_is_stale_after_it(pg_dsn: str) -> None:
    store = store_for(pg_dsn)
    with store.lock("apply"):
        state, _ = store.recover()
        state = store.write(state)
        before = store_for(pg_dsn).read()
        journal = store.journal(state)
        create(journal, 1)
        # the first write after a bump bumps: a plan read before it is stale already
        during = store_for(pg_dsn).read()
        assert during.serial != before.serial
        create(journal, 2)
        checkpointed = journal.checkpoint(snapshot_of(state))  # type: ignore[arg-type]
        after = store_for(pg_dsn).read()
        assert after.serial == checkpointed.serial
        assert after.serial not in (before.serial, during.serial)
        # after a checkpoint the row is clean: the next write bumps again, and is recorded
        create(journal, 3)
        late = store_for(pg_dsn).read()
        assert late.serial != after.serial
        assert set(late.entries) == {key(1), key(2), key(3)}
        final = journal.checkpoint(snapshot_of(state))  # type: ignore[arg-type]
        journal.close()
    assert store_for(pg_dsn).read().serial == final.serial != late.serial
    # a finished apply leaves a clean row: the next run's recovery keeps the serial
    with store.lock("next"):
        recovered, _ = store.recover()
    assert recovered.serial == final.serial


def test_a_plan_read_during_an_apply_that_died_is_stale_after_recovery(pg_dsn: str) -> None:
    store = store_for(pg_dsn)
    with store.lock("apply"):
        state, _ = store.recover()
        journal = store.journal(store.write(state))
        create(journal, 1)
        during = store_for(pg_dsn).read()
        create(journal, 2)  # then the run dies: no checkpoint
        journal.close()
    assert store_for(pg_dsn).read().serial == during.serial
    other = store_for(pg_dsn)
    with other.lock("next"):
        recovered, _ = other.recover()
    assert recovered.serial != during.serial
    assert set(recovered.entries) == {key(1), key(2)}


def test_concurrent_writers_all_recorded_and_serial_bumped(pg_dsn: str) -> None:
    store = store_for(pg_dsn)
    with store.lock("apply"):
        state, _ = store.recover()
        state = store.write(state)
        before = store_for(pg_dsn).read().serial
        journal = store.journal(state)
        errors: list[BaseException] = []

        def worker(offset: int) -> None:
            try:
                for i in range(offset, offset + 25):
                    create(journal, i)
                    if i % 10 == 0:
                        journal.checkpoint(snapshot_of(state))  # type: ignore[arg-type]
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t * 100,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        final = journal.checkpoint(snapshot_of(state))  # type: ignore[arg-type]
        journal.close()
    after = store_for(pg_dsn).read()
    assert len(after.entries) == 200 and not after.uncertain
    assert after.serial == final.serial > before


def test_saved_plan_is_stale_after_an_apply_from_this_copy(
    project: Path, sandbox: SandboxServer, pg_dsn: str, invoke: Invoke
) -> None:
    team_project(project, sandbox.url)
    assert invoke("plan", "--out", "before.json").exit_code == 0
    assert invoke("apply", "--yes", env=token()).exit_code == 0
    result = invoke("apply", "before.json", "--yes", env=token())
    assert result.exit_code == 1
    assert "stale plan" in result.output
    # a plan made after a finished apply is not stale
    assert invoke("plan", "--out", "after.json").exit_code == 0
    result = invoke("apply", "after.json", "--yes", env=token())
    assert result.exit_code == 0, result.output
    assert sandbox.stats["creates"] == 2
