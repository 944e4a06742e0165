"""Issue 15 section 5 on the postgres backend: an update (PATCH) whose outcome is unknown
is recorded as ``pending`` in the database, so the next plan reads that id back and a
revert of the configs cannot hide the amount the server really holds.

The end-to-end scenario runs on both backends through the ``backend`` fixture of
``tests/test_unknown_update.py``; what is particular to PostgreSQL stays here."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from coins_sync.state.journal import JournalKind, JournalRecord
from coins_sync.state.model import State, StateEntry, serialize
from coins_sync.state.postgres import PostgresStateStore
from tests.conftest import Invoke, write
from tests.test_unknown_update import ID, KEY


@pytest.fixture
def team(project: Path, pg_dsn: str) -> Path:
    """The working copy's `team` environment keeps its state in PostgreSQL."""
    write(
        project / "pyproject.toml",
        """\
[tool.coins-sync]
default_environment = "team"

[tool.coins-sync.environments.team]
api_url = "http://127.0.0.1:9"
backend = "postgres"
""",
    )
    return project


def stored(dsn: str) -> State:
    return PostgresStateStore("team", dsn=dsn).read()


def test_pending_amount_survives_push_pull_and_the_rescue_file(
    team: Path, pg_dsn: str, invoke: Invoke
) -> None:
    pending = State("lin-pending", 3, {KEY: StateEntry(KEY, 6, ID, pending=9)})
    write(team / "pushed.json", serialize(pending))
    pushed = invoke("state", "push", "--from", "pushed.json", "--yes")
    assert pushed.exit_code == 0, pushed.output
    assert stored(pg_dsn).entries[KEY].pending == 9
    pulled = invoke("state", "pull", "--to", "pulled.json")
    assert pulled.exit_code == 0, pulled.output
    (entry,) = json.loads((team / "pulled.json").read_text())["entries"]
    assert entry["pendingAmount"] == 9

    # a confirmed update clears the mark; a rescued "unverified" result sets it again
    store = PostgresStateStore("team", dsn=pg_dsn, rescue_path=team / "rescue.jsonl")
    with store.lock("test"):
        journal = store.journal(store.read())
        journal.append(JournalRecord(JournalKind.RESULT, KEY, 7, "updated", ID))
        journal.close()
    entry_after = stored(pg_dsn).entries[KEY]
    assert (entry_after.amount, entry_after.pending) == (7, None)
    unverified = JournalRecord(JournalKind.RESULT, KEY, 8, "unverified", ID)
    (team / "rescue.jsonl").write_bytes(unverified.to_line("lin-pending"))
    with store.lock("test"):
        store.recover()
    entry_after = stored(pg_dsn).entries[KEY]
    assert (entry_after.amount, entry_after.pending) == (7, 8)


def test_a_version_2_database_is_migrated_and_keeps_its_entries(pg_dsn: str) -> None:
    from coins_sync.state.postgres.migrations import MIGRATIONS, bookkeeping_sql, checksum, render

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # as the previous release left it
        conn.execute(bookkeeping_sql("coins_sync"))
        for version, sql in MIGRATIONS[:2]:
            conn.execute(render(version, sql, "coins_sync"))
            conn.execute(
                "INSERT INTO coins_sync.schema_migrations VALUES (%s, %s)", (version, checksum(sql))
            )
        conn.execute(
            "INSERT INTO coins_sync.environment (name, lineage, serial) VALUES ('team', 'l', 4)"
        )
        conn.execute(
            "INSERT INTO coins_sync.entry (env, company_id, configuration, event, amount, "
            "coin_config_id) VALUES ('team', %s, %s, %s, 6, %s)",
            (KEY.company_id, KEY.configuration, KEY.event, ID),
        )
    assert stored(pg_dsn).entries == {KEY: StateEntry(KEY, 6, ID)}
    with psycopg.connect(pg_dsn) as conn:
        versions = conn.execute("SELECT version FROM coins_sync.schema_migrations").fetchall()
        assert sorted(versions) == [(1,), (2,), (3,)]
        with pytest.raises(psycopg.errors.CheckViolation):  # only a confirmed entry is marked
            conn.execute(
                "UPDATE coins_sync.entry SET coin_config_id = NULL, uncertain_since = 't', "
                "pending_amount = 1"
            )
