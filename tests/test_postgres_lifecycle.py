"""Rule lifecycle (issue 21) on the postgres backend: a move re-keys the entry row under
the same id, a retirement keeps it marked retired, and ``state mv`` / ``state show``
work on the database's state and audit table."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from coins_sync.sandbox import SandboxServer
from coins_sync.state.model import State
from coins_sync.state.postgres import PostgresStateStore
from tests.conftest import SANDBOX_TOKEN, Invoke, write
from tests.test_lifecycle import FUEL, MEAL, MEAL_CARD, TOKEN, rule, rules, sent


@pytest.fixture
def team(project: Path, pg_dsn: str) -> Path:
    write(
        project / "pyproject.toml",
        """\
[tool.coins-sync]
default_environment = "team"

[tool.coins-sync.environments.team]
backend = "postgres"
""",
    )
    return project


def stored(dsn: str) -> State:
    return PostgresStateStore("team", dsn=dsn).read()


def test_move_and_retire_on_postgres(
    team: Path, pg_dsn: str, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(team, rule("MEAL", 6), rule("FUEL", 3))
    assert invoke("apply", "--yes", "--api-url", sandbox.url, env=TOKEN).exit_code == 0
    ids = {key: e.coin_config_id for key, e in stored(pg_dsn).entries.items()}

    rules(team, rule("MEAL_CARD", 7, movedFrom="ACME/DEFAULT/MEAL"), rule("FUEL", retired=True))
    done = invoke("apply", "--yes", "--api-url", sandbox.url, env=TOKEN)
    assert done.exit_code == 0, done.output
    assert "1 moved" in done.output and "1 retired" in done.output
    state = stored(pg_dsn)
    assert MEAL not in state.entries
    assert (state.entries[MEAL_CARD].coin_config_id, state.entries[MEAL_CARD].amount) == (
        ids[MEAL],
        7,
    )
    assert (state.entries[FUEL].amount, state.entries[FUEL].retired) == (0, True)
    assert len(sandbox.configs()) == 2
    assert invoke("plan", "--detailed-exitcode").exit_code == 0
    report = json.loads(invoke("report", "--format", "json").output)
    assert report["summary"]["retired"] == 1

    shown = json.loads(invoke("state", "show", str(MEAL_CARD), "--format", "json").output)
    assert [r["action"] for r in shown["history"]] == ["create", "move"]
    assert shown["history"][1]["movedFrom"] == MEAL.as_dict()


def test_state_mv_on_postgres(
    team: Path, pg_dsn: str, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(team, rule("MEAL", 6))
    assert invoke("apply", "--yes", "--api-url", sandbox.url, env=TOKEN).exit_code == 0
    (config_id,) = [e.coin_config_id for e in stored(pg_dsn).entries.values()]
    httpx.patch(
        f"{sandbox.url}/api/v0/enkash-coins/{config_id}",
        json={"event": "MEAL_CARD"},
        headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        timeout=10,
    ).raise_for_status()
    before = sent(sandbox)
    done = invoke("state", "mv", str(MEAL), str(MEAL_CARD), "--yes")
    assert done.exit_code == 0, done.output
    assert sent(sandbox) == before
    assert stored(pg_dsn).entries[MEAL_CARD].coin_config_id == config_id
    text = invoke("state", "show", str(MEAL_CARD)).output
    assert f"state-mv moved {MEAL} -> {MEAL_CARD}" in text
    rules(team, rule("MEAL_CARD", 6))
    assert invoke("plan", "--detailed-exitcode").exit_code == 0
