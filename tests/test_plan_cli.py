"""`coins-sync plan` and `coins-sync state`: formats, exit codes and safety, via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from coins_sync.configs.schema import PLAN_SCHEMA, load_schema
from tests.conftest import Invoke, write

ACME = """\
companyId: ACME
rules:
  - event: NEW
    amount: 1
  - event: CHANGED
    amount: 5
  - event: SAME
    amount: 3
"""


def entry(event: str, amount: int, config_id: str, company: str = "ACME") -> dict[str, object]:
    return {
        "companyId": company,
        "configuration": "DEFAULT",
        "event": event,
        "amount": amount,
        "coinConfigId": config_id,
    }


def write_state(project: Path, entries: list[dict[str, object]], serial: int = 3) -> Path:
    path = project / "state" / "default.json"
    write(
        path,
        json.dumps({"version": 1, "lineage": "hand-made", "serial": serial, "entries": entries}),
    )
    return path


def setup_all_actions(project: Path) -> None:
    write(project / "configs/acme.yaml", ACME)
    write_state(
        project, [entry("CHANGED", 4, "WCC1"), entry("SAME", 3, "WCC2"), entry("GONE", 9, "WCC3")]
    )


def test_text_plan_shows_every_action_with_source(project: Path, invoke: Invoke) -> None:
    setup_all_actions(project)
    result = invoke("plan")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["+", "ACME/DEFAULT/NEW", "amount", "1", "configs/acme.yaml:3"]
    assert lines[1].split() == [
        "~",
        "ACME/DEFAULT/CHANGED",
        "amount",
        "4",
        "->",
        "5",
        "configs/acme.yaml:5",
    ]
    assert lines[2].startswith("  ! ACME/DEFAULT/GONE") and "orphan" in lines[2]
    assert lines[-1] == (
        "Plan: 1 to create, 1 to update, 0 uncertain, 1 orphaned, 1 unchanged (changes present)."
    )
    assert "\x1b[" not in result.output


def test_json_plan_follows_the_schema_and_counts_exactly(project: Path, invoke: Invoke) -> None:
    setup_all_actions(project)
    result = invoke("plan", "--format", "json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    jsonschema.Draft202012Validator(load_schema(PLAN_SCHEMA)).validate(data)
    assert data["summary"] == {
        "create": 1,
        "import": 0,
        "move": 0,
        "update": 1,
        "retire": 0,
        "uncertain": 0,
        "orphan": 1,
        "unchanged": 1,
    }
    assert data["state"] == {"lineage": "hand-made", "serial": 3}
    update = next(c for c in data["changes"] if c["action"] == "update")
    assert update == {
        "action": "update",
        "key": {"companyId": "ACME", "configuration": "DEFAULT", "event": "CHANGED"},
        "amount": 5,
        "before": 4,
        "source": "configs/acme.yaml:5",
        "coinConfigId": "WCC1",
    }


def test_out_saves_the_json_plan(project: Path, invoke: Invoke) -> None:
    setup_all_actions(project)
    result = invoke("plan", "--out", "plan.json")
    assert result.exit_code == 0
    saved = json.loads((project / "plan.json").read_text())
    assert saved["summary"]["create"] == 1
    assert len(saved["configs_digest"]) == 64
    assert saved["environment"] == "default"


def test_detailed_exitcode(project: Path, invoke: Invoke) -> None:
    setup_all_actions(project)
    assert invoke("plan", "--detailed-exitcode").exit_code == 2
    write_state(project, [entry("NEW", 1, "A1"), entry("CHANGED", 5, "A2"), entry("SAME", 3, "A3")])
    result = invoke("plan", "--detailed-exitcode")
    assert result.exit_code == 0
    assert "(no changes)" in result.output
    write(project / "configs/bad.yaml", "companyId: X\n")
    assert invoke("plan", "--detailed-exitcode").exit_code == 1


def test_plan_never_writes_state(project: Path, invoke: Invoke) -> None:
    write(project / "configs/acme.yaml", ACME)
    assert invoke("plan").exit_code == 0
    assert not (project / "state").exists()
    path = write_state(project, [entry("SAME", 3, "WCC2")])
    before = path.read_bytes()
    assert invoke("plan").exit_code == 0
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["default.json"]


def test_markdown_plan_has_summary_then_table(project: Path, invoke: Invoke) -> None:
    setup_all_actions(project)
    result = invoke("plan", "--format", "markdown")
    assert result.exit_code == 0
    text = result.output
    assert text.index("| 1 | 1 | 0 | 1 | 1 |") < text.index("| action | key | amount | source |")
    assert "| ~ update | `ACME/DEFAULT/CHANGED` | 4 → 5 | `configs/acme.yaml:5` |" in text
    assert "<details>" not in text


def test_markdown_for_3000_creates_fits_one_comment(project: Path, invoke: Invoke) -> None:
    for company in range(30):
        rules = "".join(f"  - event: EVENT_NUMBER_{i:04d}\n    amount: {i}\n" for i in range(100))
        write(
            project / f"configs/c{company:02d}.yaml",
            f"companyId: COMPANY_{company:02d}\nrules:\n{rules}",
        )
    result = invoke("plan", "--format", "markdown")
    assert result.exit_code == 0
    assert len(result.output) < 65_536
    assert "| 3000 | 0 | 0 | 0 | 0 |" in result.output
    shown = result.output.count("| + create |")
    assert 200 < shown < 3000
    # the fold's summary says how many rows it really holds, never "All 3000"
    assert f"<details><summary>{shown} of 3000 changes</summary>" in result.output
    assert f"… and {3000 - shown} more changes not shown" in result.output


def test_corrupt_state_exit_1_and_untouched(project: Path, invoke: Invoke) -> None:
    write(project / "configs/acme.yaml", ACME)
    path = write(project / "state/default.json", '{"version": 1, "lineage": "x", "ser')
    before = path.read_bytes()
    result = invoke("plan")
    assert result.exit_code == 1
    assert "Error: state/default.json:1:32: corrupt or truncated state" in result.output
    assert path.read_bytes() == before


def threshold_setup(project: Path) -> None:
    rules = "".join(f"  - event: E{i}\n    amount: {2 if i < 4 else 1}\n" for i in range(10))
    write(project / "configs/acme.yaml", f"companyId: ACME\nrules:\n{rules}")
    write_state(project, [entry(f"E{i}", 1, f"WCC{i}") for i in range(10)])


def test_threshold_refuses_without_force(project: Path, invoke: Invoke) -> None:
    threshold_setup(project)
    result = invoke("plan")
    assert result.exit_code == 1
    assert "4 updates touch 40% of 10 managed entries" in result.output
    assert "--force" in result.output
    forced = invoke("plan", "--force", "--detailed-exitcode")
    assert forced.exit_code == 2
    assert "4 to update" in forced.output


def test_threshold_is_settable_per_environment(project: Path, invoke: Invoke) -> None:
    threshold_setup(project)
    write(
        project / "pyproject.toml",
        "[tool.coins-sync.environments.default]\nupdate_threshold = 0.5\n",
    )
    assert invoke("plan").exit_code == 0


def test_max_amount_setting_is_enforced(project: Path, invoke: Invoke) -> None:
    write(project / "configs/acme.yaml", ACME)
    write(project / "pyproject.toml", "[tool.coins-sync.environments.default]\nmax_amount = 4\n")
    result = invoke("plan")
    assert result.exit_code == 1
    assert "configs/acme.yaml:6:13: rules[1].amount: 5 is above the maximum of 4" in result.output


def test_environments_and_overrides(project: Path, invoke: Invoke) -> None:
    write(project / "rules/acme.yaml", ACME)
    write(
        project / "pyproject.toml",
        '[tool.coins-sync]\nconfigs = "rules"\ndefault_environment = "staging"\n'
        '[tool.coins-sync.environments.staging]\nstate = "st/staging.json"\n'
        "[tool.coins-sync.environments.prod]\n",
    )
    write(
        project / "st/staging.json",
        json.dumps({"version": 1, "lineage": "s", "serial": 1, "entries": [entry("NEW", 1, "W1")]}),
    )
    staging = json.loads(invoke("plan", "--format", "json").output)
    assert staging["environment"] == "staging" and staging["summary"]["create"] == 2
    prod = json.loads(invoke("plan", "--env", "prod", "--format", "json").output)
    assert prod["environment"] == "prod" and prod["summary"]["create"] == 3
    other = json.loads(
        invoke("plan", "--state", "st/staging.json", "--env", "prod", "--format", "json").output
    )
    assert other["summary"]["create"] == 2
    result = invoke("plan", "--env", "nope")
    assert (
        result.exit_code == 1
        and "unknown environment 'nope' (known: prod, staging)" in result.output
    )


def test_unknown_setting_is_an_error(project: Path, invoke: Invoke) -> None:
    write(project / "configs/acme.yaml", ACME)
    write(project / "pyproject.toml", "[tool.coins-sync.environments.default]\nmax_amonut = 4\n")
    result = invoke("plan")
    assert result.exit_code == 1
    assert "unknown setting tool.coins-sync.environments.default.max_amonut" in result.output


def test_state_list_text_and_json(project: Path, invoke: Invoke) -> None:
    write_state(project, [entry("B", 2, "WCC2"), entry("A", 1, "WCC1")])
    text = invoke("state", "list")
    assert text.exit_code == 0
    assert text.output.splitlines()[1].split() == ["ACME/DEFAULT/A", "1", "WCC1"]
    assert "2 entries, 0 uncertain" in text.output
    data = json.loads(invoke("state", "list", "--format", "json").output)
    assert [e["event"] for e in data["entries"]] == ["A", "B"]


def test_state_rm_asks_then_forgets(project: Path, invoke: Invoke) -> None:
    path = write_state(project, [entry("A", 1, "WCC1"), entry("B", 2, "WCC2")])
    refused = invoke("state", "rm", "ACME/DEFAULT/A")  # no terminal, no --yes
    assert refused.exit_code == 1
    assert len(json.loads(path.read_text())["entries"]) == 2
    result = invoke("state", "rm", "ACME/DEFAULT/A", "--yes")
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert [e["event"] for e in data["entries"]] == ["B"]
    assert data["serial"] == 4
    assert invoke("state", "rm", "ACME/DEFAULT/A", "--yes").exit_code == 1
    assert invoke("state", "rm", "not-a-key", "--yes").exit_code == 1
