"""`coins-sync validate`: one clear problem per place, never two that say the same thing.

Issue 13: a YAML 1.1 boolean (``yes``, ``NO``) or an infinity (``.inf``) in a typed
field used to give two problems at one ``path:line:col``: the loader's YAML 1.1 note and
the schema's type error, or the schema's type error and its range error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Invoke, write


def problem_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("configs/")]


@pytest.mark.parametrize(
    ("amount", "says"),
    [
        (".inf", "rules[0].amount: must be a whole number, got the float inf"),
        ("-.inf", "rules[0].amount: must be a whole number, got the float -inf"),
        (
            "yes",
            "'yes' is read by YAML 1.1 as the boolean true, but rules[0].amount must be a whole number",
        ),
        (
            "NO",
            "'NO' is read by YAML 1.1 as the boolean false, but rules[0].amount must be a whole number",
        ),
        (
            "0x10000",
            "'0x10000' is read by YAML 1.1 as the integer 65536; "
            "rules[0].amount: 65536 is above the maximum of 10000 (max_amount)",
        ),
    ],
)
def test_a_bad_amount_is_one_problem(project: Path, invoke: Invoke, amount: str, says: str) -> None:
    write(
        project / "configs/a.yaml", f"companyId: ACME\nrules:\n  - event: A\n    amount: {amount}\n"
    )
    result = invoke("validate")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [f"configs/a.yaml:4:13: {says}"]
    assert "invalid: 1 problem in 1 file" in result.output


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "companyId: yes\nrules: []\n",
            "configs/a.yaml:1:12: 'yes' is read by YAML 1.1 as the boolean true, "
            "but companyId must be a string; quote it ('yes')",
        ),
        (
            "companyId: ACME\nrules:\n  - event: Off\n    amount: 1\n",
            "configs/a.yaml:3:12: 'Off' is read by YAML 1.1 as the boolean false, "
            "but rules[0].event must be a string; quote it ('Off')",
        ),
        (
            "companyId: 010\nrules: []\n",
            "configs/a.yaml:1:12: '010' is read by YAML 1.1 as the integer 8, "
            "but companyId must be a string; quote it ('010')",
        ),
        (
            "companyId: ACME\nrules:\n  - event: A\n    amount: 1\n    on: 2\n",
            "configs/a.yaml:5:5: rules[0]: unknown field 'on' ('on' is read by YAML 1.1 as "
            "the boolean true; allowed: amount, coinConfigId, configuration, event, movedFrom, "
            "retired)",
        ),
    ],
)
def test_a_yaml11_reading_in_a_string_place_is_one_problem(
    project: Path, invoke: Invoke, text: str, says: str
) -> None:
    write(project / "configs/a.yaml", text)
    result = invoke("validate")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [says]


def test_a_yaml11_reading_the_schema_accepts_is_still_reported(
    project: Path, invoke: Invoke
) -> None:
    write(project / "configs/a.yaml", "companyId: ACME\nrules:\n  - event: A\n    amount: 0x10\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [
        "configs/a.yaml:4:13: '0x10' is read by YAML 1.1 as the integer 16; "
        "write a plain decimal integer, or quote it if you mean a string"
    ]


def test_problems_are_values_ordered_by_place_then_message() -> None:
    from coins_sync.errors import ConfigError, Problem

    b1 = Problem("b.yaml", 1, 1, "x")
    a2y, a2a, a10 = (
        Problem("a.yaml", 2, 1, "y"),
        Problem("a.yaml", 2, 1, "a"),
        Problem("a.yaml", 10, 1, "a"),
    )
    assert ConfigError([b1, a2y, a10, a2a]).problems == [a2a, a2y, a10, b1]  # 10 after 2
    assert Problem("a.yaml", 2, 1, "y") == a2y and len({a2y, Problem("a.yaml", 2, 1, "y")}) == 1
    assert str(a10) == "a.yaml:10:1: a"
    assert repr(b1) == "Problem(path='b.yaml', line=1, col=1, message='x')"
    with pytest.raises(AttributeError):
        b1.line = 2  # type: ignore[misc]
