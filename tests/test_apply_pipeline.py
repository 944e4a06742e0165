"""Every way into apply reads back the pending updates first, and every way of
recording an existing id makes the same check (issue 20, items 2 and 7).

Through the CLI against the real sandbox on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
MEAL = {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL"}
FUEL = {"companyId": "ACME", "configuration": "DEFAULT", "event": "FUEL"}


def rules(meal: int, fuel: int | None = None, meal_id: str | None = None) -> str:
    text = f"companyId: ACME\nrules:\n  - event: MEAL\n    amount: {meal}\n"
    if meal_id is not None:
        text += f"    coinConfigId: {meal_id}\n"
    if fuel is not None:
        text += f"  - event: FUEL\n    amount: {fuel}\n"
    return text


def apply(invoke: Invoke, srv: SandboxServer, *args: str) -> Any:
    return invoke("apply", "--api-url", srv.url, *args, env=ENV)


def state_of(project: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project / "state/default.json").read_text())
    return data


def entry_of(project: Path, key: dict[str, str]) -> dict[str, Any]:
    (entry,) = [e for e in state_of(project)["entries"] if {k: e[k] for k in key} == key]
    return entry


def on_server(srv: SandboxServer) -> dict[str, int]:
    return {c["event"]: int(c["amount"]) for c in srv.configs()}


def lost_answer(project: Path, invoke: Invoke, srv: SandboxServer, *, landed: bool) -> None:
    """MEAL was 6; an update to 9 was sent and its answer lost. The state keeps 6 with
    pendingAmount 9; the server holds 9 when the update ``landed``, else 6."""
    write(project / "configs/acme.yaml", rules(6))
    assert apply(invoke, srv, "--yes").exit_code == 0
    if landed:
        write(project / "configs/acme.yaml", rules(9))
        assert apply(invoke, srv, "--yes").exit_code == 0
    data = state_of(project)
    (entry,) = data["entries"]
    entry.update(amount=6, pendingAmount=9)
    write(project / "state/default.json", json.dumps(data))


# --- item 2: apply PLANFILE reads back the pending updates --------------------------


def test_a_saved_plan_made_blind_is_refused_once_the_read_back_differs(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """The server holds 9, the configs say 6, the plan was saved without credentials
    (so it saw 6 and nothing to do). Applying it reads MEAL back, records 9, and refuses
    the plan as stale instead of saying "Nothing to apply"; the next plan sets 6."""
    lost_answer(project, invoke, sandbox, landed=True)
    write(project / "configs/acme.yaml", rules(6))
    saved = invoke("plan", "--out", "plan.json")  # no credentials: a warning, no GET
    assert saved.exit_code == 0, saved.output
    assert "could not be read back" in saved.output
    gets, patches = sandbox.stats["gets"], sandbox.stats["patches"]

    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert result.exit_code == 1, result.output
    assert "stale plan" in result.output and "holds 9" in result.output
    assert "Nothing to apply" not in result.output
    assert sandbox.stats["gets"] == gets + 1
    assert sandbox.stats["patches"] == patches
    entry = entry_of(project, MEAL)
    assert entry["amount"] == 9 and "pendingAmount" not in entry  # what the server holds

    again = apply(invoke, sandbox, "--yes")
    assert again.exit_code == 0, again.output
    assert on_server(sandbox) == {"MEAL": 6}


def test_a_saved_plan_made_blind_applies_when_the_update_did_not_land(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """The read-back finds what the plan assumed (6): the plan is applied as saved, and
    the mark is gone."""
    lost_answer(project, invoke, sandbox, landed=False)
    write(project / "configs/acme.yaml", rules(6, fuel=3))
    assert invoke("plan", "--out", "plan.json").exit_code == 0
    gets = sandbox.stats["gets"]

    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert result.exit_code == 0, result.output
    assert sandbox.stats["gets"] == gets + 1
    assert on_server(sandbox) == {"MEAL": 6, "FUEL": 3}
    assert "pendingAmount" not in entry_of(project, MEAL)


def test_a_saved_plan_made_with_the_read_back_applies(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """With credentials, plan --out read MEAL back (9) and saved the update 9 -> 6;
    apply reads it back again, finds the same, and sends exactly that update."""
    lost_answer(project, invoke, sandbox, landed=True)
    write(project / "configs/acme.yaml", rules(6))
    saved = invoke("plan", "--out", "plan.json", "--api-url", sandbox.url, env=ENV)
    assert saved.exit_code == 0, saved.output
    (change,) = json.loads((project / "plan.json").read_text())["changes"]
    assert (change["action"], change["before"], change["amount"]) == ("update", 9, 6)
    patches = sandbox.stats["patches"]

    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert result.exit_code == 0, result.output
    assert sandbox.stats["patches"] == patches + 1
    assert on_server(sandbox) == {"MEAL": 6}
    entry = entry_of(project, MEAL)
    assert entry["amount"] == 6 and "pendingAmount" not in entry


# --- item 7: one check for every way of recording an existing id ---------------------


def _applied_both(project: Path, invoke: Invoke, srv: SandboxServer) -> tuple[str, str]:
    write(project / "configs/acme.yaml", rules(6, fuel=3))
    assert apply(invoke, srv, "--yes").exit_code == 0
    return entry_of(project, MEAL)["coinConfigId"], entry_of(project, FUEL)["coinConfigId"]


def test_state_import_refuses_an_id_recorded_under_another_key(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """The state records MEAL's id under FUEL (a hand edit, a config moved on the
    server). The server confirms that id is MEAL, but recording it as MEAL too would
    manage one config as two rules: refused before any GET, nothing recorded, as the
    bulk import and a rule's coinConfigId refuse it."""
    meal_id, _ = _applied_both(project, invoke, sandbox)
    data = state_of(project)
    data["entries"] = [
        {**e, "coinConfigId": meal_id} for e in data["entries"] if e["event"] == "FUEL"
    ]
    write(project / "state/default.json", json.dumps(data))
    before = state_of(project)
    gets = sandbox.stats["gets"]

    refused = invoke(
        "state", "import", "ACME/DEFAULT/MEAL", meal_id, "--api-url", sandbox.url, env=ENV
    )
    assert refused.exit_code == 1, refused.output
    assert f"the state records {meal_id} as ACME/DEFAULT/FUEL" in refused.output
    assert "Traceback" not in refused.output
    assert sandbox.stats["gets"] == gets
    assert state_of(project) == before

    assert invoke("state", "rm", "ACME/DEFAULT/FUEL", "--yes").exit_code == 0
    accepted = invoke(
        "state", "import", "ACME/DEFAULT/MEAL", meal_id, "--api-url", sandbox.url, env=ENV
    )
    assert accepted.exit_code == 0, accepted.output
    assert entry_of(project, MEAL)["coinConfigId"] == meal_id


