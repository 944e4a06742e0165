"""README examples run as a user types them: the output matches the README's words."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO, Invoke, write

README = (REPO / "README.md").read_text()

# The README's broken rule file, rebuilt so that each problem sits where it says.
ACME = """\
companyId: ACME
rules:
  - event: MEAL_CARD_PAYMENT
    amount: 5
  - event: GIFT_CARD_PAYMENT
    amount: 6.0
  - event: TRAVEL_CARD_PAYMENT
    amout: 4
"""


def _console_block(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    block = re.search(r"```console\n(.*?)```", section, re.S)
    assert block is not None, heading
    return block.group(1).splitlines()


def test_the_validate_example_prints_what_the_readme_shows(project: Path, invoke: Invoke) -> None:
    lines = _console_block("### `coins-sync validate")
    assert lines[0] == "$ coins-sync validate"
    shown = lines[1 : next(i for i, line in enumerate(lines) if i and line.startswith("$"))]
    write(project / "configs" / "acme.yaml", ACME)
    result = invoke("validate")
    assert result.exit_code == 1
    assert result.output.splitlines() == shown


def test_a_malformed_import_file_is_not_called_a_rule_file(project: Path, invoke: Invoke) -> None:
    write(project / "bad.csv", "companyId,event,coinConfigId\nACME,X,WCC1\n")
    result = invoke("state", "import", "--from", "bad.csv", env={"COINS_SYNC_TOKEN": "t0ken-x"})
    assert result.exit_code == 1
    assert "bad.csv:1:1: the header must be" in result.output
    assert "Error: 1 problem in the import file" in result.output
    assert "rule files" not in result.output
