"""`coins-sync validate`: every bad-input class is reported at its exact line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coins_sync.configs.loader import RuleLoader
from tests.conftest import CORPUS, REPO, Invoke, write

GOOD = """\
companyId: CEKEKCARDS
rules:
  - event: MEAL_CARD_PAYMENT
    amount: 6
  - event: INVOICE_PAYMENT
    amount: 10
    configuration: CUSTOM
"""


def problem_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("configs/")]


def test_valid_file_passes_with_summary(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", GOOD)
    result = invoke("validate")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "valid: 2 rules in 1 file"


def test_repository_examples_are_valid(invoke: Invoke) -> None:
    result = invoke("validate", str(REPO / "configs"))
    assert result.exit_code == 0, result.output
    assert "valid:" in result.output


@pytest.mark.parametrize(
    ("amount_text", "fragment"),
    [
        ("6.0", "must be a whole number, got the float 6.0"),
        ('"6"', "must be a whole number, got the string '6'"),
        (".inf", "must be a whole number, got the float inf"),
        ("010", "'010' is read by YAML 1.1 as the integer 8"),
        ("0x10", "'0x10' is read by YAML 1.1 as the integer 16"),
        ("1_000", "'1_000' is read by YAML 1.1 as the integer 1000"),
        ("yes", "'yes' is read by YAML 1.1 as the boolean true"),
        ("-1", "-1 is below the minimum of 0"),
        ("10001", "10001 is above the maximum of 10000"),
    ],
)
def test_surprising_amounts_are_errors_at_their_line(
    project: Path, invoke: Invoke, amount_text: str, fragment: str
) -> None:
    text = f"companyId: ACME\nrules:\n  - event: A\n    amount: 1\n  - event: B\n    amount: {amount_text}\n"
    write(project / "configs/a.yaml", text)
    result = invoke("validate")
    assert result.exit_code == 1
    lines = problem_lines(result.output)
    assert lines, result.output
    assert all(line.startswith("configs/a.yaml:6:13: ") for line in lines), lines
    assert any(fragment in line for line in lines), lines


@pytest.mark.parametrize("word", ["NO", "on", "yes", "Off", "TRUE_"[:4]])
def test_yaml11_booleans_in_identifiers_are_errors(
    project: Path, invoke: Invoke, word: str
) -> None:
    write(
        project / "configs/a.yaml", f"companyId: ACME\nrules:\n  - event: {word}\n    amount: 1\n"
    )
    result = invoke("validate")
    assert result.exit_code == 1
    lines = problem_lines(result.output)
    assert lines and all(line.startswith("configs/a.yaml:3:12: ") for line in lines), lines
    assert "boolean" in lines[0]


def test_octal_company_is_an_error(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", "companyId: 010\nrules: []\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/a.yaml:1:12: '010' is read by YAML 1.1 as the integer 8" in result.output


def test_duplicate_mapping_key_is_reported_at_second_key(project: Path, invoke: Invoke) -> None:
    text = "companyId: ACME\nrules:\n  - event: A\n    amount: 1\n    amount: 2\n"
    write(project / "configs/a.yaml", text)
    result = invoke("validate")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [
        "configs/a.yaml:5:5: duplicate key 'amount' (first defined at line 4)"
    ]


def test_merge_key_override_is_not_a_duplicate(project: Path, invoke: Invoke) -> None:
    text = (
        "companyId: ACME\nrules:\n  - &base\n    event: A\n    amount: 1\n"
        "  - <<: *base\n    event: B\n"
    )
    write(project / "configs/a.yaml", text)
    result = invoke("validate")
    assert result.exit_code == 0, result.output


def test_duplicate_rule_key_names_both_locations(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", "companyId: ACME\nrules:\n  - event: A\n    amount: 1\n")
    write(
        project / "configs/sub/b.yml",
        "companyId: ACME\nconfiguration: DEFAULT\nrules:\n  - event: B\n    amount: 1\n"
        "  - event: A\n    amount: 2\n",
    )
    result = invoke("validate")
    assert result.exit_code == 1
    assert problem_lines(result.output) == [
        "configs/a.yaml:3:5: duplicate rule ACME/DEFAULT/A; also defined at configs/sub/b.yml:6",
        "configs/sub/b.yml:6:5: duplicate rule ACME/DEFAULT/A; also defined at configs/a.yaml:3",
    ]


def test_unknown_field_points_at_the_typo(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", "companyId: ACME\nrules:\n  - event: A\n    amout: 1\n")
    result = invoke("validate")
    lines = problem_lines(result.output)
    assert result.exit_code == 1
    assert lines[0] == "configs/a.yaml:3:5: rules[0]: missing required field 'amount'"
    assert lines[1].startswith("configs/a.yaml:4:5: rules[0]: unknown field 'amout'")


def test_object_building_tag_is_refused(project: Path, invoke: Invoke) -> None:
    text = "companyId: ACME\nrules:\n  - event: !!python/object/apply:os.system ['true']\n"
    write(project / "configs/a.yaml", text)
    result = invoke("validate")
    assert result.exit_code == 1
    lines = problem_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("configs/a.yaml:3:12: YAML error:"), lines
    assert "python/object" in lines[0]


def test_alias_bomb_fails_fast(project: Path, invoke: Invoke) -> None:
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        levels.append(f"a{i}: &a{i} [{refs}]")
    write(project / "configs/bomb.yaml", "\n".join(levels) + "\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/bomb.yaml:1:1: aliases expand to more than" in result.output


def test_recursive_alias_is_refused(project: Path, invoke: Invoke) -> None:
    write(project / "configs/loop.yaml", "companyId: ACME\nrules: &r [*r]\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/loop.yaml:1:1: recursive alias" in result.output


def test_file_over_size_limit_is_refused_before_parsing(project: Path) -> None:
    path = write(project / "configs/big.yaml", "companyId: ACME\nrules: [" + "x" * 5000 + "\n")
    loader = RuleLoader(max_file_bytes=1000)
    with pytest.raises(Exception) as info:
        loader.load([path.parent])
    problems = [str(p) for p in info.value.problems]  # type: ignore[attr-defined]
    assert problems == [
        "configs/big.yaml:1:1: file is 5025 bytes, over the 1000-byte limit; refusing to parse it"
    ]


def test_size_limit_setting_applies_to_validate(project: Path, invoke: Invoke) -> None:
    write(project / "pyproject.toml", "[tool.coins-sync]\nmax_file_bytes = 50\n")
    write(project / "configs/a.yaml", GOOD)
    result = invoke("validate")
    assert result.exit_code == 1
    assert "over the 50-byte limit" in result.output


def test_non_utf8_names_the_line(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", b"companyId: ACME\nrules:\n  - event: \xff\xfe\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/a.yaml:3:12: not valid UTF-8 (byte 0xff)" in result.output


@pytest.mark.parametrize(
    ("content", "place"),
    [
        (b"\xef\xbb\xbfcompanyId: \xffACME\n", "1:12"),
        (b"\xef\xbb\xbfcompanyId: ACME\nrules:\n  - event: \xff\xfe\n", "3:12"),
    ],
    ids=["line 1", "line 3"],
)
def test_non_utf8_after_a_bom_names_the_byte_and_its_place(
    project: Path, invoke: Invoke, content: bytes, place: str
) -> None:
    # The BOM is skipped as utf-8-sig does, and it is no column of line 1.
    write(project / "configs/a.yaml", content)
    result = invoke("validate")
    assert result.exit_code == 1
    assert f"configs/a.yaml:{place}: not valid UTF-8 (byte 0xff)" in result.output


@pytest.mark.parametrize("content", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_an_error(project: Path, invoke: Invoke, content: str) -> None:
    write(project / "configs/a.yaml", content)
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/a.yaml:1:1: file is empty" in result.output


@pytest.mark.parametrize(
    ("content", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a string")]
)
def test_top_level_must_be_a_mapping(
    project: Path, invoke: Invoke, content: str, kind: str
) -> None:
    write(project / "configs/a.yaml", content)
    result = invoke("validate")
    assert result.exit_code == 1
    assert f"configs/a.yaml:1:1: the top level is {kind}" in result.output.replace(
        "a sequence", "a list"
    )


@pytest.mark.parametrize("depth", [900, 50_000])
def test_absurd_nesting_is_a_clear_error(project: Path, invoke: Invoke, depth: int) -> None:
    write(project / "configs/deep.yaml", "companyId: ACME\nrules: " + "[" * depth + "]" * depth)
    result = invoke("validate")
    assert result.exit_code == 1
    lines = problem_lines(result.output)
    assert lines and lines[0].startswith("configs/deep.yaml:"), result.output


def test_bom_and_crlf_are_accepted(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    result = invoke("validate")
    assert result.exit_code == 0, result.output


def test_multiple_documents_are_an_error(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", GOOD + "---\n" + GOOD)
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/a.yaml:8:1: YAML error:" in result.output


def test_every_problem_is_reported_at_once_sorted(project: Path, invoke: Invoke) -> None:
    write(project / "configs/b.yaml", "companyId: B\nrules:\n  - event: X\n    amount: 1.5\n")
    write(project / "configs/a.yaml", "companyId: A\nrule: []\n")
    result = invoke("validate")
    assert result.exit_code == 1
    lines = problem_lines(result.output)
    assert [line.split(":")[0] for line in lines] == [
        "configs/a.yaml",
        "configs/a.yaml",
        "configs/b.yaml",
    ]
    assert result.output.splitlines()[-1] == "invalid: 3 problems in 2 files"


def test_json_format_is_machine_readable(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", "companyId: A\nrules:\n  - event: X\n    amount: 1.5\n")
    result = invoke("validate", "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["valid"] is False
    assert data["problems"] == [
        {
            "path": "configs/a.yaml",
            "line": 4,
            "col": 13,
            "message": "rules[0].amount: must be a whole number, got the float 1.5",
        }
    ]


def test_explicit_path_and_missing_path(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", GOOD)
    assert invoke("validate", "configs/a.yaml").exit_code == 0
    result = invoke("validate", "nope/")
    assert result.exit_code == 1
    assert "nope:0:0: no such file or folder" in result.output


def test_usage_error_exits_1(invoke: Invoke) -> None:
    result = invoke("validate", "--format", "xml")
    assert result.exit_code == 1


def test_yaml_test_suite_corpus_is_named_file_by_file(invoke: Invoke) -> None:
    result = invoke("validate", str(CORPUS))
    assert result.exit_code == 1
    *lines, summary = result.output.splitlines()
    assert summary.startswith("invalid: ")
    problems = [line for line in lines if not line.startswith(" ")]  # not continuations
    # every line names a file and a place in it
    assert all(re.match(r"[^:]+\.yaml:\d+:\d+: \S", line) for line in problems), problems
    named = {line.split(":", 1)[0] for line in problems}
    named = {Path(p).name for p in named}
    expected = {p.name for p in CORPUS.glob("*.yaml")}
    assert len(expected) > 300
    assert expected <= named