@pytest.mark.parametrize("route", ["single", "from-file", "rule-file"])
def test_every_route_refuses_an_id_of_another_key_with_the_same_reason(
    project: Path, invoke: Invoke, sandbox: SandboxServer, route: str
) -> None:
    _, fuel_id = _applied_both(project, invoke, sandbox)
    assert invoke("state", "rm", "ACME/DEFAULT/MEAL", "--yes").exit_code == 0
    gets = sandbox.stats["gets"]
    if route == "single":
        result = invoke(
            "state", "import", "ACME/DEFAULT/MEAL", fuel_id, "--api-url", sandbox.url, env=ENV
        )
    elif route == "from-file":
        write(
            project / "existing.csv",
            f"companyId,configuration,event,coinConfigId\nACME,DEFAULT,MEAL,{fuel_id}\n",
        )
        result = invoke(
            "state", "import", "--from", "existing.csv", "--api-url", sandbox.url, env=ENV
        )
    else:
        write(project / "configs/acme.yaml", rules(6, fuel=3, meal_id=fuel_id))
        result = invoke("plan")
    assert result.exit_code == 1, result.output
    assert f"the state records {fuel_id} as ACME/DEFAULT/FUEL, not ACME/DEFAULT/MEAL" in (
        result.output
    )
    assert sandbox.stats["gets"] == gets
    assert all(e["event"] != "MEAL" for e in state_of(project)["entries"])


# --- plan --out never lands on a file of the state ---------------------------------


@pytest.mark.parametrize("target", ["state/default.rescue.jsonl", "state/default.pg-rescue.jsonl"])
def test_plan_out_onto_a_rescue_file_is_refused(project: Path, invoke: Invoke, target: str) -> None:
    write(project / "configs/acme.yaml", rules(6))
    write(project / target, "kept\n")
    result = invoke("plan", "--out", target)
    assert result.exit_code == 1, result.output
    assert "refusing to write the plan onto" in result.output
    assert (project / target).read_text() == "kept\n"
