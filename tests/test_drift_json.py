"""Drift in the JSON plan: amounts are JSON numbers, other values keep their text (issue 13).

Runs `plan --refresh` against the sandbox on 127.0.0.1 after changing configs behind
coins-sync's back, then reads the JSON plan and a saved plan back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from click.testing import Result

from coins_sync.configs.schema import PLAN_SCHEMA, load_schema
from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
RULES = "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 6\n  - event: FUEL\n    amount: 4\n"


def run(invoke: Invoke, sandbox: SandboxServer, *args: str) -> Result:
    return invoke(*args, "--api-url", sandbox.url, env=ENV)


def patch_behind_our_back(sandbox: SandboxServer, name: str, **fields: object) -> None:
    config = next(c for c in sandbox.configs() if c["event"] == name)
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        response = client.patch(
            f"/api/v0/enkash-coins/{config['coinConfigId']}",
            json=fields,
            headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        )
    assert response.status_code == 200, response.text


@pytest.fixture
def drifted(project: Path, invoke: Invoke, sandbox: SandboxServer) -> SandboxServer:
    """MEAL's amount and FUEL's event changed on the server after an apply."""
    write(project / "configs/acme.yaml", RULES)
    assert run(invoke, sandbox, "apply", "--yes").exit_code == 0
    patch_behind_our_back(sandbox, "MEAL", amount=60)
    patch_behind_our_back(sandbox, "FUEL", event="MOVED")
    return sandbox


def by_field(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["field"]: d for d in data["drift"]}


def test_amount_drift_is_given_as_numbers(invoke: Invoke, drifted: SandboxServer) -> None:
    result = run(invoke, drifted, "plan", "--refresh", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    drift = by_field(data)
    assert (drift["amount"]["state"], drift["amount"]["server"]) == (6, 60)
    assert type(drift["amount"]["state"]) is int and type(drift["amount"]["server"]) is int
    # a key field keeps its text
    assert (drift["event"]["state"], drift["event"]["server"]) == ("FUEL", "MOVED")
    jsonschema.Draft202012Validator(load_schema(PLAN_SCHEMA)).validate(data)


def test_the_schema_keeps_words_for_a_missing_config(
    invoke: Invoke, drifted: SandboxServer
) -> None:
    result = run(invoke, drifted, "plan", "--refresh", "--format", "json")
    data = json.loads(result.output)
    schema = load_schema(PLAN_SCHEMA)
    missing = {
        **by_field(data)["event"],
        "field": "missing",
        "state": "present",
        "server": "absent",
    }
    jsonschema.Draft202012Validator(schema).validate({**data, "drift": [missing]})


def test_saved_plan_with_numeric_drift_applies(
    project: Path, invoke: Invoke, drifted: SandboxServer
) -> None:
    assert run(invoke, drifted, "plan", "--refresh", "--out", "p.json").exit_code == 0
    saved = json.loads(Path("p.json").read_text("utf-8"))
    assert by_field(saved)["amount"]["server"] == 60
    result = run(invoke, drifted, "apply", "p.json", "--yes")
    assert result.exit_code == 0, result.output
    assert next(c for c in drifted.configs() if c["event"] == "MEAL")["amount"] == 6


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("60", "drift/"),  # the old text form is not a number
        (60.0, "is not a whole number"),
        (True, "drift/"),
        (-60, "drift/"),
    ],
    ids=["text", "float", "bool", "negative"],
)
def test_saved_plan_amount_drift_must_be_a_whole_number(
    project: Path, invoke: Invoke, drifted: SandboxServer, value: object, says: str
) -> None:
    assert run(invoke, drifted, "plan", "--refresh", "--out", "p.json").exit_code == 0
    saved = json.loads(Path("p.json").read_text("utf-8"))
    by_field(saved)["amount"]["server"] = value
    Path("p.json").write_text(json.dumps(saved), "utf-8")
    patches = drifted.stats.get("patches", 0)
    result = run(invoke, drifted, "apply", "p.json", "--yes")
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output
    assert drifted.stats.get("patches", 0) == patches
