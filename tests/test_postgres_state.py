"""The postgres state backend through the CLI: every command works as on the file backend,
and two working copies share one state. Runs against a throw-away cluster (conftest)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.errors import LockError, StateError
from coins_sync.sandbox import SandboxServer
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import JournalKind, JournalRecord
from coins_sync.state.model import State, StateEntry
from coins_sync.state.postgres import PostgresStateStore
from tests.conftest import SANDBOX_TOKEN, Invoke, write

RULES = """\
companyId: CEKEKCARDS
configuration: DEFAULT
rules:
  - event: MEAL_CARD_PAYMENT
    amount: 6
  - event: INVOICE_PAYMENT
    amount: 10
"""
MEAL = RuleKey("CEKEKCARDS", "DEFAULT", "MEAL_CARD_PAYMENT")
INVOICE = RuleKey("CEKEKCARDS", "DEFAULT", "INVOICE_PAYMENT")


def team_project(folder: Path, api_url: str, schema: str = "coins_sync") -> Path:
    """A working copy whose `team` environment keeps its state in PostgreSQL."""
    write(
        folder / "pyproject.toml",
        f"""\
[tool.coins-sync]
default_environment = "team"

[tool.coins-sync.environments.team]
api_url = "{api_url}"
backend = "postgres"
pg_schema = "{schema}"
""",
    )
    write(folder / "configs" / "cekek.yaml", RULES)
    return folder


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def team(project: Path, sandbox: SandboxServer, pg_dsn: str) -> Path:
    return team_project(project, sandbox.url)


def token() -> dict[str, str]:
    return {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}


def store_for(dsn: str, env: str = "team", schema: str = "coins_sync") -> PostgresStateStore:
    return PostgresStateStore(env, schema, dsn=dsn)


def test_plan_apply_list_report_on_postgres_write_no_state_file(
    team: Path, invoke: Invoke, sandbox: SandboxServer, pg_dsn: str
) -> None:
    before = files_under(team)
    result = invoke("plan", "--detailed-exitcode")
    assert result.exit_code == 2, result.output
    assert "+ create" in result.output or "create" in result.output

    result = invoke("apply", "--yes", env=token())
    assert result.exit_code == 0, result.output
    assert "2 created" in result.output
    assert len(sandbox.configs()) == 2

    result = invoke("plan", "--detailed-exitcode")
    assert result.exit_code == 0, result.output

    listed = invoke("state", "list", "--format", "json")
    data = json.loads(listed.output)
    assert {e["event"] for e in data["entries"]} == {"MEAL_CARD_PAYMENT", "INVOICE_PAYMENT"}
    ids = {c["coinConfigId"] for c in sandbox.configs()}
    assert {e["coinConfigId"] for e in data["entries"]} == ids
    text = invoke("state", "list").output
    assert "postgres" in text and "schema coins_sync" in text

    report = invoke("report", "--format", "json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)
    flat = json.dumps(rows)
    assert flat.count('"created"') >= 2  # last change of each rule comes from the DB audit

    # no state, journal or audit file on disk for a postgres environment
    assert files_under(team) == before


def test_two_working_copies_share_one_state(
    tmp_path: Path, project: Path, sandbox: SandboxServer, pg_dsn: str, invoke: Invoke
) -> None:
    alice = team_project(project, sandbox.url)
    bob = team_project(tmp_path / "bob", sandbox.url)
    result = invoke("apply", "--yes", env=token())  # alice, in the project folder
    assert result.exit_code == 0, result.output

    import contextlib

    from click.testing import CliRunner

    from coins_sync.cli import cli

    with contextlib.chdir(bob):
        plan = CliRunner().invoke(cli, ["plan", "--detailed-exitcode"], catch_exceptions=False)
        assert plan.exit_code == 0, plan.output  # bob sees what alice applied
        write(bob / "configs" / "cekek.yaml", RULES.replace("amount: 6", "amount: 7"))
        applied = CliRunner().invoke(cli, ["apply", "--yes"], env=token(), catch_exceptions=False)
        assert applied.exit_code == 0, applied.output
        assert "1 updated" in applied.output
    write(alice / "configs" / "cekek.yaml", RULES.replace("amount: 6", "amount: 7"))
    assert invoke("plan", "--detailed-exitcode").exit_code == 0
    assert sandbox.stats["creates"] == 2


def test_saved_plan_is_stale_once_another_copy_applied(
    tmp_path: Path, project: Path, sandbox: SandboxServer, pg_dsn: str, invoke: Invoke
) -> None:
    team_project(project, sandbox.url)
    assert invoke("plan", "--out", "plan.json").exit_code == 0
    # another working copy applies meanwhile
    store = store_for(pg_dsn)
    with store.lock("test"):
        state, _ = store.recover()
        store.write(state)  # creates the lineage
    result = invoke("apply", "plan.json", "--yes", env=token())
    assert result.exit_code == 1
    assert "stale plan" in result.output
    assert sandbox.stats["creates"] == 0
    assert invoke("plan", "--out", "plan.json").exit_code == 0
    result = invoke("apply", "plan.json", "--yes", env=token())
    assert result.exit_code == 0, result.output


def test_state_rm_and_import_on_postgres(
    team: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    assert invoke("apply", "--yes", env=token()).exit_code == 0
    meal_id = next(c["coinConfigId"] for c in sandbox.configs() if c["event"] == MEAL.event)
    result = invoke("state", "rm", str(MEAL), "--yes")
    assert result.exit_code == 0, result.output
    assert invoke("plan", "--detailed-exitcode").exit_code == 2
    result = invoke("state", "import", str(MEAL), meal_id, env=token())
    assert result.exit_code == 0, result.output
    assert invoke("plan", "--detailed-exitcode").exit_code == 0
    audit = list(PostgresStateStore("team", "coins_sync").read_audit())
    assert [r["outcome"] for r in audit if r["key"]["event"] == MEAL.event] == [
        "created",
        "forgotten",
        "imported",
    ]


def test_second_apply_refused_naming_the_holder_or_waits(
    team: Path, invoke: Invoke, pg_dsn: str
) -> None:
    holder = store_for(pg_dsn)
    with holder.lock("apply (env team) on a laptop"):
        result = invoke("apply", "--yes", env=token())
        assert result.exit_code == 1
        assert "is locked by pid" in result.output
        assert "apply (env team) on a laptop" in result.output
        assert "Traceback" not in result.output
    # --lock-timeout waits for a holder that finishes
    released = threading.Event()

    def hold() -> None:
        with holder.lock("short"):
            released.wait(5)
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        time.sleep(0.3)
        released.set()
        result = invoke("apply", "--yes", "--lock-timeout", "10", env=token())
        assert result.exit_code == 0, result.output
    finally:
        thread.join(10)


def test_a_killed_holder_is_released_by_the_server(pg_dsn: str) -> None:
    holder = store_for(pg_dsn)
    with holder.lock("first"):
        other = store_for(pg_dsn)
        with pytest.raises(LockError):
            other.lock("second").__enter__()
        # the session dies (what a kill -9 does): the server releases the lock
        holder._lock.conn.close()
        # the backend ends a moment after its client hangs up: wait for it, bounded
        with other.lock("second", 10.0):
            pass


def test_fenced_write_after_force_unlock(pg_dsn: str) -> None:
    old = store_for(pg_dsn)
    with old.lock("old run"):
        state, _ = old.recover()
        state = old.write(state)
        journal = old.journal(state)
        journal.append(JournalRecord(JournalKind.INTENT, MEAL, 6, at="t"))
        journal.append(JournalRecord(JournalKind.RESULT, MEAL, 6, "created", "ID1", "t"))

        who = store_for(pg_dsn).force_unlock()
        assert who is not None and "old run" in who

        with pytest.raises(StateError, match="lost the state lock"):
            journal.append(JournalRecord(JournalKind.INTENT, INVOICE, 10, at="t"))
        with pytest.raises(StateError):
            old.write(state.with_entry(StateEntry(INVOICE, 10, "ID2")))
        journal.close()
    after = store_for(pg_dsn).read()
    assert set(after.entries) == {MEAL}
    assert not after.uncertain


def test_fencing_by_epoch_alone_when_the_lock_is_retaken(pg_dsn: str) -> None:
    """Even with the advisory lock held again by the same session (pid reuse in effect),
    a bumped epoch fences the old run's writer."""
    old = store_for(pg_dsn)
    with old.lock("old run"):
        state, _ = old.recover()
        journal = old.journal(old.write(state))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE coins_sync.environment SET lock_epoch = lock_epoch + 1")
        with pytest.raises(StateError, match="lost the state lock"):
            journal.append(JournalRecord(JournalKind.INTENT, MEAL, 6, at="t"))
        journal.close()
    assert not store_for(pg_dsn).read().uncertain


