"""A saved plan applies exactly what a fresh plan justifies, or nothing (issue 10, §1).

Each test writes a real plan with `plan --out`, edits the JSON by hand the way an
attacker or a careless merge would, and runs `apply PLANFILE` against the sandbox on
127.0.0.1. A refusal must exit 1, name the change that differs, and send nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result

from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
RULES = """\
companyId: ACME
rules:
  - event: MEAL
    amount: 6
  - event: INVOICE
    amount: 10
  - event: FUEL
    amount: 3
"""
Edit = Callable[[dict[str, Any]], None]


def run(invoke: Invoke, sandbox: SandboxServer, *args: str) -> Result:
    return invoke(*args, "--api-url", sandbox.url, env=ENV)


def ok(invoke: Invoke, sandbox: SandboxServer, *args: str) -> Result:
    result = run(invoke, sandbox, *args)
    assert result.exit_code == 0, result.output
    return result


def save(invoke: Invoke, sandbox: SandboxServer, *args: str) -> dict[str, Any]:
    ok(invoke, sandbox, "plan", "--out", "p.json", *args)
    data: dict[str, Any] = json.loads(Path("p.json").read_text("utf-8"))
    return data


def rewrite(data: dict[str, Any]) -> None:
    Path("p.json").write_text(json.dumps(data), "utf-8")


def change(data: dict[str, Any], action: str, event: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in data["changes"] if c["action"] == action and c["key"]["event"] == event
    )
    return found


def amounts(sandbox: SandboxServer) -> dict[str, int]:
    return {c["event"]: c["amount"] for c in sandbox.configs()}


def state_bytes(project: Path) -> bytes | None:
    path = project / "state/default.json"
    return path.read_bytes() if path.exists() else None


def patch_behind_our_back(sandbox: SandboxServer, name: str, **fields: object) -> None:
    config = next(c for c in sandbox.configs() if c["event"] == name)
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        response = client.patch(
            f"/api/v0/enkash-coins/{config['coinConfigId']}",
            json=fields,
            headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        )
    assert response.status_code == 200, response.text


def refused(project: Path, invoke: Invoke, sandbox: SandboxServer, *args: str, says: str) -> Result:
    """Apply p.json; assert it exits 1, names ``says``, and sends and records nothing."""
    configs, stats, state = sandbox.configs(), sandbox.stats, state_bytes(project)
    result = run(invoke, sandbox, "apply", "p.json", "--yes", *args)
    assert result.exit_code == 1, result.output
    assert says in result.output, result.output
    assert "Traceback" not in result.output
    assert sandbox.configs() == configs
    assert (sandbox.stats.get("creates", 0), sandbox.stats.get("patches", 0)) == (
        stats.get("creates", 0),
        stats.get("patches", 0),
    )
    assert state_bytes(project) == state
    return result


# --- uncertain creates ------------------------------------------------------------------

UNCERTAIN_STATE = {
    "version": 1,
    "lineage": "L",
    "serial": 2,
    "entries": [],
    "uncertain": [
        {"companyId": "ACME", "configuration": "DEFAULT", "event": "KEPT", "amount": 3},
        {"companyId": "ACME", "configuration": "DEFAULT", "event": "GONE", "amount": 1},
    ],
}


def test_removed_rule_given_a_source_and_amount_is_never_retried(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: KEPT\n    amount: 3\n"
    )
    write(project / "state/default.json", json.dumps(UNCERTAIN_STATE))
    data = save(invoke, sandbox)
    gone = change(data, "uncertain", "GONE")
    assert "source" not in gone  # its rule was removed from the configs
    gone["source"] = "configs/acme.yaml:3"
    gone["amount"] = 5000
    rewrite(data)

    refused(
        project,
        invoke,
        sandbox,
        "--retry-uncertain",
        says="uncertain of ACME/DEFAULT/GONE (amount 5000, source configs/acme.yaml:3)",
    )
    assert sandbox.configs() == []


def test_unedited_plan_retries_only_the_uncertain_rules_still_in_the_configs(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: KEPT\n    amount: 3\n"
    )
    write(project / "state/default.json", json.dumps(UNCERTAIN_STATE))
    save(invoke, sandbox)
    result = run(invoke, sandbox, "apply", "p.json", "--yes", "--retry-uncertain")
    assert "1 created" in result.output and "1 uncertain skipped" in result.output
    assert amounts(sandbox) == {"KEPT": 3}


# --- changes deleted, repeated or altered ------------------------------------------------


def test_plan_with_a_change_deleted_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    data = save(invoke, sandbox)
    data["changes"] = [c for c in data["changes"] if c["key"]["event"] != "FUEL"]
    rewrite(data)
    refused(
        project,
        invoke,
        sandbox,
        says="lacks the fresh plan's create of ACME/DEFAULT/FUEL (amount 3, source "
        "configs/acme.yaml:7)",
    )


def test_plan_listing_the_same_create_twice_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    data = save(invoke, sandbox)
    data["changes"].append(dict(change(data, "create", "MEAL")))
    rewrite(data)
    result = refused(project, invoke, sandbox, says="ACME/DEFAULT/MEAL is listed again")
    assert "p.json: changes/3" in result.output


def test_inflated_managed_count_cannot_slip_past_the_update_threshold(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules = "".join(f"  - event: E{i}\n    amount: 2\n" for i in range(10))
    write(project / "configs/acme.yaml", f"companyId: ACME\nrules:\n{rules}")
    ok(invoke, sandbox, "apply", "--yes")
    write(
        project / "configs/acme.yaml",
        "companyId: ACME\nrules:\n" + rules.replace("amount: 2", "amount: 5", 4),
    )
    data = save(invoke, sandbox, "--force")  # 4 updates of 10 entries: over 30%
    assert (data["managed"], data["summary"]["update"]) == (10, 4)
    data["managed"] = 100  # 4 of 100 would pass the threshold
    rewrite(data)
    refused(project, invoke, sandbox, says="says 100 managed entries, but the state records 10")
    assert set(amounts(sandbox).values()) == {2}


@pytest.fixture
def applied(project: Path, invoke: Invoke, sandbox: SandboxServer) -> dict[str, Any]:
    """RULES applied; then MEAL raised to 7 and NEW added: one update, one create."""
    write(project / "configs/acme.yaml", RULES)
    ok(invoke, sandbox, "apply", "--yes")
    edited = RULES.replace("amount: 6", "amount: 7") + "  - event: NEW\n    amount: 1\n"
    write(project / "configs/acme.yaml", edited)
    return save(invoke, sandbox)


def _set(action: str, event: str, field: str, value: object) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        change(data, action, event)[field] = value

    return edit


def _add_update_for_unchanged(data: dict[str, Any]) -> None:
    # INVOICE is unchanged; an update to its own amount on its own id is still unjustified
    state = json.loads(Path("state/default.json").read_text("utf-8"))
    invoice = next(e for e in state["entries"] if e["event"] == "INVOICE")
    data["changes"].append(
        {
            "action": "update",
            "key": {"companyId": "ACME", "configuration": "DEFAULT", "event": "INVOICE"},
            "amount": 10,
            "before": 10,
            "source": "configs/acme.yaml:5",
            "coinConfigId": invoice["coinConfigId"],
        }
    )


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (_set("update", "MEAL", "amount", 70), "update of ACME/DEFAULT/MEAL (amount 70, before 6"),
        (_set("update", "MEAL", "before", 5), "update of ACME/DEFAULT/MEAL (amount 7, before 5"),
        (
            _set("update", "MEAL", "coinConfigId", "WCC999"),
            "update of ACME/DEFAULT/MEAL (amount 7, before 6, coinConfigId WCC999",
        ),
        (
            _set("update", "MEAL", "source", "configs/acme.yaml:99"),
            "source configs/acme.yaml:99)",
        ),
        (_set("create", "NEW", "amount", 9), "create of ACME/DEFAULT/NEW (amount 9, source"),
        (
            _set("create", "NEW", "source", "configs/other.yaml:1"),
            "create of ACME/DEFAULT/NEW (amount 1, source configs/other.yaml:1)",
        ),
        (
            _set("create", "NEW", "coinConfigId", "WCC1"),
            "create of ACME/DEFAULT/NEW (amount 1, coinConfigId WCC1",
        ),
        (_set("create", "NEW", "before", 0), "create of ACME/DEFAULT/NEW (amount 1, before 0"),
        (_add_update_for_unchanged, "which leaves that key unchanged"),
    ],
    ids=[
        "update-amount",
        "update-before",
        "update-id",
        "update-source",
        "create-amount",
        "create-source",
        "create-id",
        "create-before",
        "extra-update",
    ],
)
def test_altered_change_is_refused_and_named(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    applied: dict[str, Any],
    edit: Edit,
    says: str,
) -> None:
    edit(applied)
    rewrite(applied)
    result = refused(project, invoke, sandbox, says=says)
    assert "differs from a fresh plan" in result.output
    assert "edited by hand" in result.output


def test_unedited_plan_applies_exactly_its_changes(
    project: Path, invoke: Invoke, sandbox: SandboxServer, applied: dict[str, Any]
) -> None:
    rewrite(applied)  # a JSON round trip changes nothing
    result = ok(invoke, sandbox, "apply", "p.json", "--yes")
    assert "1 created, 1 updated" in result.output
    assert amounts(sandbox) == {"MEAL": 7, "INVOICE": 10, "FUEL": 3, "NEW": 1}


def test_orphan_shown_at_another_amount_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    ok(invoke, sandbox, "apply", "--yes")
    write(project / "configs/acme.yaml", RULES.replace("  - event: FUEL\n    amount: 3\n", ""))
    data = save(invoke, sandbox)
    change(data, "orphan", "FUEL")["amount"] = 30
    rewrite(data)
    refused(project, invoke, sandbox, says="orphan of ACME/DEFAULT/FUEL (amount 30")


# --- the environment ----------------------------------------------------------------------


def test_plan_for_another_environment_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(
        project / "pyproject.toml",
        "[tool.coins-sync.environments.staging]\n[tool.coins-sync.environments.prod]\n",
    )
    write(project / "configs/acme.yaml", RULES)
    # neither environment has a state yet, so lineage, serial and configs all match
    ok(invoke, sandbox, "plan", "--env", "staging", "--out", "p.json")
    result = run(invoke, sandbox, "apply", "p.json", "--yes", "--env", "prod")
    assert result.exit_code == 1, result.output
    assert "made for environment 'staging', not 'prod'" in result.output
    assert sandbox.configs() == [] and sandbox.stats.get("creates", 0) == 0
    assert not (project / "state/prod.json").exists()
    assert not (project / "state/staging.json").exists()


# --- plans made with --refresh ------------------------------------------------------------


@pytest.fixture
def drifted(project: Path, invoke: Invoke, sandbox: SandboxServer) -> dict[str, Any]:
    """A `plan --refresh --out` plan after three kinds of drift.

    MEAL: changed on the server (60), rule still 6 -> a refresh-only update 60 -> 6.
    INVOICE: rule now 11, server already 11 -> offline plans an update, refresh does not.
    FUEL: rule now 4, server 30 -> both plan an update, from 3 offline, from 30 refreshed.
    """
    write(project / "configs/acme.yaml", RULES)
    ok(invoke, sandbox, "apply", "--yes")
    patch_behind_our_back(sandbox, "MEAL", amount=60)
    patch_behind_our_back(sandbox, "INVOICE", amount=11)
    patch_behind_our_back(sandbox, "FUEL", amount=30)
    edited = RULES.replace("amount: 10", "amount: 11").replace("amount: 3", "amount: 4")
    write(project / "configs/acme.yaml", edited)
    data = save(invoke, sandbox, "--refresh")
    assert len(data["drift"]) == 3
    assert [(c["key"]["event"], c["before"], c["amount"]) for c in data["changes"]] == [
        ("FUEL", 30, 4),
        ("MEAL", 60, 6),
    ]
    return data


def test_refresh_plan_applies_its_drift_corrections(
    project: Path, invoke: Invoke, sandbox: SandboxServer, drifted: dict[str, Any]
) -> None:
    patches = sandbox.stats.get("patches", 0)
    result = ok(invoke, sandbox, "apply", "p.json", "--yes")
    assert "0 created, 2 updated" in result.output
    assert amounts(sandbox) == {"MEAL": 6, "INVOICE": 11, "FUEL": 4}
    assert sandbox.stats["patches"] == patches + 2


def test_refresh_plan_with_orphaned_and_moved_configs_applies(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """An orphan is shown at the server's amount, and a config moved to another key is
    left alone, so the offline plan's update for it is rightly missing."""
    write(project / "configs/acme.yaml", RULES)
    ok(invoke, sandbox, "apply", "--yes")
    patch_behind_our_back(sandbox, "MEAL", amount=60)
    patch_behind_our_back(sandbox, "INVOICE", event="MOVED")
    edited = RULES.replace("  - event: MEAL\n    amount: 6\n", "")
    write(project / "configs/acme.yaml", edited.replace("amount: 10", "amount: 11"))
    data = save(invoke, sandbox, "--refresh")
    assert [(c["action"], c["key"]["event"], c["amount"]) for c in data["changes"]] == [
        ("orphan", "MEAL", 60)
    ]
    assert sorted(d["field"] for d in data["drift"]) == ["amount", "event"]
    patches = sandbox.stats.get("patches", 0)
    result = ok(invoke, sandbox, "apply", "p.json", "--yes")
    assert "Nothing to apply." in result.output
    assert sandbox.stats.get("patches", 0) == patches

    change(data, "orphan", "MEAL")["amount"] = 61
    rewrite(data)
    refused(project, invoke, sandbox, says="orphan of ACME/DEFAULT/MEAL (amount 61")


