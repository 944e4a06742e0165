"""The fast paths of loading agree with the slow ones, and never accept more.

Two fast paths make `plan` quick at 100k rules: the event reader (`read_plain`) and the
checker compiled from the schema (`compile_checker`). Each is allowed to give up and
hand over to the full loader or to jsonschema, but never to disagree with them.
"""

from __future__ import annotations

import copy
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coins_sync.configs import loader as loader_module
from coins_sync.configs import schema as schema_module
from coins_sync.configs.checker import UnsupportedSchema, compile_checker
from coins_sync.configs.events import NOT_PLAIN, read_plain
from coins_sync.configs.loader import RuleLoader
from coins_sync.configs.located import LocatedList, LocatedMap, read_full
from coins_sync.configs.schema import rules_schema, strict_validator
from coins_sync.errors import ConfigError
from tests.conftest import CORPUS, write

# --- helpers ------------------------------------------------------------------------


def located(value: Any) -> list[Any]:
    """A value with every type and location spelled out, flattened in pre-order (no
    recursion: documents may nest 900 deep)."""
    flat: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, LocatedMap):
            keys = [(type(k).__name__, k) for k in item]
            marks = sorted((repr(k), item.key_marks.get(k), item.value_marks.get(k)) for k in item)
            flat.append(("map", item.line, item.col, keys, marks))
            stack.extend(reversed(item.values()))
        elif isinstance(item, LocatedList):
            flat.append(("list", item.line, item.col, len(item), item.item_marks))
            stack.extend(reversed(item))
        elif isinstance(item, float) and math.isnan(item):
            flat.append(("float", "nan"))
        else:
            flat.append((type(item).__name__, item))
    return flat


def assert_plain_agrees(text: str) -> None:
    """Whenever the event reader gives a document, the full loader gives the same one
    and no problem."""
    fast = read_plain(text)
    if fast is NOT_PLAIN:
        return
    full, problems = read_full(text)
    assert problems == [], (text, problems)
    assert located(fast) == located(full), text


def assert_checks_agree(document: Any, max_amount: int = 10_000) -> None:
    schema = rules_schema(max_amount)
    fast = compile_checker(schema)(document)
    slow = strict_validator(schema).is_valid(document)
    assert fast == slow, (document, max_amount)


def rule_file(*rules: str, head: str = "companyId: ACME\n") -> str:
    return head + "rules:\n" + "".join(rules)


# --- the compiled checker -----------------------------------------------------------

GOOD: dict[str, Any] = {
    "companyId": "ACME",
    "configuration": "DEFAULT",
    "rules": [{"event": "E", "amount": 6}, {"event": "F", "amount": 0, "configuration": "X"}],
}