def test_concurrent_migrations_apply_once(pg_dsn: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def migrate() -> None:
        try:
            start.wait(5)
            store_for(pg_dsn).migrate()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=migrate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT version FROM coins_sync.schema_migrations ORDER BY 1"
        ).fetchall()
    assert rows == [(1,), (2,), (3,), (4,)]


def test_a_database_newer_than_the_code_or_altered_is_refused(pg_dsn: str) -> None:
    store_for(pg_dsn).migrate()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO coins_sync.schema_migrations VALUES (99, 'x')")
    with pytest.raises(StateError, match="newer than this coins-sync"):
        store_for(pg_dsn).read()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM coins_sync.schema_migrations WHERE version = 99")
        conn.execute("UPDATE coins_sync.schema_migrations SET checksum = 'edited'")
    with pytest.raises(StateError, match="checksum mismatch"):
        store_for(pg_dsn).read()


def test_schemas_do_not_collide(pg_dsn: str) -> None:
    one, two = store_for(pg_dsn, schema="team_a"), store_for(pg_dsn, schema="team_b")
    assert one.key != two.key != store_for(pg_dsn, env="other").key
    with one.lock("a"), two.lock("b"):
        one.write(State.new().with_entry(StateEntry(MEAL, 1, "A1")))
    assert store_for(pg_dsn, schema="team_b").read().entries == {}


