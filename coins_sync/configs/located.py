"""Located YAML: a safe, strict YAML reader whose mappings and lists remember where each
value was written.

What is promised: YAML is read safely (no object-building tags) and strictly. A duplicate
mapping key, a YAML 1.1 surprise (``NO`` read as a boolean, ``0x10``, ``010``,
``1_000``, ...) or an alias bomb is a located problem ``(line, col, message)``, never a
silently wrong value and never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

_BaseLoader: type[yaml.SafeLoader]
try:  # the C parser is several times faster; the pure-Python one behaves the same
    _BaseLoader = yaml.CSafeLoader  # type: ignore[assignment,unused-ignore]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

# YAML 1.2 core schema spellings; anything else YAML 1.1 resolves to bool/int is a surprise.
STRICT_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")
STRICT_BOOL = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
# Integers written with more characters are a problem: Python will not even convert a
# decimal of over 4300 digits, and no amount needs more than a handful.
MAX_INT_CHARS = 100
# Alias expansion beyond this many nodes (plus twice the real node count) is refused.
_ALIAS_EXPANSION_SLACK = 10_000


class LocatedMap(dict[Any, Any]):
    """A YAML mapping that remembers where it and each of its values were written."""

    __slots__ = ("col", "key_marks", "line", "value_marks")

    def __init__(self, line: int, col: int) -> None:
        super().__init__()
        self.line = line
        self.col = col
        self.key_marks: dict[Any, tuple[int, int]] = {}
        self.value_marks: dict[Any, tuple[int, int]] = {}


class LocatedList(list[Any]):
    """A YAML sequence that remembers where it and each of its items were written."""

    __slots__ = ("col", "item_marks", "line")

    def __init__(self, line: int, col: int) -> None:
        super().__init__()
        self.line = line
        self.col = col
        self.item_marks: list[tuple[int, int]] = []


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class LocatedLoader(_BaseLoader):  # type: ignore[misc,valid-type,unused-ignore]
    """Safe loader that records locations and reports YAML 1.1 surprises as problems."""

    problems: list[tuple[int, int, str]]
    spelled: dict[tuple[int, int], str]

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.problems = []
        self.spelled = {}  # where YAML 1.1 read a value oddly -> the text written there

    def surprise(self, node: yaml.Node, message: str) -> None:
        line, col = _mark(node)
        self.problems.append((line, col, message))

    def misread(self, node: yaml.Node, message: str) -> None:
        """A YAML 1.1 reading of a scalar: a problem that the schema may word better."""
        self.surprise(node, message)
        self.spelled[_mark(node)] = str(node.value)


def _construct_map(loader: LocatedLoader, node: yaml.MappingNode) -> Iterator[LocatedMap]:
    line, col = _mark(node)
    data = LocatedMap(line, col)
    yield data
    own_pairs = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    merged_count = len(node.value) - own_pairs
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=False)
        try:
            hash(key)
        except TypeError:
            loader.surprise(key_node, "a mapping key must be a plain scalar")
            continue
        own = index >= merged_count
        if own and key in data and key in data.key_marks:
            first_line, _ = data.key_marks[key]
            loader.surprise(key_node, f"duplicate key {key!r} (first defined at line {first_line})")
            continue
        data[key] = loader.construct_object(value_node, deep=False)
        if own:
            data.key_marks[key] = _mark(key_node)
        data.value_marks[key] = _mark(value_node)


def _construct_seq(loader: LocatedLoader, node: yaml.SequenceNode) -> Iterator[LocatedList]:
    line, col = _mark(node)
    data = LocatedList(line, col)
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=False))
        data.item_marks.append(_mark(child))


def _construct_int(loader: LocatedLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value)
    if len(text) > MAX_INT_CHARS:
        loader.surprise(node, _too_long_int(text))
        return 0  # the file is invalid already; 0 adds no second problem for an amount
    value = loader.construct_yaml_int(node)
    if not STRICT_INT.match(text):
        loader.misread(
            node,
            f"{text!r} is read by YAML 1.1 as the integer {value}; "
            "write a plain decimal integer, or quote it if you mean a string",
        )
    return int(value)


TOO_LONG = f"characters long; at most {MAX_INT_CHARS} are accepted"


def _too_long_int(text: str) -> str:
    return f"integer {text[:12]}... is {len(text)} {TOO_LONG}"


def _construct_bool(loader: LocatedLoader, node: yaml.ScalarNode) -> bool:
    text = str(node.value)
    value = bool(loader.construct_yaml_bool(node))
    if text not in STRICT_BOOL:
        loader.misread(
            node,
            f"{text!r} is read by YAML 1.1 as the boolean {str(value).lower()}; "
            f"quote it ('{text}') if you mean a string",
        )
    return value


LocatedLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
LocatedLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
LocatedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
LocatedLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def _expanded_size(root: yaml.Node, limit: int) -> str | None:
    """Return a problem message if aliases expand past ``limit`` nodes or form a cycle."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        ident = id(node)
        known = sizes.get(ident)
        if known is not None:
            return known
        if ident in active:
            raise _Recursive
        active.add(ident)
        total = 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                total += size(key_node) + size(value_node)
                if total > limit:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > limit:
                    break
        active.discard(ident)
        sizes[ident] = total
        return total

    try:
        total = size(root)
    except _Recursive:
        return "recursive alias: a node contains itself"
    if total > limit:
        return f"aliases expand to more than {limit} nodes; refusing a possible alias bomb"
    return None


class _Recursive(Exception):
    pass


def read_full(text: str) -> tuple[Any, list[tuple[int, int, str]]]:
    """Parse one document with the full loader; return it (or None) with located problems.

    It builds the node tree, refuses alias bombs and words every YAML problem.
    """
    document, problems, _ = read_located(text)
    return document, problems


def read_located(text: str) -> tuple[Any, list[tuple[int, int, str]], dict[tuple[int, int], str]]:
    """:func:`read_full`, plus the places where YAML 1.1 misread a value (with the text
    written there), so that a schema problem at such a place can name what was written."""
    loader = LocatedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [], {}
        if "&" in text:  # only anchored files can hold aliases
            limit = _ALIAS_EXPANSION_SLACK + 2 * text.count("\n")
            bomb = _expanded_size(node, limit)
            if bomb:
                line, col = _mark(node)
                return None, [(line, col, bomb)], {}
        document = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        if (
            e.context_mark is not None
            and e.problem_mark is not None
            and e.problem_mark.index >= len(text.rstrip())
        ):
            # an unclosed quote or bracket fails at the end of the file: point where it
            # opened instead, which is where the mistake is
            mark = e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(part) for part in (e.context, e.problem) if part)
        return None, [(line, col, f"YAML error: {message or 'invalid YAML'}")], {}
    except yaml.YAMLError as e:
        return None, [(1, 1, f"YAML error: {e}")], {}
    except RecursionError:
        return None, [(1, 1, "nesting is too deep to read")], {}
    finally:
        loader.dispose()
    return document, loader.problems, loader.spelled
