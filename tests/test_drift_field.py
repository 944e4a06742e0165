"""The drift field is a DriftField enum; the JSON plan and the renderers still show its name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.configs.schema import PLAN_SCHEMA, load_schema
from coins_sync.plan.drift import Drift, DriftField
from coins_sync.plan.reconcile import Action, Change, Plan, PlanContext
from coins_sync.plan.render import render
from coins_sync.plan.saved import load_plan, save_plan

MOVED = RuleKey("ACME", "DEFAULT", "MOVED")
GONE = RuleKey("ACME", "DEFAULT", "GONE")
PRICED = RuleKey("ACME", "DEFAULT", "PRICED")


def every_kind_of_drift() -> Plan:
    drift = (
        Drift(PRICED, "W1", DriftField.AMOUNT, "1", "7"),
        Drift(GONE, "W2", DriftField.MISSING, "present", "absent"),
        Drift(MOVED, "W3", DriftField.COMPANY_ID, "ACME", "OTHER"),
        Drift(MOVED, "W3", DriftField.CONFIGURATION, "DEFAULT", "X"),
        Drift(MOVED, "W3", DriftField.EVENT, "MOVED", "E9"),
    )
    update = Change(Action.UPDATE, PRICED, 2, before=7, coin_config_id="W1")
    return Plan((update,), managed=3, context=PlanContext("default", "L", 2, "0" * 64), drift=drift)


def test_drift_fields_are_exactly_the_plan_schema_enum() -> None:
    schema = load_schema(PLAN_SCHEMA)
    item = schema["properties"]["drift"]["items"]
    assert [field.value for field in DriftField] == item["properties"]["field"]["enum"]


def test_text_field_becomes_the_enum_and_unknown_text_is_refused() -> None:
    drift = Drift(PRICED, "W1", "amount", "1", "7")  # type: ignore[arg-type]
    assert drift.field is DriftField.AMOUNT
    with pytest.raises(ValueError, match="'price'"):
        Drift(PRICED, "W1", "price", "1", "7")  # type: ignore[arg-type]


def test_json_plan_names_each_field_as_before() -> None:
    data = json.loads(render(every_kind_of_drift(), "json"))
    assert [(d["field"], d["state"], d["server"]) for d in data["drift"]] == [
        ("amount", 1, 7),
        ("missing", "present", "absent"),
        ("companyId", "ACME", "OTHER"),
        ("configuration", "DEFAULT", "X"),
        ("event", "MOVED", "E9"),
    ]
    assert data["summary"]["update"] == 1


def test_text_and_markdown_show_the_field_names() -> None:
    the_plan = every_kind_of_drift()
    text = render(the_plan, "text")
    assert "  ≠ ACME/DEFAULT/PRICED: amount is 7 on the server, 1 in state (W1)\n" in text
    assert "  ≠ ACME/DEFAULT/MOVED: companyId is OTHER on the server, ACME in state (W3)\n" in text
    assert "ACME/DEFAULT/GONE: W2 was not found on the server (404); left alone." in text
    assert "DriftField" not in text
    markdown = render(the_plan, "markdown")
    assert "- `ACME/DEFAULT/MOVED`: configuration is `X` on the server, `DEFAULT` in state" in (
        markdown
    )
    assert "- `ACME/DEFAULT/GONE`: `W2` was not found on the server (404)" in markdown
    assert "DriftField" not in markdown
    assert "2 need a person" in text


def test_saved_plan_reads_drift_back_as_enum_byte_for_byte(tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    save_plan(every_kind_of_drift(), first)
    loaded = load_plan(first)
    assert [d.field for d in loaded.drift] == [d.field for d in every_kind_of_drift().drift]
    assert all(type(d.field) is DriftField for d in loaded.drift)
    again = tmp_path / "again.json"
    save_plan(loaded, again)
    assert again.read_bytes() == first.read_bytes()
