"""The pure reconciler and the safety check, on plain values."""

from __future__ import annotations

import pytest

from coins_sync.configs.model import Rule, RuleKey, Source
from coins_sync.errors import UnsafePlanError
from coins_sync.plan.reconcile import Action, SafetyRules, plan
from coins_sync.state.model import State, StateEntry, Uncertain


def key(event: str, company: str = "ACME") -> RuleKey:
    return RuleKey(company, "DEFAULT", event)


def rule(event: str, amount: int) -> Rule:
    return Rule(key(event), amount, Source("configs/acme.yaml", 3))


def state(*entries: tuple[str, int], uncertain: tuple[str, ...] = ()) -> State:
    return State(
        lineage="L",
        serial=1,
        entries={key(e): StateEntry(key(e), a, f"WCC{i}") for i, (e, a) in enumerate(entries)},
        uncertain={key(e): Uncertain(key(e), 1, "t") for e in uncertain},
    )


def test_every_action_is_planned() -> None:
    the_plan = plan(
        [rule("NEW", 1), rule("CHANGED", 5), rule("SAME", 3), rule("LOST", 2)],
        state(("CHANGED", 4), ("SAME", 3), ("GONE", 9), uncertain=("LOST",)),
    )
    by_key = {c.key.event: c for c in the_plan.changes}
    assert by_key["NEW"].action is Action.CREATE
    assert by_key["CHANGED"].action is Action.UPDATE
    assert (by_key["CHANGED"].before, by_key["CHANGED"].amount) == (4, 5)
    assert by_key["CHANGED"].coin_config_id == "WCC0"
    assert by_key["SAME"].action is Action.UNCHANGED
    assert by_key["GONE"].action is Action.ORPHAN
    assert by_key["GONE"].amount == 9
    assert by_key["LOST"].action is Action.UNCERTAIN
    assert the_plan.summary() == {
        "create": 1,
        "import": 0,
        "move": 0,
        "update": 1,
        "retire": 0,
        "uncertain": 1,
        "orphan": 1,
        "unchanged": 1,
    }
    assert the_plan.managed == 3
    assert the_plan.has_changes


def test_sort_order_is_action_then_key() -> None:
    the_plan = plan([rule("B", 1), rule("A", 1), rule("C", 2)], state(("C", 1), ("Z", 1)))
    assert [(c.action.value, c.key.event) for c in the_plan.changes] == [
        ("create", "A"),
        ("create", "B"),
        ("update", "C"),
        ("orphan", "Z"),
    ]


def test_orphans_alone_are_not_changes() -> None:
    the_plan = plan([rule("A", 1)], state(("A", 1), ("OLD", 2)))
    assert not the_plan.has_changes
    assert the_plan.summary()["orphan"] == 1


def test_uncertain_key_removed_from_configs_is_still_shown() -> None:
    the_plan = plan([], state(uncertain=("X",)))
    assert [c.action for c in the_plan.changes] == [Action.UNCERTAIN]


def test_threshold_refuses_many_updates_unless_forced() -> None:
    current = state(*((f"E{i}", 1) for i in range(10)))
    four_updates = plan([rule(f"E{i}", 2 if i < 4 else 1) for i in range(10)], current)
    with pytest.raises(UnsafePlanError, match="4 updates touch 40% of 10 managed"):
        four_updates.raise_if_unsafe(SafetyRules())
    four_updates.raise_if_unsafe(SafetyRules(), force=True)
    four_updates.raise_if_unsafe(SafetyRules(update_threshold=0.5))
    three_updates = plan([rule(f"E{i}", 2 if i < 3 else 1) for i in range(10)], current)
    three_updates.raise_if_unsafe(SafetyRules())


def test_threshold_needs_a_minimum_of_managed_entries() -> None:
    current = state(*((f"E{i}", 1) for i in range(9)))
    plan([rule(f"E{i}", 2) for i in range(9)], current).raise_if_unsafe(SafetyRules())


def test_amount_above_max_is_refused_even_with_force() -> None:
    the_plan = plan([rule("A", 500)], state())
    with pytest.raises(UnsafePlanError, match="above max_amount 100"):
        the_plan.raise_if_unsafe(SafetyRules(max_amount=100), force=True)
