"""Cross-branch integration (issues 21, 22, 23): ``--only`` with moves and retirements,
the ``apply --format json`` report with moved and retired counts, and the Markdown
problems of ``movedFrom`` errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from coins_sync.sandbox import SandboxServer
from tests.conftest import Invoke
from tests.test_lifecycle import (
    FUEL,
    MEAL,
    MEAL_CARD,
    TOKEN,
    rule,
    rules,
    sent,
    started,
    state_of,
)


@pytest.mark.parametrize("only", [str(MEAL_CARD), str(MEAL), "ACME/*/MEAL_*"])
def test_only_holds_a_move_as_one_unit(
    project: Path, invoke: Invoke, sandbox: SandboxServer, only: str
) -> None:
    """A subset naming either key of a move plans the move, never a create beside the
    old config (two configs paying for one event) nor an orphan of the old key."""
    ids = started(project, invoke, sandbox)
    rules(project, rule("MEAL_CARD", 7, movedFrom=str(MEAL)), rule("FUEL", retired=True))

    shown = invoke("plan", "--only", only)
    assert shown.exit_code == 0, shown.output
    assert "1 to move" in shown.output and "0 to create" in shown.output
    assert "0 orphaned" in shown.output and "(orphan" not in shown.output
    assert "to retire" not in shown.output  # FUEL is outside the subset

    saved = invoke("plan", "--only", only, "--out", "p.json")
    assert saved.exit_code == 0, saved.output
    done = invoke("apply", "--api-url", sandbox.url, "p.json", env=TOKEN)
    assert done.exit_code == 0, done.output
    assert sent(sandbox) == (2, 1) and len(sandbox.configs()) == 2  # moved, not created
    state = state_of(project)
    assert MEAL not in state.entries and state.entries[MEAL_CARD].coin_config_id == ids[MEAL]
    assert state.entries[FUEL].amount == 3  # the retirement outside the subset is left alone


def test_only_retires_inside_the_subset_and_leaves_a_retirement_outside(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    started(project, invoke, sandbox)
    rules(project, rule("MEAL", 6), rule("FUEL", retired=True))
    outside = invoke("apply", "--yes", "--api-url", sandbox.url, "--only", str(MEAL), env=TOKEN)
    assert outside.exit_code == 0, outside.output
    assert sent(sandbox) == (2, 0)
    inside = invoke("apply", "--yes", "--api-url", sandbox.url, "--only", str(FUEL), env=TOKEN)
    assert inside.exit_code == 0, inside.output
    assert sent(sandbox) == (2, 1) and state_of(project).entries[FUEL].amount == 0
