"""The epoch half of the postgres fence, on its own: another run bumps the lock epoch
while this run's lock session lives on and still holds the advisory lock. Every write of
the old run (journal, state, recovery, checkpoint and audit) must then be refused, and a
fenced apply must say which confirmed results are only in its rescue file.

``state force-unlock`` both bumps the epoch and ends the holder's session, so tests that
use it pass on the session half alone; these tests keep the session alive (they kill the
mutants that drop ``lock_epoch = %(epoch)s`` from the fence: P5, P7 and L5).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.errors import CheckpointError, StateError
from coins_sync.sandbox import SandboxServer
from coins_sync.sandbox.messages import SandboxRequest, SandboxResponse
from coins_sync.state.audit import AuditAction, AuditRecord
from coins_sync.state.journal import JournalKind, JournalRecord, Outcome
from coins_sync.state.model import State, StateEntry
from coins_sync.state.postgres import FencedError, PostgresStateStore
from tests.conftest import Invoke
from tests.test_postgres_state import MEAL, team_project, token

INVOICE = RuleKey("CEKEKCARDS", "DEFAULT", "INVOICE_PAYMENT")


def store_for(dsn: str, rescue: Path | None = None) -> PostgresStateStore:
    return PostgresStateStore("team", "coins_sync", dsn=dsn, rescue_path=rescue)


def bump_epoch(dsn: str) -> None:
    """What another run's lock take does to the old run's fence, and nothing else: the
    old run's lock session lives on, still holding the advisory lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE coins_sync.environment SET lock_epoch = lock_epoch + 1")
        held = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND a.application_name LIKE 'coins-sync lock %'"
        ).fetchone()
    assert held == (1,), "the old run's lock session must still hold the lock"


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def serial_and_dirty(dsn: str) -> tuple[Any, ...]:
    return rows(dsn, "SELECT serial, dirty FROM coins_sync.environment")[0]


def audit_outcomes(dsn: str) -> list[str]:
    return [r[0] for r in rows(dsn, "SELECT record->>'outcome' FROM coins_sync.audit ORDER BY id")]


@contextlib.contextmanager
def applying(dsn: str, rescue: Path) -> Iterator[tuple[PostgresStateStore, Any, Any]]:
    """A store that holds the lock, its audit log and an apply's journal."""
    store = store_for(dsn, rescue)
    with store.lock("old run"):
        state, _ = store.recover()
        state = store.write(state)
        audit = store.audit_log({})
        journal = store.journal(state)
        try:
            yield store, audit, journal
        finally:
            journal.close()


def created(key: RuleKey, config_id: str) -> JournalRecord:
    return JournalRecord(JournalKind.RESULT, key, 6, Outcome.CREATED, config_id, "t")


def intent(key: RuleKey) -> JournalRecord:
    return JournalRecord(JournalKind.INTENT, key, 6, at="t")


def test_a_result_after_an_epoch_bump_is_refused_and_only_rescued(
    pg_dsn: str, tmp_path: Path
) -> None:
    """The shared fence of a write on a dirty row (the intent made it dirty)."""
    rescue = tmp_path / "rescue.jsonl"
    with applying(pg_dsn, rescue) as (_, audit, journal):
        journal.append(intent(MEAL))
        bump_epoch(pg_dsn)
        audit.record(AuditRecord(AuditAction.CREATE, MEAL, Outcome.CREATED, None, 6, "ID1"))
        with pytest.raises(StateError, match="lost the state lock"):
            journal.append(created(MEAL, "ID1"))
        # the checkpoint names what is only in the rescue file
        with pytest.raises(CheckpointError) as caught:
            journal.checkpoint(lambda: (State.new(), []))
    assert caught.value.unrecorded == ((MEAL, "ID1"),)
    assert caught.value.kept == rescue
    assert "only in the rescue file" in str(caught.value) and "as ID1" in str(caught.value)
    assert '"ID1"' in rescue.read_text()
    assert store_for(pg_dsn).read().entries == {}
    assert audit_outcomes(pg_dsn) == []  # the result's audit row did not land either


