"""``report``: CSV cells cannot become spreadsheet formulas; the Markdown report is inert
and fits a size budget, whatever the state and the audit log hold."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.conftest import Invoke, write

FORMULAS = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "  =HYPERLINK(x)"]


def state_with(project: Path, companies: list[str]) -> None:
    entries = [
        {
            "companyId": c,
            "configuration": "DEFAULT",
            "event": "MEAL",
            "amount": 1,
            "coinConfigId": f"WCC{i}",
        }
        for i, c in enumerate(companies)
    ]
    body = {"version": 1, "lineage": "l-1", "serial": 1, "entries": entries}
    write(project / "state/default.json", json.dumps(body))


def test_report_csv_neutralises_formula_cells(project: Path, invoke: Invoke) -> None:
    state_with(project, [*FORMULAS, "ACME"])
    audit = {
        "at": "=cmd|' /C calc'!A0",
        "action": "create",
        "outcome": "+created",
        "actor": "@evil",
        "commit": "-2+3",
        "key": {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL"},
    }
    write(project / "state/default.audit.jsonl", json.dumps(audit) + "\n")
    result = invoke("report", "--format", "csv")
    assert result.exit_code == 0, result.output
    table = list(csv.reader(io.StringIO(result.stdout, newline="")))
    cells = [cell for row in table[1:] for cell in row]
    assert not [c for c in cells if c.lstrip(" ")[:1] in ("=", "+", "-", "@", "\t", "\r")]
    companies = {row[0] for row in table[1:]}
    assert {"'=1+1", "'+1", "'-1", "'@SUM(A1)", "'  =HYPERLINK(x)", "ACME"} <= companies
    acme = next(row for row in table[1:] if row[0] == "ACME")
    assert acme[8:12] == ["'=cmd|' /C calc'!A0", "'+created", "'@evil", "'-2+3"]
    assert acme[12:] == ["", ""]  # retired at, by: not retired
    assert acme[3] == "1"  # numbers stay numbers