def test_push_pull_and_lineage_checks(
    team: Path, invoke: Invoke, pg_dsn: str, tmp_path: Path
) -> None:
    source = FileStateStore(tmp_path / "old.json")
    with source.lock("test"):
        written = source.write(State.new().with_entry(StateEntry(MEAL, 6, "OLD1")))
    result = invoke("state", "push", "--from", str(source.path), "--yes")
    assert result.exit_code == 0, result.output
    assert "Pushed 1 entries" in result.output
    pulled = team / "pulled.json"
    assert invoke("state", "pull", "--to", str(pulled)).exit_code == 0
    assert json.loads(pulled.read_text())["lineage"] == written.lineage
    assert json.loads(pulled.read_text())["entries"][0]["coinConfigId"] == "OLD1"

    # same serial again: not newer
    result = invoke("state", "push", "--from", str(source.path), "--yes")
    assert result.exit_code == 1 and "not newer" in result.output

    other = FileStateStore(tmp_path / "other.json")
    with other.lock("test"):
        other.write(State.new().with_entry(StateEntry(INVOICE, 1, "X9")))
        other.write(other.read().with_entry(StateEntry(MEAL, 2, "X8")))
    result = invoke("state", "push", "--from", str(other.path), "--yes")
    assert result.exit_code == 1
    assert "another state" in result.output and "Traceback" not in result.output
    assert set(store_for(pg_dsn).read().entries) == {MEAL}
    result = invoke("state", "push", "--from", str(other.path), "--yes", "--force")
    assert result.exit_code == 0, result.output
    assert set(store_for(pg_dsn).read().entries) == {MEAL, INVOICE}


def test_schema_sql_prints_the_migrations(invoke: Invoke) -> None:
    result = invoke("state", "schema-sql", "--schema", "rewards")
    assert result.exit_code == 0
    assert 'CREATE TABLE "rewards".environment' in result.output
    assert 'INSERT INTO "rewards".schema_migrations' in result.output
    assert invoke("state", "schema-sql", "--schema", "Bad-Name").exit_code == 1