def with_rule(**fields: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    doc["rules"][0] = fields
    return doc


DOCUMENTS: list[Any] = [
    GOOD,
    {"companyId": "A", "rules": []},
    {"companyId": "A" * 64, "rules": []},
    {"companyId": "A" * 65, "rules": []},
    {"companyId": "A\n", "rules": []},  # `$` matches before a final newline, in both
    {"companyId": "", "rules": []},
    {"companyId": "-A", "rules": []},
    {"companyId": "a.b_c-d", "rules": []},
    {"companyId": "É", "rules": []},
    {"companyId": 10, "rules": []},
    {"companyId": None, "rules": []},
    {"companyId": True, "rules": []},
    {"companyId": "A"},
    {"rules": []},
    {"companyId": "A", "rules": None},
    {"companyId": "A", "rules": {}},
    {"companyId": "A", "rules": "x"},
    {"companyId": "A", "rules": [], "extra": 1},
    {"companyId": "A", "rules": [], 1: "int key"},
    {"companyId": "A", "rules": [], None: "null key"},
    {"companyId": "A", "configuration": 5, "rules": []},
    {"companyId": "A", "rules": [[]]},
    {"companyId": "A", "rules": [None]},
    {"companyId": "A", "rules": ["E"]},
    with_rule(event="E", amount=6.0),
    with_rule(event="E", amount=6.5),
    with_rule(event="E", amount="6"),
    with_rule(event="E", amount=True),
    with_rule(event="E", amount=False),
    with_rule(event="E", amount=None),
    with_rule(event="E", amount=-1),
    with_rule(event="E", amount=10_000),
    with_rule(event="E", amount=10_001),
    with_rule(event="E", amount=10**30),
    with_rule(event="E", amount=float("inf")),
    with_rule(event="E", amount=float("nan")),
    with_rule(event="E"),
    with_rule(amount=1),
    with_rule(event="E", amount=1, amout=1),
    with_rule(event="E", amount=1, configuration=""),
    with_rule(event="E", amount=1, configuration=None),
    with_rule(event=1, amount=1),
    with_rule(event="E", retired=True),
    with_rule(event="E", retired=True, amount=0),
    with_rule(event="E", retired=True, movedFrom="A/B/C"),
    with_rule(event="E", retired=False),
    with_rule(event="E", retired=False, amount=1),
    with_rule(event="E", retired=1, amount=1),
    with_rule(event="E", retired=1),
    with_rule(event="E", retired="true"),
    with_rule(event="E", retired=None, amount=1),
    with_rule(event="E", amount=1, movedFrom="A/DEFAULT/E0"),
    with_rule(event="E", amount=1, movedFrom="A/DEFAULT"),
    with_rule(event="E", amount=1, movedFrom="A//E"),
    with_rule(event="E", amount=1, movedFrom="A/B/C\n"),
    with_rule(event="E", amount=1, movedFrom=5),
    [],
    "text",
    None,
    5,
]


@pytest.mark.parametrize("document", DOCUMENTS, ids=range(len(DOCUMENTS)))
@pytest.mark.parametrize("max_amount", [0, 6, 10_000])
def test_compiled_checker_agrees_with_jsonschema(document: Any, max_amount: int) -> None:
    assert_checks_agree(document, max_amount)


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=20_000)
    | st.floats(allow_nan=True)
    | st.sampled_from(["A", "E", "", "a b", "x\n", "DEFAULT", "A" * 65]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["companyId", "configuration", "rules", "event", "amount", "retired", "x"]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    """A valid document with one part swapped for something arbitrary."""
    doc = copy.deepcopy(GOOD)
    where = draw(st.sampled_from(["top", "company", "rules", "rule", "amount", "event", "extra"]))
    junk = draw(JSONISH)
    if where == "top":
        return junk
    if where == "company":
        doc["companyId"] = junk
    elif where == "rules":
        doc["rules"] = junk
    elif where == "rule":
        doc["rules"][1] = junk
    elif where == "amount":
        doc["rules"][0]["amount"] = junk
    elif where == "event":
        doc["rules"][0]["event"] = junk
    else:
        field = draw(st.sampled_from(["x", "configuration", "event", "retired", "movedFrom"]))
        doc["rules"][0][field] = junk
        if draw(st.booleans()):
            doc["rules"][0].pop("amount")
    return doc


@settings(max_examples=300, deadline=None)
@given(near_valid() | JSONISH, st.sampled_from([0, 6, 10_000]))
def test_compiled_checker_agrees_on_generated_documents(document: Any, max_amount: int) -> None:
    assert_checks_agree(document, max_amount)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["$defs"]["rule"].update(maxProperties=3),
        lambda s: s.update(additionalProperties={"type": "string"}),
        lambda s: s["properties"]["rules"].update(items={"$ref": "other.json#/x"}),
        lambda s: s["properties"]["rules"].update(items={"$ref": "#/$defs/nowhere"}),
        lambda s: s["$defs"]["rule"].update({"$id": "https://example.com/rule"}),
        lambda s: s["properties"]["companyId"].update(type="date"),
        lambda s: s["properties"]["rules"].update(prefixItems=[{"type": "string"}]),
    ],
)
def test_a_schema_the_compiler_does_not_know_is_refused(change: Any) -> None:
    schema = rules_schema()
    change(schema)
    with pytest.raises(UnsupportedSchema):
        compile_checker(schema)


