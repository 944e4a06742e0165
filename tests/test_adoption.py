"""Adopting configs that already exist on the server (issue 14), through the CLI, against
the sandbox on 127.0.0.1: ``coinConfigId`` in a rule plans an ``import``; apply checks
the id on the server and records it; ``state import --from FILE`` does it in bulk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.configs.schema import PLAN_SCHEMA, load_schema
from coins_sync.sandbox import SandboxServer
from coins_sync.state.file import FileStateStore
from coins_sync.state.model import State, StateEntry, Uncertain
from tests.conftest import SANDBOX_TOKEN, Invoke, write

TOKEN = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
MEAL = RuleKey("ACME", "DEFAULT", "MEAL_CARD_PAYMENT")
FUEL = RuleKey("ACME", "DEFAULT", "FUEL_PAYMENT")


def seed(server: SandboxServer, key: RuleKey, amount: int) -> str:
    """Create a config on the server as a person in the dashboard would; its id."""
    answer = httpx.post(
        f"{server.url}/api/v0/enkash-coins/create-coins-config",
        json={**key.as_dict(), "amount": amount},
        headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        timeout=10,
    )
    answer.raise_for_status()
    body: Any = answer.json()
    payload = body.get("payload", body)
    config_id: str = payload["coinConfigId"]
    return config_id


def rules(project: Path, *lines: str) -> None:
    write(project / "configs" / "acme.yaml", "companyId: ACME\nrules:\n" + "".join(lines))


def rule(event: str, amount: int, config_id: str | None = None) -> str:
    text = f"  - event: {event}\n    amount: {amount}\n"
    if config_id is not None:
        text += f"    coinConfigId: {config_id}\n"
    return text


def state_of(project: Path) -> State:
    return FileStateStore(project / "state" / "default.json").read()


def audit_of(project: Path) -> list[dict[str, Any]]:
    path = project / "state" / "default.audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def apply(invoke: Invoke, server: SandboxServer, *args: str) -> Any:
    return invoke("apply", "--yes", "--api-url", server.url, *args, env=TOKEN)


def test_adopt_with_the_same_amount_records_it_and_creates_nothing(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    config_id = seed(sandbox, MEAL, 6)
    rules(project, rule("MEAL_CARD_PAYMENT", 6, config_id))

    text = invoke("plan", "--detailed-exitcode")
    assert text.exit_code == 2, text.output
    assert f"<= {MEAL}" in text.output and config_id in text.output
    assert "1 to import" in text.output
    assert sandbox.stats.get("gets", 0) == 0  # an offline plan makes no call

    as_json = invoke("plan", "--format", "json")
    data = json.loads(as_json.output)
    jsonschema.validate(data, load_schema(PLAN_SCHEMA))
    assert data["summary"]["import"] == 1 and data["summary"]["create"] == 0
    assert data["changes"][0]["action"] == "import"
    assert data["changes"][0]["coinConfigId"] == config_id

    markdown = invoke("plan", "--format", "markdown").output
    assert "| import |" in markdown and "<= import" in markdown

    result = apply(invoke, sandbox)
    assert result.exit_code == 0, result.output
    assert "1 imported" in result.output and "0 created" in result.output
    assert len(sandbox.configs()) == 1  # no second copy was created
    assert state_of(project).entries[MEAL] == StateEntry(MEAL, 6, config_id)
    [record] = audit_of(project)
    assert (record["action"], record["outcome"], record["coinConfigId"]) == (
        "import",
        "imported",
        config_id,
    )
    assert not (project / "state" / "default.journal.jsonl").exists()  # folded

    again = invoke("plan", "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    assert "1 coinConfigId(s) in the configs agree with the state" in again.output


def test_adopt_with_another_amount_imports_then_updates_in_one_run(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    config_id = seed(sandbox, MEAL, 4)
    rules(project, rule("MEAL_CARD_PAYMENT", 6, config_id))
    result = apply(invoke, sandbox)
    assert result.exit_code == 0, result.output
    assert "1 imported" in result.output and "1 updated" in result.output
    assert [c["amount"] for c in sandbox.configs()] == [6]
    assert state_of(project).entries[MEAL] == StateEntry(MEAL, 6, config_id)
    records = audit_of(project)
    assert [(r["action"], r["outcome"], r["before"], r["after"]) for r in records] == [
        ("import", "imported", None, 4),
        ("update", "updated", 4, 6),
    ]
    assert invoke("plan", "--detailed-exitcode").exit_code == 0


def test_a_key_mismatch_refuses_the_import_and_creates_nothing(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    config_id = seed(sandbox, FUEL, 6)
    rules(project, rule("MEAL_CARD_PAYMENT", 6, config_id))
    result = apply(invoke, sandbox)
    assert result.exit_code == 1, result.output
    assert config_id in result.output and str(FUEL) in result.output and str(MEAL) in result.output
    assert "import refused" in result.output
    assert len(sandbox.configs()) == 1  # no create for the key
    state = state_of(project)
    assert MEAL not in state.entries and MEAL not in state.uncertain
    assert audit_of(project)[-1]["outcome"] == "failed"


def test_a_404_refuses_the_import_and_creates_nothing(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(project, rule("MEAL_CARD_PAYMENT", 6, "WCC999999"))
    result = apply(invoke, sandbox)
    assert result.exit_code == 1, result.output
    assert "WCC999999" in result.output and "404" in result.output
    assert sandbox.configs() == []
    state = state_of(project)
    assert MEAL not in state.entries and MEAL not in state.uncertain


def test_an_id_that_contradicts_the_state_is_a_plan_error_naming_both(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(project, rule("MEAL_CARD_PAYMENT", 6))
    assert apply(invoke, sandbox).exit_code == 0
    recorded = state_of(project).entries[MEAL].coin_config_id
    rules(project, rule("MEAL_CARD_PAYMENT", 6, "WCC123456"))
    result = invoke("plan")
    assert result.exit_code == 1, result.output
    assert recorded in result.output and "WCC123456" in result.output
    assert "configs/acme.yaml:3" in result.output
    assert "Traceback" not in result.output
    refused = apply(invoke, sandbox)
    assert refused.exit_code == 1 and len(sandbox.configs()) == 1


def test_one_id_on_two_rules_is_a_validation_error_naming_both_places(
    project: Path, invoke: Invoke
) -> None:
    rules(project, rule("MEAL_CARD_PAYMENT", 6, "WCC000007"), rule("FUEL_PAYMENT", 3))
    write(
        project / "configs" / "other.yaml",
        "companyId: OTHER\nrules:\n" + rule("MEAL_CARD_PAYMENT", 1, "WCC000007"),
    )
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    assert "configs/acme.yaml:3" in result.output and "configs/other.yaml:3" in result.output
    assert "WCC000007" in result.output and "used twice" in result.output


def test_a_malformed_id_is_refused_with_its_place(project: Path, invoke: Invoke) -> None:
    rules(project, rule("MEAL_CARD_PAYMENT", 6, "'WCC 1/2'"))
    result = invoke("validate")
    assert result.exit_code == 1, result.output
    assert "acme.yaml:5" in result.output and "coinConfigId" in result.output


def test_an_uncertain_key_is_resolved_by_adoption(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    config_id = seed(sandbox, MEAL, 6)  # the create that did reach the server
    store = FileStateStore(project / "state" / "default.json")
    store.write(State(lineage="", uncertain={MEAL: Uncertain(MEAL, 6, "2024-01-01T00:00:00Z")}))
    rules(project, rule("MEAL_CARD_PAYMENT", 6))
    assert "uncertain" in invoke("plan").output
    rules(project, rule("MEAL_CARD_PAYMENT", 6, config_id))
    planned = invoke("plan")
    assert f"<= {MEAL}" in planned.output, planned.output
    result = apply(invoke, sandbox)  # no --retry-uncertain needed: nothing is re-sent
    assert result.exit_code == 0, result.output
    assert "1 imported" in result.output
    state = state_of(project)
    assert state.entries[MEAL] == StateEntry(MEAL, 6, config_id) and not state.uncertain
    assert len(sandbox.configs()) == 1


def test_a_saved_plan_with_an_import_applies_and_an_edited_one_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    config_id = seed(sandbox, MEAL, 6)
    other_id = seed(sandbox, FUEL, 3)
    rules(project, rule("MEAL_CARD_PAYMENT", 6, config_id))
    assert invoke("plan", "--out", "p.json").exit_code == 0
    saved = json.loads((project / "p.json").read_text())
    saved["changes"][0]["coinConfigId"] = other_id
    write(project / "edited.json", json.dumps(saved))
    refused = apply(invoke, sandbox, "edited.json")
    assert refused.exit_code == 1 and "edited by hand" in refused.output
    result = apply(invoke, sandbox, "p.json")
    assert result.exit_code == 0, result.output
    assert state_of(project).entries[MEAL].coin_config_id == config_id


def test_first_contact_guard_in_text_and_markdown(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(project, rule("MEAL_CARD_PAYMENT", 6), rule("FUEL_PAYMENT", 3))
    message = "2 creates for 1 company new to this state"
    assert message in invoke("plan").output
    assert message in invoke("plan", "--format", "markdown").output
    assert apply(invoke, sandbox).exit_code == 0
    rules(project, rule("MEAL_CARD_PAYMENT", 6), rule("FUEL_PAYMENT", 3), rule("NEW", 1))
    assert "new to this state" not in invoke("plan").output  # ACME is known now


def bulk(project: Path, name: str, text: str) -> Path:
    return write(project / name, text)


def test_bulk_import_records_every_good_row_and_reports_every_bad_one(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    meal = seed(sandbox, MEAL, 6)
    fuel = seed(sandbox, FUEL, 3)
    other = seed(sandbox, RuleKey("ACME", "DEFAULT", "OTHER"), 1)
    bulk(
        project,
        "existing.csv",
        "companyId,configuration,event,coinConfigId\n"
        f"ACME,DEFAULT,MEAL_CARD_PAYMENT,{meal}\n"
        "ACME,DEFAULT,GONE,WCC999999\n"
        f"ACME,DEFAULT,WRONG,{other}\n"
        f"ACME,DEFAULT,FUEL_PAYMENT,{fuel}\n",
    )
    result = invoke(
        "state", "import", "--from", "existing.csv", "--api-url", sandbox.url, env=TOKEN
    )
    assert result.exit_code == 1, result.output
    assert "WCC999999" in result.output and "404" in result.output
    assert other in result.output and "ACME/DEFAULT/WRONG" in result.output
    assert "existing.csv:3" in result.output and "existing.csv:4" in result.output
    entries = state_of(project).entries
    assert entries[MEAL] == StateEntry(MEAL, 6, meal)
    assert entries[FUEL] == StateEntry(FUEL, 3, fuel)
    assert len(entries) == 2
    assert {r["coinConfigId"] for r in audit_of(project) if r["outcome"] == "imported"} == {
        meal,
        fuel,
    }
    assert len(sandbox.configs()) == 3  # nothing was created


def test_bulk_import_reads_json_lines_and_refuses_a_bad_file_with_its_line(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    meal = seed(sandbox, MEAL, 6)
    line = json.dumps({**MEAL.as_dict(), "coinConfigId": meal})
    bulk(project, "existing.jsonl", line + "\n")
    result = invoke(
        "state", "import", "--from", "existing.jsonl", "--api-url", sandbox.url, env=TOKEN
    )
    assert result.exit_code == 0, result.output
    assert "1 imported" in result.output
    assert state_of(project).entries[MEAL] == StateEntry(MEAL, 6, meal)

    bulk(project, "bad.jsonl", line + "\n{not json\n")
    bad = invoke("state", "import", "--from", "bad.jsonl", "--api-url", sandbox.url, env=TOKEN)
    assert bad.exit_code == 1 and "bad.jsonl:2" in bad.output
    assert "Traceback" not in bad.output

    bulk(project, "bad.csv", "companyId,event,coinConfigId\nACME,X,WCC1\n")
    bad = invoke("state", "import", "--from", "bad.csv", "--api-url", sandbox.url, env=TOKEN)
    assert bad.exit_code == 1 and "bad.csv:1" in bad.output and "header" in bad.output


def test_bulk_import_refuses_a_key_recorded_as_another_id(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(project, rule("MEAL_CARD_PAYMENT", 6))
    assert apply(invoke, sandbox).exit_code == 0
    recorded = state_of(project).entries[MEAL].coin_config_id
    other = seed(sandbox, MEAL, 6)  # a duplicate somebody made by hand
    bulk(
        project,
        "x.csv",
        f"companyId,configuration,event,coinConfigId\nACME,DEFAULT,MEAL_CARD_PAYMENT,{other}\n",
    )
    result = invoke("state", "import", "--from", "x.csv", "--api-url", sandbox.url, env=TOKEN)
    assert result.exit_code == 1, result.output
    assert recorded in result.output and other in result.output
    assert state_of(project).entries[MEAL].coin_config_id == recorded


@pytest.mark.usefixtures("pg_dsn")
def test_adoption_on_the_postgres_backend(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(
        project / "pyproject.toml",
        f"""\
[tool.coins-sync]
default_environment = "team"

[tool.coins-sync.environments.team]
api_url = "{sandbox.url}"
backend = "postgres"
pg_schema = "coins_sync"
""",
    )
    same = seed(sandbox, MEAL, 6)
    differs = seed(sandbox, FUEL, 1)
    rules(project, rule("MEAL_CARD_PAYMENT", 6, same), rule("FUEL_PAYMENT", 3, differs))
    result = invoke("apply", "--yes", env=TOKEN)
    assert result.exit_code == 0, result.output
    assert "2 imported" in result.output and "1 updated" in result.output
    assert len(sandbox.configs()) == 2
    listed = json.loads(invoke("state", "list", "--format", "json").output)
    got = {(e["event"], e["amount"], e["coinConfigId"]) for e in listed["entries"]}
    assert got == {("MEAL_CARD_PAYMENT", 6, same), ("FUEL_PAYMENT", 3, differs)}
    assert invoke("plan", "--detailed-exitcode").exit_code == 0
