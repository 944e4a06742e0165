"""Edge cases found in review: each gets a clear error, never a traceback or a duplicate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

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


@pytest.mark.parametrize("value", ['"ACME\\n"', "|\n    ACME"])
def test_identifier_with_trailing_newline_is_invalid(
    project: Path, invoke: Invoke, value: str
) -> None:
    write(project / "configs/a.yaml", f"companyId: {value}\nrules: []\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "is not a valid identifier" in result.output


def test_lookalike_loopback_host_needs_https(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", RULES)
    result = invoke(
        "apply", "--yes", "--api-url", "http://127.evil.example/", env={"COINS_SYNC_TOKEN": "t" * 9}
    )
    assert result.exit_code == 1
    assert "use https" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("apply", "--yes", "--api-url", "http://[::1"),
        ("plan", "--state", ""),
        ("plan", "--state", "state/"),
        ("plan", "--out", "/proc/no/such/plan.json"),
    ],
)
def test_bad_options_are_clear_errors(project: Path, invoke: Invoke, args: tuple[str, ...]) -> None:
    write(project / "configs/a.yaml", RULES)
    result = invoke(*args)
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("tool = 1\n", "tool must be a table, got 1"),
        ('[tool]\n"coins-sync" = 3\n', "[tool.coins-sync] must be a table, got 3"),
        ("[tool.coins-sync]\nenvironments = 5\n", "tool.coins-sync.environments must be a table"),
        ('[tool.coins-sync]\nenvironments = "x"\n', "environments must be a table, got 'x'"),
        ("[tool.coins-sync.environments]\ndefault = 1\n", "environments.default must be a table"),
        (
            "[tool.coins-sync.environments]\ndefault = {}\nother = [1]\n",
            "tool.coins-sync.environments.other must be a table, got [1]",
        ),
    ],
)
def test_odd_pyproject_is_a_clear_error(
    project: Path, invoke: Invoke, toml: str, field: str
) -> None:
    write(project / "configs/a.yaml", RULES)
    write(project / "pyproject.toml", toml)
    for args in (("plan",), ("validate",)):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: pyproject.toml: "), result.output
        assert field in result.output


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


def test_refresh_never_recreates_a_config_the_server_cannot_find(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/a.yaml", RULES.replace("amount: 6", "amount: 7"))
    state_with(project, ENTRY)
    result = invoke(
        "plan",
        "--refresh",
        "--format",
        "json",
        "--api-url",
        sandbox.url,
        env={"COINS_SYNC_TOKEN": SANDBOX_TOKEN},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["field"] for d in data["drift"]] == ["missing"]
    assert data["summary"]["create"] == 0 and data["summary"]["update"] == 0
    applied = invoke(
        "apply",
        "--yes",
        "--refresh",
        "--api-url",
        sandbox.url,
        env={"COINS_SYNC_TOKEN": SANDBOX_TOKEN},
    )
    assert applied.exit_code == 0, applied.output
    assert "state rm ACME/DEFAULT/MEAL" in applied.output
    assert sandbox.configs() == []


def test_hand_edited_saved_plan_cannot_create_a_recorded_key(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/a.yaml", RULES + "  - event: NEW\n    amount: 1\n")
    state_with(project, ENTRY)
    assert invoke("plan", "--out", "plan.json").exit_code == 0
    plan = json.loads((project / "plan.json").read_text())
    forged = dict(plan["changes"][0])
    forged["key"] = {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL"}
    forged["amount"] = 6
    plan["changes"].append(forged)
    write(project / "plan.json", json.dumps(plan))
    result = invoke(
        "apply",
        "plan.json",
        "--yes",
        "--api-url",
        sandbox.url,
        env={"COINS_SYNC_TOKEN": SANDBOX_TOKEN},
    )
    assert result.exit_code == 1
    assert "edited by hand" in result.output
    assert sandbox.configs() == []


def test_unsafe_plan_is_not_saved(project: Path, invoke: Invoke) -> None:
    rules = "".join(f"  - event: E{i}\n    amount: 2\n" for i in range(10))
    write(project / "configs/a.yaml", f"companyId: ACME\nrules:\n{rules}")
    state_with(
        project,
        *({**ENTRY, "event": f"E{i}", "amount": 1, "coinConfigId": f"W{i}"} for i in range(10)),
    )
    result = invoke("plan", "--out", "plan.json")
    assert result.exit_code == 1
    assert not (project / "plan.json").exists()
    assert invoke("plan", "--out", "plan.json", "--force").exit_code == 0
    assert (project / "plan.json").exists()


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
