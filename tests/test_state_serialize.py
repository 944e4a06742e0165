"""The state's bytes (coins_sync/state/model.py ``serialize``): the fast encoder gives
exactly what ``json.dumps(indent=2, sort_keys=True, ensure_ascii=False)`` gives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coins_sync.configs.model import RuleKey
from coins_sync.state.model import State, StateEntry, Uncertain, _indented_flat, serialize

# Any text a hand-edited or hostile state could hold, lone surrogates aside (no UTF-8
# file holds one, and loads_json refuses them): control characters, quotes,
# backslashes, line and paragraph separators, non-BMP characters.
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",))
    | st.sampled_from('\x00\x1f\x7f"\\\n\r\t\u2028\u2029'),
    min_size=1,
    max_size=12,
)
AMOUNT = st.integers(min_value=0, max_value=10**30)
KEYS = st.builds(RuleKey, TEXT, TEXT, TEXT)


def reference(state: State) -> bytes:
    text = json.dumps(state.to_json(), indent=2, sort_keys=True, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


@st.composite
def states(draw: st.DrawFn) -> State:
    entries = {}
    for key in draw(st.lists(KEYS, max_size=6, unique=True)):
        entries[key] = StateEntry(
            key,
            draw(AMOUNT),
            draw(TEXT),
            pending=draw(st.none() | AMOUNT),  # an update whose outcome is unknown
            retired=draw(st.booleans()),
        )
    uncertain = {
        key: Uncertain(key, draw(AMOUNT), draw(st.just("") | TEXT))
        for key in draw(st.lists(KEYS, max_size=4, unique=True))
    }
    return State(
        lineage=draw(TEXT), serial=draw(st.integers(0, 2**63)), entries=entries, uncertain=uncertain
    )


@settings(max_examples=300, deadline=None)
@given(states())
def test_state_bytes_are_those_of_json_dumps_indent_2(state: State) -> None:
    assert _indented_flat(state.to_json()) is not None  # the fast path, not the fallback
    assert serialize(state) == reference(state)


def test_known_states_byte_for_byte() -> None:
    key = RuleKey("ACMÉ", "DEFAULT", 'SIGN"UP\\\x01\u2028')
    other = RuleKey("ZED", "Ω", "😀")
    cases = [
        State(lineage="l"),  # no entry at all: "entries": []
        State(lineage="l", serial=7, entries={key: StateEntry(key, 5, "WCC1")}),
        State(
            lineage="l",
            serial=2,
            entries={
                key: StateEntry(key, 5, "WCC1", pending=9),
                other: StateEntry(other, 0, "WCC2", retired=True),
            },
            uncertain={RuleKey("A", "B", "C"): Uncertain(RuleKey("A", "B", "C"), 3, "2026-01-01")},
        ),
        State(
            lineage="l",
            uncertain={RuleKey("A", "B", "C"): Uncertain(RuleKey("A", "B", "C"), 3, "")},
        ),
    ]
    for state in cases:
        assert _indented_flat(state.to_json()) is not None
        assert serialize(state) == reference(state)
    assert b'"entries": [],' in serialize(cases[0])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(TEXT, JSON_VALUES, max_size=5))
def test_any_other_shape_is_left_to_json_dumps(data: dict[str, Any]) -> None:
    fast = _indented_flat(data)
    if fast is not None:
        assert fast == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)


def test_nested_values_take_the_reference_encoder() -> None:
    for data in (
        {"entries": [{"a": [1]}]},
        {"entries": [{}]},
        {"entries": [[1]]},
        {"entries": {"a": 1}},
        {"x": 1.5},
    ):
        assert _indented_flat(data) is None
