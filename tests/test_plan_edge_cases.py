"""Plans found in review: refresh never re-creates, a saved plan is never forged or unsafe."""

from __future__ import annotations

import json
from pathlib import Path

from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write
from tests.small_project import ENTRY, RULES, state_with


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
