"""Server values out of range: a negative or fractional amount on the server is drift
for a person, shown raw and inert; a saved plan with it stays valid (issue 20, item 13)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from coins_sync.configs.schema import PLAN_SCHEMA, load_schema
from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
RULES = "companyId: ACME\nrules:\n  - event: A\n    amount: 1\n  - event: B\n    amount: 2\n  - event: C\n    amount: 3\n"


@pytest.fixture
def odd(project: Path, invoke: Invoke, sandbox: SandboxServer) -> SandboxServer:
    """A's amount is -5 and B's 2.5 on the server (set behind the API's own checks)."""
    write(project / "configs/acme.yaml", RULES)
    assert invoke("apply", "--yes", "--api-url", sandbox.url, env=ENV).exit_code == 0
    ids = {c["event"]: c["coinConfigId"] for c in sandbox.configs()}
    store = sandbox.app._store
    store.patch(ids["A"], {"amount": -5})
    store.patch(ids["B"], {"amount": 2.5})
    store.patch(ids["C"], {"amount": 30})
    return sandbox


def test_unusable_server_amounts_need_a_person_and_the_saved_plan_is_valid(
    project: Path, invoke: Invoke, odd: SandboxServer
) -> None:
    result = invoke("plan", "--refresh", "--out", "p.json", "--api-url", odd.url, env=ENV)
    assert result.exit_code == 0, result.output
    assert "2 need a person" in result.output
    assert "the server holds amount -5 for" in result.output
    assert "the server holds amount 2.5 for" in result.output
    saved = json.loads((project / "p.json").read_text("utf-8"))
    jsonschema.Draft202012Validator(load_schema(PLAN_SCHEMA)).validate(saved)
    drift = {(d["key"]["event"], d["field"]): (d["state"], d["server"]) for d in saved["drift"]}
    assert drift == {
        ("A", "unusableAmount"): ("1", "-5"),
        ("B", "unusableAmount"): ("2", "2.5"),
        ("C", "amount"): (3, 30),
    }
    # only C's amount is planned back; A and B are left alone
    assert [(c["action"], c["key"]["event"]) for c in saved["changes"]] == [("update", "C")]
    applied = invoke("apply", "p.json", "--yes", "--api-url", odd.url, env=ENV)
    assert applied.exit_code == 0, applied.output
    amounts = {c["event"]: c["amount"] for c in odd.configs()}
    assert amounts == {"A": -5, "B": 2.5, "C": 3}


def test_markdown_shows_an_unusable_amount_inert(invoke: Invoke, odd: SandboxServer) -> None:
    result = invoke("plan", "--refresh", "--format", "markdown", "--api-url", odd.url, env=ENV)
    assert result.exit_code == 0, result.output
    assert "the server holds amount `-5` for `WCC" in result.output
    assert "the server holds amount `2.5` for `WCC" in result.output


def test_state_import_refuses_a_config_with_an_unusable_amount(
    project: Path, invoke: Invoke, odd: SandboxServer
) -> None:
    a_id = next(c["coinConfigId"] for c in odd.configs() if c["event"] == "A")
    assert invoke("state", "rm", "ACME/DEFAULT/A", "--yes").exit_code == 0
    before = (project / "state/default.json").read_bytes()
    result = invoke("state", "import", "ACME/DEFAULT/A", a_id, "--api-url", odd.url, env=ENV)
    assert result.exit_code == 1
    assert "holds amount -5, not a whole number of 0 or more" in result.output
    assert (project / "state/default.json").read_bytes() == before
    assert invoke("state", "list").exit_code == 0
