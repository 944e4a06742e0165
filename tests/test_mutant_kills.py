"""Saved-plan guarantees that `make mutants` found untested, through the CLI.

A saved plan is applied only when it was made for this environment, this state and
these configs, and only when every change in it is one that the state and configs
justify. Each test hand-edits or re-targets a saved plan and checks that apply exits 1
and sends nothing at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

TOKEN_ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
RULES = """\
companyId: ACME
rules:
  - event: MEAL
    amount: 6
  - event: FUEL
    amount: 3
"""
MEAL = {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL"}
FUEL = {"companyId": "ACME", "configuration": "DEFAULT", "event": "FUEL"}
OTHER = {"companyId": "ACME", "configuration": "DEFAULT", "event": "OTHER"}

Plan = dict[str, Any]


def apply(invoke: Invoke, srv: SandboxServer, *args: str) -> Any:
    return invoke("apply", "--api-url", srv.url, *args, env=TOKEN_ENV)


def sent(srv: SandboxServer) -> int:
    """Every request that reached the API: creates, patches and reads."""
    stats = srv.stats
    return sum(stats.get(name, 0) for name in ("creates", "patches", "gets"))


def save_forged(project: Path, invoke: Invoke, forge: Callable[[Plan], None]) -> None:
    result = invoke("plan", "--out", "plan.json")
    assert result.exit_code == 0, result.output
    plan = json.loads((project / "plan.json").read_text())
    forge(plan)
    write(project / "plan.json", json.dumps(plan))


def change_of(plan: Plan, action: str, key: dict[str, str]) -> dict[str, Any]:
    found = [c for c in plan["changes"] if c["action"] == action and c["key"] == key]
    assert len(found) == 1, plan["changes"]
    change: dict[str, Any] = found[0]
    return change


def assert_refused_and_nothing_sent(result: Any, srv: SandboxServer, before: int) -> None:
    assert result.exit_code == 1, result.output
    assert "edited by hand" in result.output
    assert "Traceback" not in result.output
    assert sent(srv) == before


# --- the environment a plan was made for ------------------------------------------------


def test_saved_plan_for_another_environment_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    write(
        project / "pyproject.toml",
        "[tool.coins-sync]\n"
        "[tool.coins-sync.environments.staging]\n"
        "[tool.coins-sync.environments.prod]\n",
    )
    # One state file for both, so only the environment differs.
    shared = ("--state", "state/shared.json")
    saved = invoke("plan", "--env", "staging", *shared, "--out", "plan.json")
    assert saved.exit_code == 0, saved.output

    result = apply(invoke, sandbox, "plan.json", "--env", "prod", *shared, "--yes")
    assert result.exit_code == 1, result.output
    assert "stale plan" in result.output
    assert "environment 'staging', not 'prod'" in result.output
    assert sent(sandbox) == 0
    assert not (project / "state/shared.json").exists()

    same = apply(invoke, sandbox, "plan.json", "--env", "staging", *shared, "--yes")
    assert same.exit_code == 0, same.output
    assert sandbox.stats["creates"] == 2


# --- creates, updates and uncertain creates edited by hand ------------------------------


def _applied_then_raised(project: Path, invoke: Invoke, srv: SandboxServer) -> int:
    """Both rules applied, then MEAL raised to 7: the plan holds one update."""
    write(project / "configs/acme.yaml", RULES)
    first = apply(invoke, srv, "--yes")
    assert first.exit_code == 0, first.output
    write(project / "configs/acme.yaml", RULES.replace("amount: 6", "amount: 7"))
    return sent(srv)


def _other_id(project: Path) -> str:
    state = json.loads((project / "state/default.json").read_text())
    ids = {e["event"]: e["coinConfigId"] for e in state["entries"]}
    return str(ids["FUEL"])


UPDATE_FORGERIES: dict[str, Callable[[Plan, Path], None]] = {
    "another-id": lambda plan, project: change_of(plan, "update", MEAL).update(
        coinConfigId=_other_id(project)
    ),
    "another-amount": lambda plan, project: change_of(plan, "update", MEAL).update(amount=9),
    "key-without-rule": lambda plan, project: change_of(plan, "update", MEAL).update(key=OTHER),
}


@pytest.mark.parametrize("forgery", list(UPDATE_FORGERIES))
def test_hand_edited_update_is_refused_and_nothing_is_sent(
    project: Path, invoke: Invoke, sandbox: SandboxServer, forgery: str
) -> None:
    before = _applied_then_raised(project, invoke, sandbox)
    configs = sandbox.configs()
    save_forged(project, invoke, lambda plan: UPDATE_FORGERIES[forgery](plan, project))

    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert_refused_and_nothing_sent(result, sandbox, before)
    assert sandbox.configs() == configs


def test_update_of_a_key_not_in_the_state_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """An update needs a recorded config: a rule that is only planned for creation has none."""
    write(project / "configs/acme.yaml", RULES)
    applied = apply(invoke, sandbox, "--yes")
    assert applied.exit_code == 0, applied.output
    write(project / "configs/acme.yaml", RULES + "  - event: OTHER\n    amount: 1\n")
    before = sent(sandbox)

    def forge(plan: Plan) -> None:
        create = change_of(plan, "create", OTHER)
        create.update(action="update", coinConfigId=_other_id(project), before=3)

    save_forged(project, invoke, forge)
    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert_refused_and_nothing_sent(result, sandbox, before)


def test_update_relabelled_as_a_create_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """An update's check is its own: an update relabelled as a create is still refused."""
    before = _applied_then_raised(project, invoke, sandbox)
    save_forged(
        project, invoke, lambda plan: change_of(plan, "update", MEAL).update(action="create")
    )
    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert_refused_and_nothing_sent(result, sandbox, before)


