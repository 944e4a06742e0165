"""Property tests: generated valid configs validate; mutated bytes never crash."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from coins_sync.cli import cli
from coins_sync.configs.loader import RuleLoader
from tests.conftest import SAMPLE_RULES

IDENT = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)

SEED = SAMPLE_RULES


def _quote(text: str) -> str:
    return '"' + text + '"'


@st.composite
def rule_files(draw: st.DrawFn) -> tuple[str, str, dict[str, int]]:
    company = draw(IDENT)
    events = draw(st.lists(IDENT, min_size=0, max_size=8, unique=True))
    amounts = {e: draw(st.integers(min_value=0, max_value=10_000)) for e in events}
    quote = draw(st.booleans())
    lines = [f"companyId: {_quote(company)}"]
    if draw(st.booleans()):
        lines.append('configuration: "DEFAULT"')
    lines.append("rules:" if events else "rules: []")
    for event, amount in amounts.items():
        shown = _quote(event) if quote or not event.isalpha() else f"'{event}'"
        lines.append(f"  - event: {shown}\n    amount: {amount}")
    return company, "\n".join(lines) + "\n", amounts


@settings(max_examples=60, deadline=None)
@given(rule_files())
def test_generated_valid_configs_validate(case: tuple[str, str, dict[str, int]]) -> None:
    company, text, amounts = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        config_set = RuleLoader().load([Path(tmp)])
    assert {r.key.event: r.amount for r in config_set.rules} == amounts
    assert all(r.key.company_id == company for r in config_set.rules)
    assert all(r.key.configuration == "DEFAULT" for r in config_set.rules)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]),
            st.integers(min_value=0, max_value=len(SEED) - 1),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_byte_mutations_never_crash(mutations: list[tuple[str, int, int]]) -> None:
    data = bytearray(SEED)
    for kind, pos, byte in mutations:
        pos %= max(len(data), 1)
        if kind == "flip" and data:
            data[pos] = byte
        elif kind == "insert":
            data.insert(pos, byte)
        elif data:
            del data[pos]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(bytes(data))
        result = CliRunner().invoke(cli, ["validate", str(path)], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        *lines, summary = result.output.splitlines()
        assert summary.startswith("invalid: "), result.output
        problems = [line for line in lines if not line.startswith(" ")]  # not continuations
        assert problems and all(re.match(r".*c\.yaml:\d+:\d+: \S", p) for p in problems)
    else:
        assert result.output.startswith("valid: ")
