"""Reading rule files: safe YAML with locations, schema checks and semantic checks.

What is promised:

* Every ``*.yaml``/``*.yml`` under a folder is read, recursively, in sorted path order.
* YAML is read safely (no object-building tags) and strictly: a duplicate mapping
  key, a YAML 1.1 surprise (``NO`` read as a boolean, ``0x10``, ``010``, ``1_000``, ...)
  or an alias bomb is a located problem, never a silently wrong value.
* Every problem in every file is reported at once as a :class:`Problem` with
  ``path:line:col``; nothing here raises for bad input except :class:`ConfigError`,
  which carries them all.

Speed: a file written in the plain subset of YAML that rule files use (block or flow
collections, strings and decimal integers, no tags, anchors, aliases or merge keys) is
read straight from the C parser's events into the located document. Anything else,
including every file with a YAML problem, is read by the full loader, which words the
problem; both give the same document whenever the fast reader gives one.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coins_sync.configs.model import Rule, RuleKey, Source
from coins_sync.configs.schema import RuleFileValidator
from coins_sync.errors import ConfigError, Problem
from coins_sync.gcpause import cyclic_gc_paused

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 10 * 1024 * 1024
DEFAULT_CONFIGURATION = "DEFAULT"
YAML_SUFFIXES = (".yaml", ".yml")

_BaseLoader: type[yaml.SafeLoader]
try:  # the C parser is several times faster; the pure-Python one behaves the same
    _BaseLoader = yaml.CSafeLoader  # type: ignore[assignment,unused-ignore]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

# YAML 1.2 core schema spellings; anything else YAML 1.1 resolves to bool/int is a surprise.
_STRICT_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)\Z")
_STRICT_BOOL = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
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


class _RuleLoader(_BaseLoader):  # type: ignore[misc,valid-type,unused-ignore]
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


def _construct_map(loader: _RuleLoader, node: yaml.MappingNode) -> Iterator[LocatedMap]:
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


def _construct_seq(loader: _RuleLoader, node: yaml.SequenceNode) -> Iterator[LocatedList]:
    line, col = _mark(node)
    data = LocatedList(line, col)
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=False))
        data.item_marks.append(_mark(child))


def _construct_int(loader: _RuleLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value)
    if len(text) > MAX_INT_CHARS:
        loader.surprise(node, _too_long_int(text))
        return 0  # the file is invalid already; 0 adds no second problem for an amount
    value = loader.construct_yaml_int(node)
    if not _STRICT_INT.match(text):
        loader.misread(
            node,
            f"{text!r} is read by YAML 1.1 as the integer {value}; "
            "write a plain decimal integer, or quote it if you mean a string",
        )
    return int(value)


_TOO_LONG = f"characters long; at most {MAX_INT_CHARS} are accepted"


def _too_long_int(text: str) -> str:
    return f"integer {text[:12]}... is {len(text)} {_TOO_LONG}"


def _construct_bool(loader: _RuleLoader, node: yaml.ScalarNode) -> bool:
    text = str(node.value)
    value = bool(loader.construct_yaml_bool(node))
    if text not in _STRICT_BOOL:
        loader.misread(
            node,
            f"{text!r} is read by YAML 1.1 as the boolean {str(value).lower()}; "
            f"quote it ('{text}') if you mean a string",
        )
    return value


_RuleLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_RuleLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_RuleLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_RuleLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
# A plain scalar whose first character starts no implicit resolver is always a string.
_RESOLVER_FIRSTS = frozenset(k for k in _RuleLoader.yaml_implicit_resolvers if k)
# The event reader is sound only while tags are resolved by first character alone.
_EVENTS_USABLE = (
    None not in _RuleLoader.yaml_implicit_resolvers and not _RuleLoader.yaml_path_resolvers
)
NOT_PLAIN: Any = object()  # "read it with read_full"; never part of a document
_NO_KEY: Any = object()
_MISSING: Any = object()
_PLAIN_CACHE_LIMIT = 65_536


def _resolve_plain(loader: _RuleLoader, text: str) -> Any:
    """A plain scalar as the full loader reads it, when that is a string or a strict
    decimal integer with nothing to report; otherwise NOT_PLAIN."""
    tag = loader.resolve(yaml.ScalarNode, text, (True, False))
    if tag == _STR_TAG:
        return text
    if tag == _INT_TAG and _STRICT_INT.match(text) and len(text) <= MAX_INT_CHARS:
        return int(text)
    return NOT_PLAIN


def _read_events(loader: _RuleLoader, plain: dict[str, Any]) -> Any:
    """The document read from parser events without building a node tree.

    Returns NOT_PLAIN as soon as the input leaves the plain subset or has anything to
    report (a duplicate key, a YAML 1.1 surprise, a syntax error, a second document),
    so that the full loader reads it and words the problem. ``plain`` memoises how
    plain scalars resolve.
    """
    get = loader.get_event
    if type(get()) is not yaml.StreamStartEvent or type(get()) is not yaml.DocumentStartEvent:
        return NOT_PLAIN
    scalar_event, map_start, seq_start = (
        yaml.ScalarEvent,
        yaml.MappingStartEvent,
        yaml.SequenceStartEvent,
    )
    collection_ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    firsts = _RESOLVER_FIRSTS
    root: Any = NOT_PLAIN
    parents: list[Any] = []
    node: Any = None  # the innermost open collection
    in_list = False
    key: Any = _NO_KEY
    key_mark = (0, 0)
    while True:
        event = get()
        kind = type(event)
        opened: Any = None
        if kind is scalar_event:
            if event.anchor is not None or event.tag is not None:
                return NOT_PLAIN
            value = event.value
            if event.implicit[0] and (not value or value[0] in firsts):
                resolved = plain.get(value, _MISSING)
                if resolved is _MISSING:
                    resolved = _resolve_plain(loader, value)
                    if len(plain) < _PLAIN_CACHE_LIMIT:
                        plain[value] = resolved
                if resolved is NOT_PLAIN:
                    return NOT_PLAIN
                value = resolved
        elif kind is map_start or kind is seq_start:
            if event.anchor is not None or event.tag is not None:
                return NOT_PLAIN
            mark = event.start_mark
            value = opened = (LocatedMap if kind is map_start else LocatedList)(
                mark.line + 1, mark.column + 1
            )
        elif kind in collection_ends:
            node = parents.pop()
            in_list = type(node) is LocatedList
            continue
        elif kind is yaml.DocumentEndEvent and node is None:
            break
        else:  # aliases and anything unforeseen
            return NOT_PLAIN
        mark = event.start_mark
        where = (mark.line + 1, mark.column + 1)
        if in_list:
            node.append(value)
            node.item_marks.append(where)
        elif node is None:
            root = value
        elif key is _NO_KEY:
            if opened is not None or value in node:  # a complex or duplicate key
                return NOT_PLAIN
            key, key_mark = value, where
            continue
        else:
            node[key] = value
            node.key_marks[key] = key_mark
            node.value_marks[key] = where
            key = _NO_KEY
        if opened is not None:
            parents.append(node)
            node, in_list = opened, kind is seq_start
    if type(get()) is not yaml.StreamEndEvent:
        return NOT_PLAIN
    return root


def read_plain(text: str, plain: dict[str, Any] | None = None) -> Any:
    """Parse one document of the plain subset fast; NOT_PLAIN means "use read_full".

    Whenever it returns a document, :func:`read_full` returns an equal one (same values,
    same locations) and no problem. ``plain`` memoises how plain scalars resolve.
    """
    if not _EVENTS_USABLE:
        return NOT_PLAIN
    loader = _RuleLoader(text)
    try:
        return _read_events(loader, {} if plain is None else plain)
    except yaml.YAMLError:
        return NOT_PLAIN
    finally:
        loader.dispose()


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


# RuleKey's own order, compared as plain tuples of strings (much faster than RuleKey.__lt__).
_RULE_ORDER = operator.attrgetter("key.company_id", "key.configuration", "key.event")


@dataclass(frozen=True)
class ConfigSet:
    """Every rule read from the configs, with a digest of the files they came from."""

    rules: tuple[Rule, ...]
    files: tuple[str, ...]
    digest: str

    def by_key(self) -> dict[RuleKey, Rule]:
        return {rule.key: rule for rule in self.rules}


@dataclass
class _FileResult:
    rules: list[Rule] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def display_path(path: Path, cwd: Path | None = None) -> str:
    """A path as users see it in messages: relative to the working directory."""
    base = cwd or Path.cwd()
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def discover(paths: Sequence[Path]) -> tuple[list[Path], list[Problem]]:
    """Expand folders to their YAML files (recursively, sorted); report missing paths."""
    found: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.suffix.lower() in YAML_SUFFIXES
                    and p.is_file()
                    # hidden folders (.git, an editor's backups) are never rule files
                    and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1])
                )
            )
        elif path.is_file():
            found.append(path)
        else:
            problems.append(Problem(display_path(path), 0, 0, "no such file or folder"))
    unique = sorted(set(found), key=lambda p: display_path(p))
    return unique, problems


class RuleLoader:
    """Loads and checks rule files. Construct once; ``load`` may be called many times."""

    def __init__(
        self,
        *,
        max_amount: int = 10_000,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        cwd: Path | None = None,
    ) -> None:
        self.max_amount = max_amount
        self.max_file_bytes = max_file_bytes
        self.cwd = cwd
        self.validator = RuleFileValidator(max_amount=max_amount)
        self._plain: dict[str, Any] = {}  # how plain scalars resolve, across files

    def load(self, paths: Sequence[Path]) -> ConfigSet:
        """Read every rule under ``paths``; raise ConfigError with every problem found."""
        with cyclic_gc_paused():
            return self._load(paths)

    def _load(self, paths: Sequence[Path]) -> ConfigSet:
        files, problems = discover(paths)
        digest = hashlib.sha256()
        rules: list[Rule] = []
        shown: list[str] = []
        for path in files:
            shown_path = display_path(path, self.cwd)
            shown.append(shown_path)
            result = self._load_file(path, shown_path, digest)
            rules.extend(result.rules)
            problems.extend(result.problems)
        problems.extend(_duplicate_keys(rules))
        problems.extend(_duplicate_ids(rules))
        if problems:
            raise ConfigError(problems)
        return ConfigSet(
            rules=tuple(sorted(rules, key=_RULE_ORDER)),
            files=tuple(shown),
            digest=digest.hexdigest(),
        )

    def _load_file(self, path: Path, shown: str, digest: Any) -> _FileResult:
        result = _FileResult()

        def fail(line: int, col: int, message: str) -> _FileResult:
            result.problems.append(Problem(shown, line, col, message))
            return result

        try:
            size = path.stat().st_size
            if size > self.max_file_bytes:
                return fail(
                    1,
                    1,
                    f"file is {size} bytes, over the {self.max_file_bytes}-byte limit; "
                    "refusing to parse it",
                )
            raw = path.read_bytes()
        except OSError as e:
            return fail(1, 1, f"cannot read file: {e.strerror or e}")
        digest.update(shown.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(raw).digest())
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
            return fail(line, col, f"not valid UTF-8 (byte 0x{raw[e.start]:02x})")
        document, located, spelled = self._parse(text)
        if document is None or not isinstance(document, LocatedMap):
            for line, col, message in located:
                result.problems.append(Problem(shown, line, col, message))
        if document is None:
            if not located:
                fail(1, 1, "file is empty; expected a mapping with companyId and rules")
            return result
        if not isinstance(document, LocatedMap):
            line, col = getattr(document, "line", 1), getattr(document, "col", 1)
            return fail(
                line,
                col,
                f"the top level is {_describe_type(document)}; "
                "expected a mapping with companyId and rules",
            )
        schema_problems = self.validator.problems(document, spelled)
        # A too long integer was read as 0; what the schema says of that 0 is noise.
        too_long = {(line, col) for line, col, message in located if _TOO_LONG in message}
        schema_problems = [p for p in schema_problems if (p[0], p[1]) not in too_long]
        # A schema problem where YAML 1.1 misread a value names what was written there
        # and how it was read: the loader's own note at that place would say it twice.
        worded = {(line, col) for line, col, _ in schema_problems} & spelled.keys()
        for line, col, message in located:
            if (line, col) not in worded:
                result.problems.append(Problem(shown, line, col, message))
        for line, col, message in schema_problems:
            result.problems.append(Problem(shown, line, col, message))
        if schema_problems or located:
            return result
        result.rules.extend(_rules_from(document, shown))
        return result

    def _parse(
        self, text: str
    ) -> tuple[Any, list[tuple[int, int, str]], dict[tuple[int, int], str]]:
        """Parse one document; return it (or None) with located problems and the places
        where YAML 1.1 misread a value (with the text written there)."""
        document = read_plain(text, self._plain)
        if document is not NOT_PLAIN:
            return document, [], {}
        return _read_full(text)


def read_full(text: str) -> tuple[Any, list[tuple[int, int, str]]]:
    """Parse one document with the full loader; return it (or None) with located problems.

    It builds the node tree, refuses alias bombs and words every YAML problem.
    """
    document, problems, _ = _read_full(text)
    return document, problems


def _read_full(text: str) -> tuple[Any, list[tuple[int, int, str]], dict[tuple[int, int], str]]:
    loader = _RuleLoader(text)
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


def _describe_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a sequence"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _rules_from(document: LocatedMap, shown: str) -> Iterator[Rule]:
    """Turn a schema-valid document into rules (the schema guarantees the shapes)."""
    company = document["companyId"]
    default_configuration = document.get("configuration", DEFAULT_CONFIGURATION)
    rules: LocatedList = document.get("rules") or LocatedList(0, 0)
    for item, (line, col) in zip(rules, rules.item_marks, strict=True):
        # the item's own place in the list: an alias repeating a rule points at the alias
        key = RuleKey(company, item.get("configuration", default_configuration), item["event"])
        yield Rule(key, item["amount"], Source(shown, line, col), item.get("coinConfigId"))


def _duplicate_keys(rules: Sequence[Rule]) -> list[Problem]:
    first: dict[RuleKey, Rule] = {}
    problems: list[Problem] = []
    for rule in rules:
        earlier = first.setdefault(rule.key, rule)
        if earlier is rule:
            continue
        a, b = earlier.source, rule.source
        if a == b:  # the same rule mapping listed again through a YAML alias
            problems.append(
                Problem(
                    a.path,
                    a.line,
                    a.col,
                    f"duplicate rule {rule.key}: this rule is listed again through a YAML "
                    "alias (*name) of it",
                )
            )
            continue
        problems.append(
            Problem(b.path, b.line, b.col, f"duplicate rule {rule.key}; also defined at {a}")
        )
        problems.append(
            Problem(a.path, a.line, a.col, f"duplicate rule {rule.key}; also defined at {b}")
        )
    return problems


def _duplicate_ids(rules: Sequence[Rule]) -> list[Problem]:
    """Two rules that adopt one server config: each place names the other."""
    first: dict[str, Rule] = {}
    problems: list[Problem] = []
    for rule in rules:
        if rule.coin_config_id is None:
            continue
        earlier = first.setdefault(rule.coin_config_id, rule)
        if earlier is rule or earlier.key == rule.key:  # same key: _duplicate_keys says it
            continue
        a, b = earlier.source, rule.source
        for here, there, other in ((b, a, earlier), (a, b, rule)):
            problems.append(
                Problem(
                    here.path,
                    here.line,
                    here.col,
                    f"coinConfigId {rule.coin_config_id} is used twice: also by {other.key} "
                    f"at {there}; one server config can be only one rule",
                )
            )
    return problems