def _drift(data: dict[str, Any], event: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in data["drift"] if d["key"]["event"] == event)
    return found


def _drop_drift(event: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data["drift"] = [d for d in data["drift"] if d["key"]["event"] != event]

    return edit


def _set_drift(event: str, field: str, value: object) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        _drift(data, event)[field] = value

    return edit


def _claim_missing(data: dict[str, Any]) -> None:
    # a believable "missing" drift (the state's id) may drop an update, never justify one
    _drift(data, "FUEL").update({"field": "missing", "state": "present", "server": "absent"})


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (
            _set("update", "MEAL", "amount", 500),
            "update of ACME/DEFAULT/MEAL (amount 500, before 60",
        ),
        (
            _set("update", "MEAL", "coinConfigId", "WCC999"),
            "update of ACME/DEFAULT/MEAL (amount 6, before 60, coinConfigId WCC999",
        ),
        (_set("update", "MEAL", "before", 61), "update of ACME/DEFAULT/MEAL (amount 6, before 61"),
        (_drop_drift("MEAL"), "update of ACME/DEFAULT/MEAL (amount 6, before 60"),
        (_set_drift("MEAL", "server", 61), "update of ACME/DEFAULT/MEAL (amount 6, before 60"),
        (_set_drift("MEAL", "state", 7), "drift for ACME/DEFAULT/MEAL (amount: '7' in state"),
        (_set_drift("MEAL", "coinConfigId", "WCC999"), "drift for ACME/DEFAULT/MEAL"),
        (_claim_missing, "update of ACME/DEFAULT/FUEL (amount 4, before 30"),
    ],
    ids=[
        "amount",
        "id",
        "before",
        "no-drift",
        "drift-server",
        "drift-state",
        "drift-id",
        "missing-claim",
    ],
)
def test_refresh_plan_cannot_smuggle_a_change(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    drifted: dict[str, Any],
    edit: Edit,
    says: str,
) -> None:
    edit(drifted)
    rewrite(drifted)
    result = refused(project, invoke, sandbox, says=says)
    assert "edited by hand" in result.output