def test_an_intent_on_a_clean_row_after_an_epoch_bump_is_refused(
    pg_dsn: str, tmp_path: Path
) -> None:
    """The bumping fence: the first write after a checkpoint."""
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (_, _audit, journal):
        journal.append(intent(MEAL))
        journal.append(created(MEAL, "ID1"))
        journal.checkpoint(lambda: (State.new(), []))
        before = serial_and_dirty(pg_dsn)
        bump_epoch(pg_dsn)
        with pytest.raises(StateError, match="another run took the lock"):
            journal.append(intent(INVOICE))
    assert serial_and_dirty(pg_dsn) == before
    assert not store_for(pg_dsn).read().uncertain


def test_a_result_and_the_next_intent_after_an_epoch_bump_are_refused(
    pg_dsn: str, tmp_path: Path
) -> None:
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (_, _audit, journal):
        journal.append(intent(MEAL))
        bump_epoch(pg_dsn)
        booked: list[str] = []
        with pytest.raises(StateError, match="lost the state lock"):
            journal.append_pair(
                created(MEAL, "ID1"),
                lambda: booked.append("result"),
                intent(INVOICE),
                lambda: booked.append("intent"),
                book_on_failure=True,
            )
    assert booked == ["result"]  # the result is booked (and rescued); the intent is not
    state = store_for(pg_dsn).read()
    assert state.entries == {} and set(state.uncertain) == {MEAL}


def test_the_checkpoint_after_an_epoch_bump_is_refused_and_bumps_nothing(
    pg_dsn: str, tmp_path: Path
) -> None:
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (_, _audit, journal):
        journal.append(intent(MEAL))
        journal.append(created(MEAL, "ID1"))
        before = serial_and_dirty(pg_dsn)
        assert before[1] is True
        bump_epoch(pg_dsn)
        with pytest.raises(CheckpointError, match="lost the state lock") as caught:
            journal.checkpoint(lambda: (State.new(), []))
    assert caught.value.unrecorded == ()  # every result was committed before the bump
    assert "every result of this run was recorded" in str(caught.value)
    assert serial_and_dirty(pg_dsn) == before


def test_audit_records_after_an_epoch_bump_are_refused(pg_dsn: str, tmp_path: Path) -> None:
    failed = AuditRecord(AuditAction.UPDATE, MEAL, Outcome.FAILED, 6, 7, "ID1", "refused")
    # during an apply, through the journal
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (_, audit, _journal):
        audit.record(failed)
        bump_epoch(pg_dsn)
        with pytest.raises(StateError, match="lost the state lock"):
            audit.record(failed)
    assert audit_outcomes(pg_dsn) == ["failed"]
    # outside an apply, as a statement of its own, while the lock is held
    store = store_for(pg_dsn)
    with store.lock("state rm"):
        audit = store.audit_log({})
        audit.record(failed)
        bump_epoch(pg_dsn)
        with pytest.raises(StateError, match="lost the state lock"):
            audit.record(failed)
    assert audit_outcomes(pg_dsn) == ["failed", "failed"]


def _write(store: PostgresStateStore, state: State) -> object:
    return store.write(state.with_entry(StateEntry(INVOICE, 10, "ID2")))


def _replace(store: PostgresStateStore, state: State) -> object:
    return store.replace_state(state.with_entry(StateEntry(INVOICE, 10, "ID2")))


def _recover(store: PostgresStateStore, state: State) -> object:
    return store.recover()


@pytest.mark.parametrize("write", [_write, _replace, _recover], ids=["write", "push", "recover"])
def test_state_writes_after_an_epoch_bump_are_refused(
    pg_dsn: str, write: Callable[[PostgresStateStore, State], object]
) -> None:
    """The fence of the writes on the lock session itself."""
    store = store_for(pg_dsn)
    with store.lock("old run"):
        state, _ = store.recover()
        state = store.write(state.with_entry(StateEntry(MEAL, 6, "ID1")))
        before = serial_and_dirty(pg_dsn)
        bump_epoch(pg_dsn)
        with pytest.raises(FencedError, match="another run took the lock"):
            write(store, state)
    assert set(store_for(pg_dsn).read().entries) == {MEAL}
    assert serial_and_dirty(pg_dsn) == before


