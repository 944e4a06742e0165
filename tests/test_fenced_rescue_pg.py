"""The postgres backend's local rescue file, fenced (issue 19, cases 5 and 7).

A stuck run that lost its lock writes its results to its local rescue file; the next
apply from that checkout folds them only over entries they are newer than. A plan shows
rescued creates whose ids are known as recorded, not as uncertain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.errors import StateError
from coins_sync.state.journal import JournalKind, JournalRecord, Outcome
from coins_sync.state.model import State, StateEntry
from coins_sync.state.postgres import PostgresStateStore
from tests.conftest import Invoke, write

KEYS = [RuleKey("ACME", "DEFAULT", f"E{i}") for i in range(4)]


def store(dsn: str, rescue: Path) -> PostgresStateStore:
    return PostgresStateStore("team", dsn=dsn, rescue_path=rescue)


def test_a_stuck_runs_rescue_never_overwrites_newer_database_entries(
    tmp_path: Path, pg_dsn: str
) -> None:
    rescue = tmp_path / "team.pg-rescue.jsonl"
    stuck = store(pg_dsn, rescue)
    with stuck.lock("stuck run"):
        state, _ = stuck.recover()
        entries = {k: StateEntry(k, 5, f"WCC{i:06d}") for i, k in enumerate(KEYS)}
        state = stuck.write(State("", 0, entries))
        journal = stuck.journal(state)
        # the run hangs; a person force-unlocks it and another run sets every amount to 9
        assert store(pg_dsn, tmp_path / "x.jsonl").force_unlock() is not None
        newer = store(pg_dsn, tmp_path / "newer.jsonl")
        with newer.lock("newer run"):
            current, _ = newer.recover()
            newer.write(
                State(
                    current.lineage,
                    current.serial,
                    {k: StateEntry(k, 9, e.coin_config_id) for k, e in current.entries.items()},
                )
            )
        # the stuck run wakes: its results (amount 7) are fenced out, kept in its rescue file
        for key in KEYS:
            with pytest.raises(StateError):
                journal.append(
                    JournalRecord(
                        JournalKind.RESULT,
                        key,
                        7,
                        Outcome.UPDATED,
                        entries[key].coin_config_id,
                        "t",
                    )
                )
        journal.close()
    assert len(rescue.read_text().splitlines()) == len(KEYS)

    following = store(pg_dsn, rescue)
    shown = following.read()  # a plan: 9 stays, the 7 is an update of unknown outcome
    assert {e.amount for e in shown.entries.values()} == {9}
    assert {e.pending for e in shown.entries.values()} == {7}
    with following.lock("next apply"):
        folded, messages = following.recover()
    assert {e.amount for e in folded.entries.values()} == {9}
    assert {e.pending for e in folded.entries.values()} == {7}  # read back before planning
    assert any("written under another state serial" in m for m in messages), messages
    assert any("kept as" in m for m in messages)
    assert not rescue.exists() and list(tmp_path.glob("team.pg-rescue.jsonl.stale-*"))


def test_a_plan_shows_rescued_creates_as_recorded(
    project: Path, invoke: Invoke, pg_dsn: str
) -> None:
    write(
        project / "pyproject.toml",
        '[tool.coins-sync]\ndefault_environment = "team"\n\n'
        '[tool.coins-sync.environments.team]\napi_url = "http://127.0.0.1:9"\n'
        'backend = "postgres"\n',
    )
    write(
        project / "configs/acme.yaml",
        "companyId: ACME\nrules:\n"
        + "".join(f"  - event: E{i}\n    amount: 5\n" for i in range(len(KEYS))),
    )
    rescue = project / "state" / "team.pg-rescue.jsonl"
    stuck = store(pg_dsn, rescue)
    with stuck.lock("stuck run"):
        state, _ = stuck.recover()
        state = stuck.write(state)
        journal = stuck.journal(state)
        for key in KEYS:  # intents committed, creates sent ...
            journal.append(JournalRecord(JournalKind.INTENT, key, 5, at="t"))
        assert store(pg_dsn, project / "x.jsonl").force_unlock() is not None
        for i, key in enumerate(KEYS):  # ... answered after the force-unlock
            with pytest.raises(StateError):
                journal.append(
                    JournalRecord(JournalKind.RESULT, key, 5, Outcome.CREATED, f"WCC{i:06d}", "t")
                )
        journal.close()
    planned = invoke("plan")
    assert planned.exit_code == 0, planned.output
    assert "0 to create" in planned.output and "0 uncertain" in planned.output, planned.output
    assert "retry-uncertain" not in planned.output
    assert f"{len(KEYS)} unchanged" in planned.output


def test_a_plan_during_an_apply_on_postgres_shows_creates_in_flight(
    project: Path, invoke: Invoke, pg_dsn: str
) -> None:
    write(
        project / "pyproject.toml",
        '[tool.coins-sync]\ndefault_environment = "team"\n\n'
        '[tool.coins-sync.environments.team]\napi_url = "http://127.0.0.1:9"\n'
        'backend = "postgres"\n',
    )
    write(
        project / "configs/acme.yaml",
        "companyId: ACME\nrules:\n"
        + "".join(f"  - event: E{i}\n    amount: 5\n" for i in range(len(KEYS))),
    )
    running = store(pg_dsn, project / "state" / "team.pg-rescue.jsonl")
    with running.lock("apply (env team)"):
        state, _ = running.recover()
        journal = running.journal(running.write(state))
        for key in KEYS[:2]:  # two creates sent, not answered yet
            journal.append(JournalRecord(JournalKind.INTENT, key, 5, at="t"))
        planned = invoke("plan")
        journal.close()
    assert planned.exit_code == 0, planned.output
    assert "An apply holds the state lock" in planned.output
    assert "running 'apply (env team)'" in planned.output
    assert "2 in flight" in planned.output and "0 uncertain" in planned.output
    assert "2 to create" in planned.output and "retry-uncertain" not in planned.output
    after = invoke("plan")  # the run ended without answers: now they are uncertain
    assert "holds the state lock" not in after.output and "2 uncertain" in after.output
