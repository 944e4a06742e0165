"""Values from the server, the state, file names and the audit log are inert in Markdown.

Every output is parsed with a real GFM parser (markdown-it-py with tables and linkify):
no HTML, link, image or emphasis may come from a value, a mention only ever sits in a
code span, a table row keeps its cells, and a code span shows the value exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from coins_sync.configs.model import RuleKey
from coins_sync.plan.drift import Drift
from coins_sync.plan.markdown import ELLIPSIS, PIPE_AFTER_BACKSLASH, code
from coins_sync.plan.reconcile import Plan, PlanContext
from coins_sync.plan.render import render_markdown
from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

GFM = MarkdownIt("gfm-like")  # CommonMark + tables + strikethrough + linkify
GITHUB_LIMIT = 65_536

HOSTILE = "@someone [a](http://e.com) <img src=x> <i>i</i> *em* __b__ ~~s~~ `t` \\| www.evil.com"
#: A file name (in a folder) with everything that used to break the plan and the report.
HOSTILE_FILE = "@x [a](http:/e) <i>y</i> `t` | *e* www.evil.com back\\slash.yaml"


def inline(tokens: list[Token]) -> list[Token]:
    return [child for token in tokens for child in (token.children or [])]


def assert_inert(text: str, ours: tuple[str, ...] = ("Plan:", "Drift:")) -> list[Token]:
    """Parse ``text``; fail on anything active that coins-sync itself did not write."""
    tokens = GFM.parse(text)
    children = inline(tokens)
    for block in (t.content.strip() for t in tokens if t.type == "html_block"):
        assert block == "</details>" or re.fullmatch(
            r"<details><summary>(All \d+|\d+ of \d+) changes</summary>", block
        )
    assert not [t for t in children if t.type == "html_inline"]
    assert not [t for t in children if t.type in ("link_open", "image", "em_open", "s_open")]
    for index, token in enumerate(children):
        if token.type == "strong_open":
            assert children[index + 1].content.startswith(ours)
    for token in [*tokens, *children]:
        if token.type not in ("code_inline", "inline"):  # an inline token holds its source
            assert "@someone" not in token.content and "@x" not in token.content, token
    return tokens


def rows(tokens: list[Token]) -> list[list[str]]:
    """Each table row's cells, as the code spans' contents (or the text) they hold."""
    table: list[list[str]] = []
    for index, token in enumerate(tokens):
        if token.type == "tr_open":
            table.append([])
        elif token.type in ("td_open", "th_open"):
            cell = tokens[index + 1].children or []
            spans = [c.content for c in cell if c.type == "code_inline"]
            table[-1].append(spans[0] if spans else tokens[index + 1].content)
    return table


# -- the helper ----------------------------------------------------------------------

SHOWN = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs")), min_size=1, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(value=SHOWN, limit=st.integers(1, 50))
def test_code_span_shows_the_cut_value_exactly(value: str, limit: int) -> None:
    text = f"before {code(value, limit)} after\n"
    tokens = assert_inert(text)
    spans = [t.content for t in inline(tokens) if t.type == "code_inline"]
    assert spans == [value[:limit]]
    assert text.endswith(f"`{ELLIPSIS} after\n") == (len(value) > limit)


@settings(max_examples=300, deadline=None)
@given(value=SHOWN)
def test_code_span_in_a_table_cell_keeps_the_row(value: str) -> None:
    text = f"| a | b |\n| --- | --- |\n| {code(value, cell=True)} | end |\n"
    table = rows(assert_inert(text))
    shown = re.sub(r"(?<=\\)\|", PIPE_AFTER_BACKSLASH, value)
    assert table == [["a", "b"], [shown, "end"]]


def test_code_span_never_doubles_backslashes_and_hides_no_control() -> None:
    assert code("a\\b") == "`a\\b`"
    assert code("a|b", cell=True) == "`a\\|b`"
    assert code("``x`") == "``` ``x` ```"
    assert code("x\ny\u202ez\x00") == "`x\\ny\\u202ez\\x00`"
    assert code("abcdef", 3) == f"`abc`{ELLIPSIS}"
    assert code("") == ""


# -- plan --format markdown ----------------------------------------------------------


def test_plan_markdown_shows_a_hostile_file_name_inert(project: Path, invoke: Invoke) -> None:
    write(
        project / "configs" / HOSTILE_FILE,
        "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 6\n",
    )
    result = invoke("plan", "--format", "markdown")
    assert result.exit_code == 0, result.output
    table = rows(assert_inert(result.output))
    assert table[-1] == ["+ create", "ACME/DEFAULT/MEAL", "6", f"configs/{HOSTILE_FILE}:3"]
    assert all(len(row) == len(table[-1]) for row in table[-2:])


def drift(count: int, server: str) -> Plan:
    key = RuleKey("ACME", "DEFAULT", "MEAL")
    return Plan(
        changes=(),
        managed=count,
        context=PlanContext(env="ci"),
        drift=tuple(Drift(key, f"WCC{i:06d}", "event", "MEAL", server) for i in range(count)),
    )


def test_drift_counts_against_the_budget_and_says_what_was_cut() -> None:
    text = render_markdown(drift(40, HOSTILE * 20), budget=5_000)
    assert len(text) <= 5_000
    tokens = assert_inert(text)
    shown = sum(1 for t in tokens if t.type == "list_item_open") - 1
    assert 0 < shown < 40
    assert f"… and {40 - shown} more differences not shown" in text
    spans = [t.content for t in inline(tokens) if t.type == "code_inline"]
    assert (HOSTILE * 20)[:100] in spans


def test_sixty_drifted_configs_with_long_server_values_fit_one_comment(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules = "".join(f"  - event: E{i:03d}\n    amount: {i}\n" for i in range(64))
    write(project / "configs/acme.yaml", f"companyId: ACME\nrules:\n{rules}")
    env = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
    assert invoke("apply", "--yes", "--api-url", sandbox.url, env=env).exit_code == 0
    long_value = HOSTILE + "x" * 6_000
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:  # changed behind our back
        for config in sandbox.configs():
            response = client.patch(
                f"/api/v0/enkash-coins/{config['coinConfigId']}",
                json={"event": long_value, "configuration": long_value},
                headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
            )
            assert response.status_code == 200
    result = invoke("plan", "--refresh", "--format", "markdown", "--api-url", sandbox.url, env=env)
    assert result.exit_code == 0, result.output
    text = result.output
    assert len(text) <= GITHUB_LIMIT
    tokens = assert_inert(text)
    assert "**Drift:** 128 difference(s)" in text
    shown = sum(1 for t in tokens if t.type == "list_item_open") - 1
    assert f"… and {128 - shown} more differences not shown" in text
    spans = [t.content for t in inline(tokens) if t.type == "code_inline"]
    assert long_value[:100] in spans and long_value not in spans


# -- report --format markdown --------------------------------------------------------


def test_report_markdown_shows_hostile_path_and_actor_inert(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(
        project / "configs" / HOSTILE_FILE,
        "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 6\n",
    )
    actor = "@someone <i>x</i> | `y` [a](http://e) *em* back\\slash"
    env = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN, "GITHUB_ACTOR": actor}
    assert invoke("apply", "--yes", "--api-url", sandbox.url, env=env).exit_code == 0
    result = invoke("report")
    assert result.exit_code == 0, result.output
    table = rows(assert_inert(result.output))
    assert len(table) == 2 and all(len(row) == 6 for row in table)
    configuration, event, amount, status, source, last = table[1]
    assert (configuration, event, amount) == ("DEFAULT", "MEAL", "6")
    assert status.startswith("WCC")  # the id is a code span of its own
    assert source == f"configs/{HOSTILE_FILE}:3"
    assert last.startswith("created ") and f" by {actor}" in last


def test_report_shows_a_live_id_in_a_code_span(project: Path, invoke: Invoke) -> None:
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 6\n"
    )
    entry = {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL", "amount": 6}
    state = {
        "version": 1,
        "lineage": "l",
        "serial": 1,
        "entries": [{**entry, "coinConfigId": "__b__"}],
    }
    write(project / "state/default.json", json.dumps(state))
    result = invoke("report")
    assert result.exit_code == 0, result.output
    tokens = assert_inert(result.output)
    assert not [t for t in inline(tokens) if t.type == "strong_open"]
    assert rows(tokens)[1][3] == "__b__"


def test_report_markdown_fits_one_comment_and_counts_what_it_cut(
    project: Path, invoke: Invoke
) -> None:
    companies = [f"C{c:03d}" + "x" * 150 for c in range(10)]
    for company in companies:
        rules = "".join(f"  - event: E{i:03d}{'y' * 50}\n    amount: {i}\n" for i in range(250))
        write(
            project / f"configs/{company[:4]}.yaml", f"companyId: {company[:60]}\nrules:\n{rules}"
        )
    result = invoke("report")
    assert result.exit_code == 0, result.output
    assert len(result.output) <= GITHUB_LIMIT
    tokens = assert_inert(result.output)
    shown = sum(1 for row in rows(tokens) if row[0] != "configuration")
    assert 0 < shown < 2_500
    assert f"… and {2_500 - shown} more rules not shown;" in result.output


def test_need_a_person_line_is_inert_and_bounded() -> None:
    hostile = "A`](http://e.com) <img src=x> @someone [x](y) `" + "k" * 100_000
    key = RuleKey(hostile, "DEFAULT", "MEAL")
    plan = Plan(
        changes=(),
        managed=1,
        context=PlanContext(env="ci"),
        drift=(Drift(key, "WCC1", "missing", "present", "absent"),),
    )
    text = render_markdown(plan, budget=5_000)
    assert len(text) <= 5_000
    tokens = assert_inert(text)
    spans = [t.content for t in inline(tokens) if t.type == "code_inline"]
    assert any(span.startswith("coins-sync state rm A`](http://e.com)") for span in spans)
    assert "1 need a person" in text
