"""`coins-sync validate` edge cases found in review: one clear problem at the right place."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Invoke, write


@pytest.mark.parametrize("value", ['"ACME\\n"', "|\n    ACME"])
def test_identifier_with_trailing_newline_is_invalid(
    project: Path, invoke: Invoke, value: str
) -> None:
    write(project / "configs/a.yaml", f"companyId: {value}\nrules: []\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "is not a valid identifier" in result.output


def test_rule_repeated_through_an_alias_is_one_clear_problem(project: Path, invoke: Invoke) -> None:
    write(
        project / "configs/a.yaml",
        "companyId: A\nrules:\n  - event: Y\n    amount: 1\n  - &r {event: X, amount: 2}\n  - *r\n",
    )
    result = invoke("validate")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("configs/")]
    assert lines == [
        "configs/a.yaml:5:5: duplicate rule A/DEFAULT/X: this rule is listed again "
        "through a YAML alias (*name) of it"
    ]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('companyId: "A\nrules:\n  - event: X\n    amount: 1\n', "configs/a.yaml:1:12:"),
        ("companyId: A\nrules: [\n  {event: X, amount: 1}\n", "configs/a.yaml:2:8:"),
    ],
)
def test_unclosed_quote_or_bracket_points_where_it_opened(
    project: Path, invoke: Invoke, text: str, where: str
) -> None:
    write(project / "configs/a.yaml", text)
    result = invoke("validate")
    assert result.exit_code == 1
    assert result.output.startswith(where), result.output
