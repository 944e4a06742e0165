"""Cross-branch integration (issues 21, 22, 23): ``--only`` with moves and retirements,
the ``apply --format json`` report with moved and retired counts, and the Markdown
problems of ``movedFrom`` errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from markdown_it import MarkdownIt

from coins_sync.configs.schema import load_schema
from coins_sync.sandbox import SandboxServer
from tests import chaos
from tests.conftest import Invoke, write
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


def report_of(output: str) -> dict[str, Any]:
    """The JSON report: the one document on stdout (CliRunner mixes stderr in, so the
    document is the text from its opening line to its closing brace)."""
    lines = output.splitlines()
    start = lines.index("{")
    end = len(lines) - lines[::-1].index("}")
    doc: dict[str, Any] = json.loads("\n".join(lines[start:end]))
    jsonschema.validate(doc, load_schema("apply-report.schema.json"))
    return doc


def test_apply_json_reports_moves_and_retirements_and_a_saved_plans_subset(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    started(project, invoke, sandbox)
    rules(project, rule("MEAL_CARD", 7, movedFrom=str(MEAL)), rule("FUEL", retired=True))
    saved = invoke("plan", "--only", str(MEAL_CARD), "--out", "p.json")
    assert saved.exit_code == 0, saved.output
    done = invoke("apply", "--api-url", sandbox.url, "--format", "json", "p.json", env=TOKEN)
    assert done.exit_code == 0, done.output
    doc = report_of(done.output)
    assert doc["summary"]["moved"] == 1 and doc["moved"] == [MEAL_CARD.as_dict()]
    assert doc["summary"]["created"] == 0 and doc["summary"]["retired"] == 0
    assert doc["only"] == [str(MEAL_CARD)]  # the saved plan's subset
    assert doc["rate_limit"] is None  # the sandbox refused nothing

    rest = invoke("apply", "--yes", "--api-url", sandbox.url, "--format", "json", env=TOKEN)
    assert rest.exit_code == 0, rest.output
    doc = report_of(rest.output)
    assert doc["summary"]["retired"] == 1 and doc["retired"] == [FUEL.as_dict()]
    assert doc["only"] == []


def test_apply_json_reports_how_a_rate_limit_paced_the_run(
    project: Path, invoke: Invoke, servers: Callable[..., SandboxServer]
) -> None:
    chaos.write_rules(project / "configs", 30)
    server = servers(rate=20.0, burst=3, retry_after=True)
    done = invoke(
        "apply",
        "--yes",
        "--api-url",
        server.url,
        "--parallelism",
        "8",
        "--max-wait",
        "120",
        "--format",
        "json",
        env=TOKEN,
    )
    assert done.exit_code == 0, done.output
    assert server.stats["rate_limited"] > 0  # the limit was hit
    doc = report_of(done.output)
    assert doc["summary"]["created"] == 30
    refused = server.stats["rate_limited"]
    assert f"{refused} request" in doc["rate_limit"] and "refused (429)" in doc["rate_limit"]


HOSTILE = "<b>@someone_*x*`[l](http:/e)`.yaml"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            rule("MEAL_CARD", 7, movedFrom="ACME/DEFAULT/MEALS") + rule("MEAL", 6), id="typo"
        ),
        pytest.param(
            rule("MEAL", 3, movedFrom=str(FUEL)) + rule("FUEL", 6, movedFrom=str(MEAL)), id="swap"
        ),
        pytest.param(rule("MEAL_CARD", 7, movedFrom=str(MEAL)) + rule("MEAL", 6), id="kept"),
        pytest.param(rule("FUEL", 3, movedFrom=str(MEAL)), id="collision"),
    ],
)
def test_plan_markdown_shows_moved_from_errors_inert_and_exits_1(
    project: Path, invoke: Invoke, sandbox: SandboxServer, body: str
) -> None:
    """The PR comment of a refused ``movedFrom`` (issue 21) is the problems output of
    issue 23: inert Markdown on stdout, exit 1, under a file name built to be active."""
    started(project, invoke, sandbox)
    (project / "configs" / "acme.yaml").unlink()
    write(project / "configs" / HOSTILE, "companyId: ACME\nrules:\n" + body)
    result = invoke("plan", "--format", "markdown")
    assert result.exit_code == 1, result.output
    text = result.stdout
    assert text.startswith("### coins-sync plan for `default`"), text
    assert "movedFrom" in text or "moved into each other" in text, text
    tokens = MarkdownIt("gfm-like").parse(text)
    children = [c for t in tokens for c in (t.children or [])]
    assert not [t for t in tokens if t.type == "html_block"]
    active = ("html_inline", "link_open", "image", "em_open", "s_open")
    assert not [t for t in children if t.type in active], text
    for token in children:
        if token.type == "text":  # outside code spans: no mention reaches GitHub
            assert "@someone" not in token.content, text
    assert "@someone" in text  # the name is shown, inside a code span


def test_apply_without_a_terminal_counts_moves_and_retirements_in_progress_lines(
    project: Path, invoke: Invoke, servers: Callable[..., SandboxServer]
) -> None:
    """The plain progress lines of issue 23 count the PATCHes of moves and retirements
    (issue 21) as well as creates: the last line is every change of the plan."""
    slow = servers(latency_ms=30)  # the run lasts more than one 0.2 s progress tick
    events = [f"EVENT_{i:02}" for i in range(20)]
    rules(project, *(rule(event, 5) for event in events))
    first = invoke("apply", "--api-url", slow.url, "--yes", env=TOKEN)
    assert first.exit_code == 0, first.output
    moved = [rule(f"{e}_NEW", 5, movedFrom=f"ACME/DEFAULT/{e}") for e in events[:10]]
    rules(project, *moved, *(rule(e, retired=True) for e in events[10:]))
    result = invoke(
        "apply", "--api-url", slow.url, "--yes", "--force", "--parallelism", "1", env=TOKEN
    )
    assert result.exit_code == 0, result.output
    assert "10 moved" in result.stdout and "10 retired" in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("applied ")]
    assert len(lines) >= 2, result.stderr
    assert lines[-1] == "applied 20/20 (0 failed)"