def test_after_force_unlock_the_old_runs_audit_rows_do_not_land(
    pg_dsn: str, tmp_path: Path
) -> None:
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (_, audit, journal):
        journal.append(intent(MEAL))
        assert store_for(pg_dsn).force_unlock() is not None
        skipped = AuditRecord(AuditAction.UPDATE, INVOICE, Outcome.FAILED, 1, 2, "ID9", "no")
        with pytest.raises(StateError):
            audit.record(skipped)
        audit.record(AuditRecord(AuditAction.CREATE, MEAL, Outcome.CREATED, None, 6, "ID1"))
        with pytest.raises(StateError):
            journal.append(created(MEAL, "ID1"))
    assert audit_outcomes(pg_dsn) == []


# -- through the CLI ----------------------------------------------------------------


@contextlib.contextmanager
def on_create(server: SandboxServer, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` once, when the first create reaches the sandbox (before it is
    answered): the server still creates the config and answers it."""
    app = server.app
    original = app.handle
    done: list[bool] = []

    def handle(request: SandboxRequest) -> SandboxResponse:
        if request.method == "POST" and "create-coins-config" in request.target and not done:
            done.append(True)
            action()
        return original(request)

    app.handle = handle  # type: ignore[method-assign]
    try:
        yield
    finally:
        del app.handle


ONE_RULE = """\
companyId: CEKEKCARDS
configuration: DEFAULT
rules:
  - event: MEAL_CARD_PAYMENT
    amount: 6
"""


@pytest.mark.parametrize("fence", ["epoch", "force-unlock"])
def test_a_fenced_apply_lists_what_is_only_in_the_rescue_file_and_exits_1(
    project: Path, sandbox: SandboxServer, pg_dsn: str, invoke: Invoke, fence: str
) -> None:
    team_project(project, sandbox.url)
    (project / "configs" / "cekek.yaml").write_text(ONE_RULE)

    def take_the_lock() -> None:
        if fence == "epoch":
            bump_epoch(pg_dsn)
        else:
            store_for(pg_dsn).force_unlock()

    with on_create(sandbox, take_the_lock):
        result = invoke("apply", "--yes", "--parallelism", "1", env=token())
    config_id = sandbox.configs()[0]["coinConfigId"]
    assert result.exit_code == 1, result.output
    assert "Every result confirmed so far is recorded" not in result.output
    assert "only in the rescue file" in result.output
    assert f"confirmed  {MEAL} coinConfigId={config_id}" in result.output
    assert "Traceback" not in result.output
    rescue = project / "state" / "team.pg-rescue.jsonl"
    assert config_id in rescue.read_text()
    # the database itself holds nothing of the fenced run (read without the rescue file,
    # which a plain read folds in memory only)
    assert store_for(pg_dsn, rescue=project / "no-rescue.jsonl").read().entries == {}
    assert store_for(pg_dsn).read().entries[MEAL].coin_config_id == config_id
    assert "created" not in audit_outcomes(pg_dsn)

    # the next run folds the rescue file in and creates nothing again
    result = invoke("apply", "--yes", env=token())
    assert result.exit_code == 0, result.output
    assert "folded" in result.output
    assert store_for(pg_dsn).read().entries[MEAL].coin_config_id == config_id
    assert sandbox.stats["creates"] == 1
    assert audit_outcomes(pg_dsn) == ["created"]  # recorded from the rescue file
    assert not rescue.exists()


def test_a_server_message_with_nul_is_recorded_escaped_not_a_lost_database(
    project: Path, sandbox: SandboxServer, pg_dsn: str, invoke: Invoke
) -> None:
    team_project(project, sandbox.url)
    (project / "configs" / "cekek.yaml").write_text(ONE_RULE)
    app = sandbox.app
    app.handle = lambda request: app.reject(  # type: ignore[method-assign]
        request.target, _refusal("bad\x00value \ud800 here")
    )
    try:
        result = invoke("apply", "--yes", env=token())
    finally:
        del app.handle
    assert result.exit_code == 1, result.output
    assert "lost the database" not in result.output
    assert "1 failed" in result.output
    assert not (project / "state" / "team.pg-rescue.jsonl").exists()
    messages = [r[0] for r in rows(pg_dsn, "SELECT record->>'message' FROM coins_sync.audit")]
    assert len(messages) == 1 and "bad\\x00value \\ud800 here" in messages[0], messages


def _refusal(message: str) -> Any:
    from coins_sync.sandbox.messages import HttpError

    return HttpError(400, message)


def test_a_schema_named_like_a_keyword_works(
    project: Path, sandbox: SandboxServer, pg_dsn: str, invoke: Invoke
) -> None:
    team_project(project, sandbox.url, schema="user")
    assert invoke("validate").exit_code == 0
    result = invoke("apply", "--yes", env=token())
    assert result.exit_code == 0, result.output
    assert invoke("plan", "--detailed-exitcode").exit_code == 0
    listed = json.loads(invoke("state", "list", "--format", "json").output)
    assert len(listed["entries"]) == 2
    assert len(rows(pg_dsn, 'SELECT * FROM "user".entry')) == 2
    assert len(rows(pg_dsn, 'SELECT * FROM "user".audit')) == 2
    report = invoke("report", "--format", "json")
    assert report.exit_code == 0, report.output


# -- the lock session ended by the server, not by another run -------------------------


def test_the_servers_idle_session_timeout_does_not_end_a_runs_lock(
    pg_dsn: str, tmp_path: Path
) -> None:
    """The lock session sits idle while the journal writes on its own connection; a
    server with idle_session_timeout must not end it (and so fence the run)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        name = conn.info.dbname
        conn.execute(f"ALTER DATABASE {name} SET idle_session_timeout = '100ms'")
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (store, _audit, journal):
        journal.append(intent(MEAL))
        time.sleep(0.5)  # well past the timeout, for both the lock and the journal session
        journal.append(created(MEAL, "ID1"))
        journal.checkpoint(lambda: (State.new(), []))
        store.write(store.read().with_entry(StateEntry(INVOICE, 10, "ID2")))
    assert set(store_for(pg_dsn).read().entries) == {MEAL, INVOICE}


def lock_session_pid(dsn: str) -> int:
    found = rows(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'coins-sync lock %'",
    )
    assert len(found) == 1, found
    return int(found[0][0])


def test_a_lock_session_ended_by_the_server_is_named_not_blamed_on_another_run(
    pg_dsn: str, tmp_path: Path
) -> None:
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (store, _audit, journal):
        journal.append(intent(MEAL))
        # as if idle_session_timeout could not be turned off for the session (a pooler
        # in between, say): the server ends the idle lock session
        store._lock.conn.execute("SET idle_session_timeout = '50ms'")
        pid = lock_session_pid(pg_dsn)
        for _ in range(200):  # bounded: the server ends it within the timeout
            time.sleep(0.05)
            if pid not in {r[0] for r in rows(pg_dsn, "SELECT pid FROM pg_stat_activity")}:
                break
        with pytest.raises(StateError) as caught:
            journal.append(created(MEAL, "ID1"))
    message = str(caught.value)
    assert "lost the state lock" in message
    assert "idle_session_timeout ended it" in message, message
    assert "another run" not in message


def test_a_lock_session_ended_by_an_administrator_is_named(pg_dsn: str, tmp_path: Path) -> None:
    with applying(pg_dsn, tmp_path / "rescue.jsonl") as (_, _audit, journal):
        journal.append(intent(MEAL))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (lock_session_pid(pg_dsn),))
        with pytest.raises(StateError) as caught:
            journal.append(created(MEAL, "ID1"))
    message = str(caught.value)
    assert "an administrator ended it" in message, message
    assert "another run" not in message
