"""Issue 11 leftovers: an unknown journal outcome is a damaged line, on every backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.state.journal import JournalKind, JournalRecord, Outcome
from coins_sync.state.model import State, StateEntry
from tests.conftest import Invoke, write
from tests.small_project import ENTRY, state_with

KEY = RuleKey("ACME", "DEFAULT", "MEAL")


def bogus_line(lineage: str) -> str:
    record = {
        "kind": "result",
        "lineage": lineage,
        **KEY.as_dict(),
        "amount": 7,
        "outcome": "bogus",
        "coinConfigId": "WCC777",
        "at": "t",
    }
    return json.dumps(record) + "\n"


@pytest.mark.parametrize("name", ["rescue", "journal"])
def test_an_unknown_outcome_in_a_journal_line_is_reported_as_damaged(
    project: Path, invoke: Invoke, name: str
) -> None:
    state_with(project, ENTRY)
    write(project / f"state/default.{name}.jsonl", bogus_line("L"))
    result = invoke("state", "list")
    assert result.exit_code == 0, result.output
    assert f"default.{name}.jsonl:1: garbled record" in result.output
    assert "bogus" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_outcome_in_the_postgres_rescue_file_is_reported_not_a_crash(
    tmp_path: Path, pg_dsn: str
) -> None:
    from coins_sync.state.postgres import PostgresStateStore

    rescue = tmp_path / "rescue.jsonl"
    store = PostgresStateStore("team", dsn=pg_dsn, rescue_path=rescue)
    with store.lock("test"):
        written = store.write(State("lin", 0, {KEY: StateEntry(KEY, 6, "WCC1")}))
    good = JournalRecord(JournalKind.RESULT, KEY, 8, Outcome.UPDATED, "WCC1", "t")
    line = good.to_line(written.lineage, written.serial)  # written under the current serial
    rescue.write_bytes(bogus_line(written.lineage).encode() + line)
    with store.lock("test"):
        state, messages = store.recover()
    assert any("rescue.jsonl:1: garbled record" in m and "bogus" in m for m in messages)
    assert state.entries[KEY].amount == 8  # the readable line is still folded
    assert not rescue.exists()


def test_a_result_without_an_outcome_is_reported_as_damaged(project: Path, invoke: Invoke) -> None:
    state_with(project, ENTRY)
    line = json.loads(bogus_line("L"))
    del line["outcome"]
    write(project / "state/default.journal.jsonl", json.dumps(line) + "\n")
    result = invoke("state", "list")
    assert result.exit_code == 0, result.output
    assert "default.journal.jsonl:1: garbled record" in result.output
    assert "without an outcome" in result.output