def test_the_shipped_schema_compiles() -> None:
    assert compile_checker(rules_schema())(GOOD)


@pytest.mark.parametrize(
    "value",
    [0, -3, 1.5, math.inf, True, False, "1", None, [1], {"a": 1}, Decimal("2.5"), Fraction(1, 3)],
    ids=repr,
)
@pytest.mark.parametrize("kind", ["number", "integer", ["number", "string"]], ids=str)
def test_compiled_type_checks_agree_with_jsonschema(value: Any, kind: Any) -> None:
    # "number" (not in the shipped schema) is any numbers.Number but a bool, as for
    # jsonschema; "integer" is strict: no float, no bool.
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": kind}
    assert compile_checker(schema)(value) == strict_validator(schema).is_valid(value)


# --- the event reader ---------------------------------------------------------------

YAML_CASES = [
    rule_file("  - event: A\n    amount: 6\n"),
    rule_file("  - {event: A, amount: 6}\n  - [1, 2]\n"),
    rule_file("  - event: 'A'\n    amount: 6\n    configuration: \"X\"\n"),
    "companyId: ACME\nrules: []\n",
    "# comment\ncompanyId: ACME # trailing\nrules:\n- event: A\n  amount: +5\n",
    rule_file("  - event: A\n    amount: -0\n"),
    "\ufeffcompanyId: ACME\r\nrules: []\r\n",
    "---\ncompanyId: ACME\nrules: []\n...\n",
    "companyId: ACME\nrules:\n  - event: >-\n      folded\n    amount: 1\n",
    "companyId: ACME\nrules:\n  - event: |\n      literal\n    amount: 1\n",
    "- a\n- b\n",
    "just text\n",
    "{}",
    "[]",
    "companyId: ACME\ncompanyId: OTHER\nrules: []\n",
    "companyId: ACME\nrules:\n  - event: A\n    amount: 1\n    amount: 2\n",
    rule_file("  - event: A\n    amount: 010\n"),
    rule_file("  - event: A\n    amount: 0x10\n"),
    rule_file("  - event: A\n    amount: 1_000\n"),
    rule_file("  - event: A\n    amount: 6.0\n"),
    rule_file("  - event: A\n    amount: 1:30\n"),
    rule_file("  - event: NO\n    amount: 1\n"),
    rule_file("  - event: true\n    amount: 1\n"),
    rule_file("  - event: ~\n    amount: 1\n"),
    rule_file("  - event: null\n    amount: 1\n"),
    rule_file("  - event:\n    amount: 1\n"),
    rule_file("  - event: 2001-12-14\n    amount: 1\n"),
    rule_file("  - event: .inf\n    amount: 1\n"),
    rule_file("  - event: !!str 5\n    amount: 1\n"),
    rule_file("  - event: ! 5\n    amount: 1\n"),
    rule_file("  - &a\n    event: A\n    amount: 1\n  - <<: *a\n    event: B\n"),
    rule_file("  - event: A\n    amount: 1\n", head="companyId: &c ACME\nx: *c\n"),
    "companyId: ACME\nrules: &r [*r]\n",
    "? [complex]\n: key\n",
    "? {a: 1}\n: key\n",
    "companyId: ACME\nrules: []\n---\ncompanyId: ACME\nrules: []\n",
    "",
    "# only a comment\n",
    "---\n",
    "companyId: ACME\nrules: [\n",
    "companyId: ACME\n  bad indent: 1\n",
    "companyId: !!python/object/apply:os.system ['true']\nrules: []\n",
    "=: x\n",
    "<<: {companyId: ACME}\nrules: []\n",
    "1: one\n2: two\n",
    "companyId: ACME\nrules: " + "[" * 200 + "]" * 200 + "\n",
    "companyId: ACME\nrules: " + "[" * 900 + "]" * 900 + "\n",
    "companyId: ACME\nrules: " + "[" * 5000 + "]" * 5000 + "\n",
]


