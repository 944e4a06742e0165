"""Plan safety: each refusal is its own UnsafePlanError subclass, on the plan and via the CLI.

``Plan.raise_if_unsafe`` raises :class:`AmountOutOfRangeError` for an amount above
``max_amount`` (even with ``--force``) and :class:`TooManyUpdatesError` for updates over
the threshold (only without ``--force``). The CLI shows either as ``Error: ...``, exit 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coins_sync.configs.model import Rule, RuleKey, Source
from coins_sync.errors import (
    AmountOutOfRangeError,
    CoinsSyncError,
    TooManyUpdatesError,
    UnsafePlanError,
)
from coins_sync.plan.reconcile import Action, Change, Plan, SafetyRules, plan
from coins_sync.state.model import State, StateEntry
from tests.conftest import Invoke, write

AMOUNT_MESSAGE = (
    "ACME/DEFAULT/BIG: amount 500 is above max_amount 100 (2 such change(s)); "
    "this is always refused"
)
UPDATES_MESSAGE = (
    "unsafe plan: 4 updates touch 40% of 10 managed entries, over the 30% threshold. "
    "Review the plan, then rerun with --force, or raise update_threshold for this environment"
)


def key(event: str) -> RuleKey:
    return RuleKey("ACME", "DEFAULT", event)


def rule(event: str, amount: int) -> Rule:
    return Rule(key(event), amount, Source("configs/acme.yaml", 3))


def managed(count: int) -> State:
    entries = {key(f"E{i}"): StateEntry(key(f"E{i}"), 1, f"WCC{i}") for i in range(count)}
    return State(lineage="L", serial=1, entries=entries)


def four_of_ten_updated() -> Plan:
    return plan([rule(f"E{i}", 2 if i < 4 else 1) for i in range(10)], managed(10))


def test_both_refusals_are_unsafe_plan_errors() -> None:
    for refusal in (AmountOutOfRangeError, TooManyUpdatesError):
        assert issubclass(refusal, UnsafePlanError)
        assert issubclass(refusal, CoinsSyncError)
    assert not issubclass(AmountOutOfRangeError, TooManyUpdatesError)
    assert not issubclass(TooManyUpdatesError, AmountOutOfRangeError)


def test_amount_over_max_is_amount_out_of_range_even_forced() -> None:
    the_plan = plan([rule("BIG", 500), rule("BIGGER", 600), rule("OK", 100)], managed(0))
    with pytest.raises(AmountOutOfRangeError) as caught:
        the_plan.raise_if_unsafe(SafetyRules(max_amount=100), force=True)
    error = caught.value
    assert str(error) == AMOUNT_MESSAGE
    assert (error.key, error.amount, error.max_amount, error.count) == (
        "ACME/DEFAULT/BIG",
        500,
        100,
        2,
    )
    plan([rule("OK", 100)], managed(0)).raise_if_unsafe(SafetyRules(max_amount=100))


def test_negative_amount_is_amount_out_of_range() -> None:
    the_plan = Plan((Change(Action.CREATE, key("NEG"), -1),), managed=0)
    with pytest.raises(AmountOutOfRangeError, match="NEG: amount -1 is above max_amount"):
        the_plan.raise_if_unsafe(SafetyRules(), force=True)


def test_amount_check_comes_before_the_update_threshold() -> None:
    rules = [rule(f"E{i}", 2 if i < 4 else 1) for i in range(10)] + [rule("BIG", 500)]
    with pytest.raises(AmountOutOfRangeError):
        plan(rules, managed(10)).raise_if_unsafe(SafetyRules(max_amount=100))


def test_updates_over_threshold_are_too_many_updates_unless_forced() -> None:
    the_plan = four_of_ten_updated()
    with pytest.raises(TooManyUpdatesError) as caught:
        the_plan.raise_if_unsafe(SafetyRules())
    error = caught.value
    assert str(error) == UPDATES_MESSAGE
    assert (error.updates, error.managed, error.threshold) == (4, 10, 0.3)
    the_plan.raise_if_unsafe(SafetyRules(), force=True)
    the_plan.raise_if_unsafe(SafetyRules(update_threshold=0.4))  # 40% is not over 40%
    the_plan.raise_if_unsafe(SafetyRules(min_entries=11))


# -- the same refusals through the CLI ------------------------------------------------


def write_state(project: Path, entries: list[dict[str, object]], **extra: object) -> None:
    data = {"version": 1, "lineage": "hand-made", "serial": 3, "entries": entries, **extra}
    write(project / "state" / "default.json", json.dumps(data))


def entry(event: str, amount: int, config_id: str) -> dict[str, object]:
    return {
        "companyId": "ACME",
        "configuration": "DEFAULT",
        "event": event,
        "amount": amount,
        "coinConfigId": config_id,
    }


def over_max_setup(project: Path) -> None:
    """An uncertain create of 50000 in state: the configs' check cannot catch it, the
    plan's can (max_amount is 10000 by default)."""
    write(project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: OK\n    amount: 1\n")
    big = {"companyId": "ACME", "configuration": "DEFAULT", "event": "BIG", "amount": 50000}
    write_state(project, [entry("OK", 1, "WCC1")], uncertain=[big])


def too_many_updates_setup(project: Path) -> None:
    rules = "".join(f"  - event: E{i}\n    amount: {2 if i < 4 else 1}\n" for i in range(10))
    write(project / "configs/acme.yaml", f"companyId: ACME\nrules:\n{rules}")
    write_state(project, [entry(f"E{i}", 1, f"WCC{i}") for i in range(10)])


#: apply is refused before any connection; the port has no server behind it.
APPLY = ("apply", "--api-url", "http://127.0.0.1:9")
TOKEN = {"COINS_SYNC_TOKEN": "not-a-real-token"}


@pytest.mark.parametrize("command", [("plan",), ("plan", "--force"), (*APPLY, "--force")])
def test_cli_refuses_an_amount_over_max(
    project: Path, invoke: Invoke, command: tuple[str, ...]
) -> None:
    over_max_setup(project)
    before = (project / "state/default.json").read_bytes()
    result = invoke(*command, env=TOKEN)
    assert result.exit_code == 1, result.output
    assert (
        "Error: ACME/DEFAULT/BIG: amount 50000 is above max_amount 10000 (1 such change(s)); "
        "this is always refused\n"
    ) in result.stderr
    assert "Traceback" not in result.output
    assert (project / "state/default.json").read_bytes() == before


@pytest.mark.parametrize("command", [("plan",), APPLY])
def test_cli_refuses_too_many_updates(
    project: Path, invoke: Invoke, command: tuple[str, ...]
) -> None:
    too_many_updates_setup(project)
    before = (project / "state/default.json").read_bytes()
    result = invoke(*command, env=TOKEN)
    assert result.exit_code == 1, result.output
    assert f"Error: {UPDATES_MESSAGE}\n" in result.stderr
    assert "Traceback" not in result.output
    assert (project / "state/default.json").read_bytes() == before
    assert invoke("plan", "--force").exit_code == 0


def test_every_plan_error_lives_in_the_drawn_tree() -> None:
    """The plan package defines no error of its own; each one is drawn in errors."""
    import importlib
    import pkgutil

    import coins_sync.errors
    import coins_sync.plan

    for module in pkgutil.iter_modules(coins_sync.plan.__path__, "coins_sync.plan."):
        importlib.import_module(module.name)
    drawing = coins_sync.errors.__doc__ or ""
    seen: list[type[BaseException]] = [CoinsSyncError]
    for cls in seen:  # bounded: the class tree is finite and acyclic
        seen.extend(cls.__subclasses__())
    own = [
        cls for cls in seen if cls.__module__.startswith(("coins_sync.plan", "coins_sync.errors"))
    ]
    assert {AmountOutOfRangeError, TooManyUpdatesError} <= set(own)
    for cls in own[1:]:  # own[0] is the root, drawn on a line of its own
        assert cls.__module__ == "coins_sync.errors", cls
        assert f"── {cls.__name__} " in drawing, cls
