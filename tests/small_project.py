"""A one-rule project and its state, shared by the edge-case tests found in review."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write

RULES = "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 6\n"
ENTRY = {
    "companyId": "ACME",
    "configuration": "DEFAULT",
    "event": "MEAL",
    "amount": 6,
    "coinConfigId": "WCC404404",
}


def state_with(project: Path, *entries: dict[str, object]) -> Path:
    return write(
        project / "state/default.json",
        json.dumps({"version": 1, "lineage": "L", "serial": 1, "entries": list(entries)}),
    )