@pytest.mark.parametrize("text", YAML_CASES, ids=range(len(YAML_CASES)))
def test_event_reader_gives_the_full_loaders_document(text: str) -> None:
    assert_plain_agrees(text)


def test_event_reader_reads_the_plain_subset() -> None:
    # The common case must really take the fast path, or the bench targets mean nothing.
    for text in YAML_CASES[:10]:
        assert read_plain(text) is not NOT_PLAIN, text


@pytest.mark.parametrize(
    "text",
    [case for case in YAML_CASES if read_full(case)[1]],
    ids=lambda t: t[:30],
)
def test_event_reader_hands_every_problem_to_the_full_loader(text: str) -> None:
    assert read_plain(text) is NOT_PLAIN


SCALARS = [
    "A",
    "'A'",
    '"A"',
    "6",
    "-1",
    "+5",
    "0",
    "00",
    "010",
    "0x1F",
    "0b11",
    "0o7",
    "1_000",
    "1:30",
    "6.0",
    "1e3",
    ".inf",
    ".nan",
    "yes",
    "NO",
    "on",
    "Off",
    "y",
    "true",
    "False",
    "~",
    "null",
    "Null",
    "''",
    "2001-12-14",
    "!!str 5",
    "!!int '5'",
    "&x A",
    "*x",
    "[]",
    "{}",
    "[A, 6]",
    "{a: 1}",
    "=",
    "<<",
    "a b",
    "É",
    '"A\\n"',
]


@st.composite
def yaml_rule_files(draw: st.DrawFn) -> str:
    """Rule files whose scalars and keys are drawn from YAML's surprises."""
    scalar = st.sampled_from(SCALARS)
    key = st.sampled_from(["companyId", "configuration", "rules", "event", "amount", "x", "6"])
    lines = [f"companyId: {draw(scalar)}"]
    if draw(st.booleans()):
        lines.append(f"{draw(key)}: {draw(scalar)}")
    lines.append("rules:")
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        lines.append(f"  - event: {draw(scalar)}")
        lines.append(f"    amount: {draw(scalar)}")
        if draw(st.booleans()):
            lines.append(f"    {draw(key)}: {draw(scalar)}")
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None)
@given(yaml_rule_files())
def test_event_reader_and_checker_agree_on_generated_files(text: str) -> None:
    assert_plain_agrees(text)
    document, problems = read_full(text)
    if not problems and document is not None:
        assert_checks_agree(document)


def test_event_reader_agrees_on_the_yaml_test_suite() -> None:
    read = 0
    for path in sorted(CORPUS.glob("*.yaml")):
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            continue
        assert_plain_agrees(text)
        read += read_plain(text) is not NOT_PLAIN
    assert read > 50  # the corpus does exercise the fast path


# --- end to end ---------------------------------------------------------------------


def load_both(monkeypatch: pytest.MonkeyPatch, folder: Path) -> tuple[Any, Any]:
    """What RuleLoader.load makes of ``folder`` with the fast paths, and without."""

    def outcome() -> Any:
        try:
            found = RuleLoader(max_amount=100).load([folder])
        except ConfigError as e:
            return [str(problem) for problem in e.problems]
        return found.rules, found.files, found.digest

    fast = outcome()
    with monkeypatch.context() as patched:
        patched.setattr(loader_module, "read_plain", lambda text, plain=None: NOT_PLAIN)

        def unsupported(schema: Any) -> Any:
            raise UnsupportedSchema("slow path forced by the test")

        patched.setattr(schema_module, "compile_checker", unsupported)
        slow = outcome()
    return fast, slow


@pytest.mark.parametrize("text", YAML_CASES, ids=range(len(YAML_CASES)))
def test_loading_with_and_without_fast_paths_is_identical(
    project: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    write(project / "configs/a.yaml", text)
    write(project / "configs/b.yaml", rule_file("  - event: A\n    amount: 100\n"))
    fast, slow = load_both(monkeypatch, project / "configs")
    assert fast == slow
