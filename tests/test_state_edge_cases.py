"""Hand-written and damaged state files found in review: clear errors, nothing rewritten."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Invoke, write
from tests.small_project import ENTRY, RULES, state_with


def test_huge_number_in_state_is_a_clear_error(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", RULES)
    path = write(
        project / "state/default.json",
        '{"version": 1, "lineage": "L", "serial": ' + "9" * 5000 + ', "entries": []}',
    )
    before = path.read_bytes()
    result = invoke("plan")
    assert result.exit_code == 1
    assert "not a usable state file" in result.output
    assert path.read_bytes() == before


def test_journal_record_missing_fields_is_skipped_and_reported(
    project: Path, invoke: Invoke
) -> None:
    state_with(project, ENTRY)
    write(
        project / "state/default.journal.jsonl",
        '{"kind":"result","lineage":"L","amount":1}\n',
    )
    result = invoke("state", "list")
    assert result.exit_code == 0, result.output
    assert "garbled record" in result.output


def test_hand_written_state_with_bom_loads_and_float_version_does_not(
    project: Path, invoke: Invoke
) -> None:
    write(project / "configs/a.yaml", RULES)
    body = json.dumps({"version": 1, "lineage": "L", "serial": 1, "entries": [ENTRY]})
    write(project / "state/default.json", b"\xef\xbb\xbf" + body.encode())
    result = invoke("plan", "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    write(project / "state/default.json", body.replace('"version": 1', '"version": 1.0'))
    assert invoke("plan").exit_code == 1