def test_refresh_plan_cannot_drop_a_change_without_drift(
    project: Path, invoke: Invoke, sandbox: SandboxServer, drifted: dict[str, Any]
) -> None:
    write(
        project / "configs/extra.yaml", "companyId: ACME\nrules:\n  - event: NEW\n    amount: 1\n"
    )
    data = save(invoke, sandbox, "--refresh")
    data["changes"] = [c for c in data["changes"] if c["key"]["event"] != "NEW"]
    rewrite(data)
    refused(project, invoke, sandbox, says="lacks the fresh plan's create of ACME/DEFAULT/NEW")


def test_applying_a_saved_plan_counts_the_unchanged_rules_as_plan_did(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    env = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
    url = ("--api-url", sandbox.url)
    rules = (
        "companyId: ACME\nrules:\n  - event: MEAL\n    amount: {}\n  - event: FUEL\n    amount: 4\n"
    )
    write(project / "configs/acme.yaml", rules.format(6))
    assert invoke("apply", "--yes", *url, env=env).exit_code == 0
    write(project / "configs/acme.yaml", rules.format(7))
    planned = invoke("plan", "--out", "p.json", *url, env=env)
    assert "1 to update" in planned.output and "1 unchanged" in planned.output, planned.output
    applied = invoke("apply", "p.json", "--yes", *url, env=env)
    assert applied.exit_code == 0, applied.output
    assert "1 to update" in applied.output and "1 unchanged" in applied.output, applied.output
    assert "Apply: 0 created, 1 updated" in applied.output