def test_schema_sql_is_what_the_code_applies(pg_dsn: str, invoke: Invoke) -> None:
    sql = invoke("state", "schema-sql", "--schema", "coins_sync").output
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql)
    assert store_for(pg_dsn).migrate() == []  # checksums match: nothing to apply
    assert store_for(pg_dsn).read() == State.new()


def test_settings_are_checked(project: Path, invoke: Invoke) -> None:
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\nbackend = "postgress"\n',
    )
    result = invoke("state", "list")
    assert result.exit_code == 1 and "backend must be one of file, postgres" in result.output
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\nbackend = "postgres"\npg_schema = "a;b"\n',
    )
    result = invoke("state", "list")
    assert result.exit_code == 1 and "pg_schema" in result.output


def test_password_never_printed(
    project: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\nbackend = "postgres"\n',
    )
    monkeypatch.setenv(
        "COINS_SYNC_PG_DSN",
        "host=/nonexistent-socket-dir user=bob password=hunter2-secret dbname=x",
    )
    result = invoke("state", "list")
    assert result.exit_code == 1
    assert "cannot connect" in result.output
    assert "hunter2" not in result.output
    monkeypatch.setenv(
        "COINS_SYNC_PG_DSN", "postgresql://bob:hunter2-secret@/x?host=/nonexistent-socket-dir"
    )
    result = invoke("state", "list")
    assert result.exit_code == 1 and "hunter2" not in result.output


def test_missing_driver_names_the_extra(
    project: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\nbackend = "postgres"\n',
    )
    monkeypatch.setitem(sys.modules, "psycopg", None)
    result = invoke("plan")
    assert result.exit_code == 1
    assert "coins-sync[postgres]" in result.output
    assert "Traceback" not in result.output


def test_force_unlock_takes_the_lock_id_the_refusal_names(
    team: Path, invoke: Invoke, pg_dsn: str
) -> None:
    import re

    holder = store_for(pg_dsn)
    with holder.lock("apply (env team) on a stuck laptop"):
        refused = invoke("apply", "--yes", env=token())
        assert refused.exit_code == 1
        match = re.search(r"\(lock id (\d+)\)", refused.output)
        assert match is not None, refused.output
        lock_id = match[1]
        assert f"`coins-sync state force-unlock {lock_id} --env team`" in refused.output
        wrong = invoke("state", "force-unlock", str(int(lock_id) + 1), "--yes")
        assert wrong.exit_code == 1
        assert f"lock id {int(lock_id) + 1} does not hold the lock" in wrong.output
        assert f"lock id {lock_id} holds it" in wrong.output
        ended = invoke("state", "force-unlock", lock_id, "--yes")
        assert ended.exit_code == 0, ended.output
        assert "stuck laptop" in ended.output
        again = invoke("state", "force-unlock", lock_id, "--yes")
        assert again.exit_code == 1 and "nobody holds it" in again.output
    assert invoke("apply", "--yes", env=token()).exit_code == 0


@pytest.mark.parametrize(
    "dsn, secret",
    [
        ("postgresql://bob:hun%ter2-secret@/x?host=/nonexistent-socket-dir", "ter2-secret"),
        (
            "host=/nonexistent-socket-dir user=bob password=hunter2 leaked-part dbname=x",
            "leaked-part",
        ),
    ],
    ids=["url-with-percent", "key-value-with-space"],
)
def test_an_unparsable_dsn_is_refused_without_echoing_it(
    project: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch, dsn: str, secret: str
) -> None:
    """libpq's parse error quotes the connection string (the password, often)."""
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\nbackend = "postgres"\n',
    )
    write(project / "configs" / "cekek.yaml", RULES)
    monkeypatch.setenv("COINS_SYNC_PG_DSN", dsn)
    apply = ["apply", "--yes", "--api-url", "http://127.0.0.1:9"]
    for command in (["state", "list"], ["plan"], apply, ["report"]):
        result = invoke(*command, env=token())
        assert result.exit_code == 1, (command, result.output)
        assert secret not in result.output, (command, result.output)
        assert "COINS_SYNC_PG_DSN" in result.output and "cannot be parsed" in result.output
        assert "Traceback" not in result.output