CREATE_FORGERIES: dict[str, Callable[[Plan], None]] = {
    "another-amount": lambda plan: change_of(plan, "create", MEAL).update(amount=9),
    "key-without-rule": lambda plan: change_of(plan, "create", MEAL).update(key=OTHER),
}


@pytest.mark.parametrize("forgery", list(CREATE_FORGERIES))
def test_hand_edited_create_is_refused_and_nothing_is_sent(
    project: Path, invoke: Invoke, sandbox: SandboxServer, forgery: str
) -> None:
    write(project / "configs/acme.yaml", RULES)
    save_forged(project, invoke, CREATE_FORGERIES[forgery])
    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert_refused_and_nothing_sent(result, sandbox, 0)
    assert not (project / "state/default.json").exists()


def _state_with_uncertain_meal(project: Path) -> None:
    write(
        project / "state/default.json",
        json.dumps(
            {
                "version": 1,
                "lineage": "L",
                "serial": 1,
                "entries": [],
                "uncertain": [{**MEAL, "amount": 6, "since": "2024-01-01T00:00:00Z"}],
            }
        ),
    )


def test_create_of_an_uncertain_key_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """A key whose create may have happened is never created again by an edited plan."""
    write(project / "configs/acme.yaml", RULES)
    _state_with_uncertain_meal(project)
    save_forged(
        project, invoke, lambda plan: change_of(plan, "uncertain", MEAL).update(action="create")
    )
    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert_refused_and_nothing_sent(result, sandbox, 0)


def test_uncertain_create_of_a_recorded_key_is_refused_even_with_retry(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """--retry-uncertain resends only creates that the state holds as uncertain."""
    write(project / "configs/acme.yaml", RULES)
    applied = apply(invoke, sandbox, "--yes")
    assert applied.exit_code == 0, applied.output
    write(project / "configs/acme.yaml", RULES + "  - event: OTHER\n    amount: 1\n")
    before = sent(sandbox)

    def forge(plan: Plan) -> None:
        create = change_of(plan, "create", OTHER)
        plan["changes"].append({**create, "action": "uncertain", "key": MEAL, "amount": 6})

    save_forged(project, invoke, forge)
    result = apply(invoke, sandbox, "plan.json", "--yes", "--retry-uncertain")
    assert_refused_and_nothing_sent(result, sandbox, before)
    assert len(sandbox.configs()) == 2


def test_real_uncertain_create_is_resent_only_with_the_flag(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """The check above refuses forgeries, not the genuine retry it guards."""
    write(project / "configs/acme.yaml", RULES)
    _state_with_uncertain_meal(project)
    saved = invoke("plan", "--out", "plan.json")
    assert saved.exit_code == 0, saved.output
    result = apply(invoke, sandbox, "plan.json", "--yes", "--retry-uncertain")
    assert result.exit_code == 0, result.output
    assert sandbox.stats["creates"] == 2


def test_saved_plan_with_an_update_and_an_orphan_applies(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """The checks refuse edits, not honest plans: an update and an orphan pass them."""
    write(project / "configs/acme.yaml", RULES)
    applied = apply(invoke, sandbox, "--yes")
    assert applied.exit_code == 0, applied.output
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 7\n"
    )
    saved = invoke("plan", "--out", "plan.json")
    assert saved.exit_code == 0, saved.output
    actions = sorted(
        c["action"] for c in json.loads((project / "plan.json").read_text())["changes"]
    )
    assert actions == ["orphan", "update"]

    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert result.exit_code == 0, result.output
    assert sandbox.stats["patches"] == 1
    assert {c["event"]: c["amount"] for c in sandbox.configs()} == {"MEAL": 7, "FUEL": 3}


# --- the state a plan was made against: its serial, not only its lineage ---------------


def test_saved_plan_for_an_older_serial_of_the_same_state_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    """The state moved on (a `git pull` brought serial + 1 of the same lineage) while
    nothing the plan lists changed. The plan is still stale: it was reviewed against
    another state. (Mutant S7 compared the lineage only.)"""
    write(project / "configs/acme.yaml", RULES)
    applied = apply(invoke, sandbox, "--yes")
    assert applied.exit_code == 0, applied.output
    write(project / "configs/acme.yaml", RULES + "  - event: OTHER\n    amount: 1\n")
    saved = invoke("plan", "--out", "plan.json")
    assert saved.exit_code == 0, saved.output
    path = project / "state/default.json"
    state = json.loads(path.read_text())
    serial = state["serial"]
    write(path, json.dumps({**state, "serial": serial + 1}))
    before = sent(sandbox)

    result = apply(invoke, sandbox, "plan.json", "--yes")
    assert result.exit_code == 1, result.output
    assert "stale plan" in result.output
    assert f"serial {serial} " in result.output and f"serial {serial + 1} " in result.output
    assert sent(sandbox) == before
    assert len(sandbox.configs()) == 2
