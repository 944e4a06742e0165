"""The reconciler's moves and retirements (issue 21), on plain values."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coins_sync.configs.model import Rule, Source
from coins_sync.errors import PlanConflictError, TooManyUpdatesError
from coins_sync.plan.drift import Drift, DriftField
from coins_sync.plan.reconcile import Action, SafetyRules, adopt_moves, plan
from coins_sync.state.model import State
from tests.test_reconciler import key, rule, state


def moved(event: str, amount: int, old: str) -> Rule:
    return replace(rule(event, amount), moved_from=key(old))


def retired(event: str) -> Rule:
    return Rule(key(event), 0, Source("configs/acme.yaml", 5), retired=True)


def test_a_move_keeps_the_id_and_the_old_key_is_no_orphan() -> None:
    the_plan = plan([moved("NEW", 7, "OLD")], state(("OLD", 6)))
    (change,) = [c for c in the_plan.changes if c.action is not Action.UNCHANGED]
    assert (change.action, change.key, change.moved_from) == (Action.MOVE, key("NEW"), key("OLD"))
    assert (change.before, change.amount, change.coin_config_id) == (6, 7, "WCC0")
    assert the_plan.has_changes and the_plan.summary()["orphan"] == 0


def test_a_done_move_is_a_no_op() -> None:
    the_plan = plan([moved("NEW", 7, "OLD")], state(("NEW", 7)))
    assert [c.action for c in the_plan.changes] == [Action.UNCHANGED]
    assert not the_plan.has_changes


def test_typo_collision_and_uncertain_old_key_are_plan_errors() -> None:
    with pytest.raises(
        PlanConflictError, match=r"configs/acme.yaml:3: movedFrom ACME/DEFAULT/OLDD"
    ):
        plan([moved("NEW", 7, "OLDD")], state(("OLD", 6)))
    with pytest.raises(PlanConflictError, match=r"collides.*WCC0.*WCC1"):
        plan([moved("NEW", 7, "OLD")], state(("OLD", 6), ("NEW", 1)))
    with pytest.raises(PlanConflictError, match="uncertain"):
        plan([moved("NEW", 7, "OLD")], state(("OTHER", 6), uncertain=("OLD",)))


def test_a_chain_in_one_plan_is_refused_as_a_typo() -> None:
    # the state holds A; C says it came from B, which the state never recorded
    with pytest.raises(PlanConflictError, match="does not record"):
        plan([moved("C", 1, "B")], state(("A", 1)))


def test_a_new_environment_creates_the_moved_rule() -> None:
    the_plan = plan([moved("NEW", 7, "OLD")], State.new())
    assert [c.action for c in the_plan.changes] == [Action.CREATE]


def test_retire_while_the_recorded_amount_is_above_zero() -> None:
    the_plan = plan([retired("GONE")], state(("GONE", 4)))
    (change,) = the_plan.changes
    assert (change.action, change.before, change.amount) == (Action.RETIRE, 4, 0)
    assert [c.action for c in plan([retired("GONE")], state(("GONE", 0))).changes] == [
        Action.UNCHANGED
    ]
    never = plan([retired("NEVER")], state(("OTHER", 1)))
    assert Action.CREATE not in {c.action for c in never.changes}


def test_moves_and_retirements_count_toward_the_update_threshold() -> None:
    entries = [(f"E{i}", 1) for i in range(10)]
    rules = [moved(f"N{i}", 1, f"E{i}") for i in range(2)]
    rules += [retired(f"E{i}") for i in range(2, 4)]
    rules += [rule(f"E{i}", 1) for i in range(4, 10)]
    the_plan = plan(rules, state(*entries))
    with pytest.raises(TooManyUpdatesError, match="2 moves and 2 retirements"):
        the_plan.raise_if_unsafe(SafetyRules())
    the_plan.raise_if_unsafe(SafetyRules(), force=True)


def test_refresh_marks_a_move_done_on_the_server_and_drops_one_gone_elsewhere() -> None:
    the_plan = plan([moved("NEW", 7, "OLD"), moved("X2", 1, "X")], state(("OLD", 6), ("X", 1)))
    drift = [
        Drift(key("OLD"), "WCC0", DriftField.EVENT, "OLD", "NEW"),
        Drift(key("X"), "WCC1", DriftField.EVENT, "X", "ELSEWHERE"),
    ]
    adopted = replace(adopt_moves(the_plan, drift), drift=tuple(drift))
    moves = adopted.of(Action.MOVE)
    assert [(c.key, c.on_server) for c in moves] == [(key("NEW"), True)]
    assert adopted.needs_a_person == (key("X"),)


def test_a_move_may_name_the_id_it_moves() -> None:
    named = replace(moved("NEW", 7, "OLD"), coin_config_id="WCC0")
    (change,) = plan([named], state(("OLD", 6))).changes
    assert change.action is Action.MOVE
    with pytest.raises(PlanConflictError, match="WCC9"):
        plan([replace(named, coin_config_id="WCC9")], state(("OLD", 6)))
