"""Plan renderers are classes with one interface, found by format name (issue 11, item 4).

An unknown format is an error, never a silent fallback to text. The bytes each format
writes are pinned by the plan tests (test_plan_cli, test_gitops, test_markdown_inert).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coins_sync.configs.model import RuleKey, Source
from coins_sync.errors import CoinsSyncError, UnknownFormatError
from coins_sync.plan.drift import Drift
from coins_sync.plan.reconcile import Action, Change, Plan, PlanContext
from coins_sync.plan.render import (
    RENDERERS,
    PlanJson,
    PlanMarkdown,
    PlanRenderer,
    PlanText,
    render,
    renderer_for,
)
from tests.conftest import Invoke, write


def key(event: str) -> RuleKey:
    return RuleKey("ACME", "DEFAULT", event)


PLAN = Plan(
    changes=(
        Change(Action.CREATE, key("NEW"), 1, source=Source("configs/a.yaml", 3)),
        Change(Action.UPDATE, key("MEAL"), 6, before=60, coin_config_id="WCC1"),
        Change(Action.ORPHAN, key("OLD"), 2, coin_config_id="WCC2"),
        Change(Action.UNCHANGED, key("SAME"), 4, coin_config_id="WCC3"),
    ),
    managed=3,
    context=PlanContext(env="ci", lineage="L", serial=2, configs_digest="d"),
    drift=(Drift(key("MEAL"), "WCC1", "amount", "6", "60"),),
)


def test_every_format_has_one_renderer_class() -> None:
    assert list(RENDERERS) == ["text", "json", "markdown"]
    assert {"text": PlanText, "json": PlanJson, "markdown": PlanMarkdown} == RENDERERS
    for name, cls in RENDERERS.items():
        assert issubclass(cls, PlanRenderer) and cls.name == name
        renderer = renderer_for(name)
        assert type(renderer) is cls
        text = renderer.render(PLAN)
        assert text == render(PLAN, name) and text.endswith("\n")


def test_the_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        PlanRenderer()  # type: ignore[abstract]


def test_each_format_says_what_it_is() -> None:
    assert json.loads(PlanJson().render(PLAN))["summary"]["update"] == 1
    assert PlanMarkdown().render(PLAN).startswith("### coins-sync plan for `ci`")
    assert PlanText().render(PLAN).startswith("Drift: 1 difference(s)")
    cut = PlanMarkdown(budget=700).render(PLAN)
    assert len(cut) <= 700 and "more changes not shown" in cut
    assert "not shown" not in PlanMarkdown().render(PLAN)


def test_colour_is_for_text_only() -> None:
    assert "\x1b[" in renderer_for("text", colour=True).render(PLAN)
    assert "\x1b[" not in renderer_for("text").render(PLAN)
    for name in ("json", "markdown"):
        assert renderer_for(name, colour=True).render(PLAN) == renderer_for(name).render(PLAN)


@pytest.mark.parametrize("fmt", ["yaml", "", "TEXT", "Markdown", "html"])
def test_an_unknown_format_is_an_error_not_text(fmt: str) -> None:
    with pytest.raises(UnknownFormatError, match="unknown plan format") as caught:
        render(PLAN, fmt)
    assert isinstance(caught.value, CoinsSyncError)  # the CLI words it: Error: ..., exit 1
    assert "text, json, markdown" in str(caught.value)
    with pytest.raises(UnknownFormatError):
        renderer_for(fmt)


def test_the_cli_offers_the_registered_formats_and_refuses_others(
    project: Path, invoke: Invoke
) -> None:
    write(project / "configs/a.yaml", "companyId: ACME\nrules:\n  - event: A\n    amount: 1\n")
    result = invoke("plan", "--format", "yaml")
    assert result.exit_code == 1  # coins-sync gives usage errors exit 1
    assert "Invalid value for '--format'" in result.output
    assert "'text', 'json', 'markdown'" in result.output
    assert "Plan:" not in result.output
    for name in RENDERERS:
        assert invoke("plan", "--format", name).exit_code == 0
