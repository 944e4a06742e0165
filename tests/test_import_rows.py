"""``state import --from``: keys are checked as the rule files check them, and refused
rows are summed up, in the output and in one audit record (issue 20, item 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coins_sync.configs.model import IDENTIFIER, is_identifier
from coins_sync.configs.schema import load_schema
from tests.conftest import Invoke, write

HEADER = "companyId,configuration,event,coinConfigId\n"
NOWHERE = ("--api-url", "http://127.0.0.1:9")  # nothing listens: no row may need a GET
ENV = {"COINS_SYNC_TOKEN": "t"}


def test_the_identifier_is_the_rule_schemas() -> None:
    pattern = load_schema("rules.schema.json")["$defs"]["identifier"]["pattern"]
    assert pattern == f"^{IDENTIFIER.pattern}$(?![\\s\\S])"
    assert is_identifier("ACME.1_a-b") and not is_identifier("x\n")


@pytest.mark.parametrize(
    "key",
    [
        "ACME,DE FAULT,MEAL",
        "-ACME,DEFAULT,MEAL",
        "ACME,DEFAULT,MEAL/X",
        "ACME,DEFAULT," + "E" * 65,
        "ACMÉ,DEFAULT,MEAL",
        "ACME,`x`,MEAL",
    ],
)
def test_a_key_no_rule_file_could_name_is_refused(project: Path, invoke: Invoke, key: str) -> None:
    write(project / "rows.csv", f"{HEADER}{key},WCC1\n")
    result = invoke("state", "import", "--from", "rows.csv", *NOWHERE, env=ENV)
    assert result.exit_code == 1
    assert "rows.csv:2:1:" in result.output and "not a valid identifier" in result.output
    assert not (project / "state/default.json").exists()


def test_many_malformed_rows_are_listed_twenty_and_counted(project: Path, invoke: Invoke) -> None:
    rows = "".join(f"ACME,DEFAULT,BAD KEY {i},WCC{i}\n" for i in range(5_000))
    write(project / "rows.csv", HEADER + rows)
    result = invoke("state", "import", "--from", "rows.csv", *NOWHERE, env=ENV)
    assert result.exit_code == 1
    assert result.output.count("not a valid identifier") == 20
    assert "rows.csv:22:1: … and 4,980 more rows refused" in result.output
    assert "(showing 20 of 5,000)" in result.output


def test_refused_rows_are_one_audit_record_and_a_summary(project: Path, invoke: Invoke) -> None:
    entry = {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL", "amount": 1}
    state = {
        "version": 1,
        "lineage": "l-1",
        "serial": 3,
        "entries": [{**entry, "coinConfigId": "WCC1"}],
    }
    write(project / "state/default.json", json.dumps(state))
    rows = "".join(f"ACME,DEFAULT,MEAL,WCC{i}\n" for i in range(2, 5_002))
    write(project / "rows.csv", HEADER + rows)
    result = invoke("state", "import", "--from", "rows.csv", *NOWHERE, env=ENV)
    assert result.exit_code == 1, result.output
    assert result.output.count("  failed  rows.csv:") == 20
    assert "  … and 4,980 more rows refused" in result.output
    assert "0 imported, 5000 failed (of 5000 rows" in result.output
    audit = (project / "state/default.audit.jsonl").read_text("utf-8").splitlines()
    assert len(audit) == 1
    record = json.loads(audit[0])
    assert record["outcome"] == "failed" and record["action"] == "import"
    assert record["message"].startswith("5,000 row(s) refused: rows.csv:2: ")
    assert record["message"].endswith("; and 4,997 more")
    assert json.loads((project / "state/default.json").read_text("utf-8"))["serial"] == 3


def test_a_single_import_of_a_key_no_rule_file_could_name_is_refused(
    project: Path, invoke: Invoke
) -> None:
    result = invoke("state", "import", "ACME/DE FAULT/MEAL", "WCC1", *NOWHERE, env=ENV)
    assert result.exit_code == 1
    assert "configuration 'DE FAULT': not a valid identifier" in result.output
    assert not (project / "state/default.json").exists()
