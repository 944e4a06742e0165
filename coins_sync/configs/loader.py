"""Reading rule files: discovery, located YAML, schema checks and semantic checks.

What is promised:

* Every rule file under the given paths is read (see :mod:`coins_sync.configs.discovery`).
* Every problem in every file is reported at once as a :class:`Problem` with
  ``path:line:col``; nothing here raises for bad input except :class:`ConfigError`,
  which carries them all.
* A file in the plain subset of YAML is read by the fast event reader
  (:mod:`coins_sync.configs.events`), anything else by the full located reader
  (:mod:`coins_sync.configs.located`); both give the same document.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from coins_sync import defaults
from coins_sync.configs.discovery import discover, display_path
from coins_sync.configs.events import NOT_PLAIN, read_plain
from coins_sync.configs.located import TOO_LONG, LocatedList, LocatedMap, read_located
from coins_sync.configs.model import ConfigSet, Rule, RuleKey, Source
from coins_sync.configs.schema import RuleFileValidator
from coins_sync.errors import ConfigError, Problem
from coins_sync.gcpause import cyclic_gc_paused
from coins_sync.inputs import read_input

DEFAULT_CONFIGURATION = "DEFAULT"
_BOM = b"\xef\xbb\xbf"

# RuleKey's own order (a named tuple: compared in C).
_RULE_ORDER = operator.attrgetter("key")


class _FileResult:
    """One file's rules and problems (a plain class: a dataclass costs start-up time)."""

    __slots__ = ("problems", "rules")

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.problems: list[Problem] = []


class RuleLoader:
    """Loads and checks rule files. Construct once; ``load`` may be called many times."""

    def __init__(
        self,
        *,
        max_amount: int = defaults.MAX_AMOUNT,
        max_file_bytes: int = defaults.MAX_FILE_BYTES,
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

    def check(self, paths: Sequence[Path]) -> tuple[int, int]:
        """What ``validate`` needs: the same problems as :meth:`load` (in the same
        order), or the number of files and of rules. Memory stays flat in the number of
        rules: each file's rules are dropped once counted, and only a hash of each key
        (and each coinConfigId) is kept. Where a hash repeats, a second pass reads the
        rules with those hashes again and words the duplicates exactly as ``load``."""
        with cyclic_gc_paused():
            return self._check(paths)

    def _check(self, paths: Sequence[Path]) -> tuple[int, int]:
        files, problems = discover(paths)
        keys: set[int] = set()
        ids: set[str] = set()
        twice_keys: set[int] = set()
        twice_ids: set[str] = set()
        olds: set[RuleKey] = set()  # the keys rules say they moved from (few)
        count = 0
        for path in files:
            result = self._load_file(path, display_path(path, self.cwd), None)
            problems.extend(result.problems)
            count += len(result.rules)
            for rule in result.rules:
                if rule.moved_from is not None:
                    olds.add(rule.moved_from)
                hashed = hash(rule.key)
                if hashed in keys:
                    twice_keys.add(hashed)
                keys.add(hashed)
                if rule.coin_config_id is not None:
                    if rule.coin_config_id in ids:
                        twice_ids.add(rule.coin_config_id)
                    ids.add(rule.coin_config_id)
        del keys, ids
        if twice_keys or twice_ids:  # read those rules again, in the same order
            suspects: list[Rule] = []
            for path in files:
                result = self._load_file(path, display_path(path, self.cwd), None)
                suspects.extend(
                    rule
                    for rule in result.rules
                    if hash(rule.key) in twice_keys or rule.coin_config_id in twice_ids
                )
            problems.extend(_duplicate_keys(suspects))
            problems.extend(_duplicate_ids(suspects))
        if olds:  # the moving rules and the rules at their old keys, in the same order
            moving: list[Rule] = []
            for path in files:
                result = self._load_file(path, display_path(path, self.cwd), None)
                moving.extend(
                    rule for rule in result.rules if rule.moved_from is not None or rule.key in olds
                )
            problems.extend(_move_problems(moving))
        if problems:
            raise ConfigError(problems)
        return len(files), count

    def _load(self, paths: Sequence[Path]) -> ConfigSet:
        import hashlib  # here: validate (check) needs no digest and starts faster

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
        problems.extend(_move_problems(rules))
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
            raw = read_input(path, self.max_file_bytes)
        except OSError as e:
            return fail(1, 1, f"cannot read file: {e.strerror or e}")
        if digest is not None:  # check() needs none
            import hashlib  # imported already by _load; a dictionary look-up here

            digest.update(shown.encode("utf-8", "surrogateescape") + b"\0")
            digest.update(hashlib.sha256(raw).digest())
        # UTF-8 after one optional BOM, as the utf-8-sig codec reads it (not imported:
        # start-up); the place of a bad byte counts from the start of the file
        bom = len(_BOM) if raw.startswith(_BOM) else 0
        try:
            text = (raw[bom:] if bom else raw).decode("utf-8")
        except UnicodeDecodeError as e:
            at = bom + e.start
            line = raw.count(b"\n", 0, at) + 1
            col = at - max(raw.rfind(b"\n", 0, at) + 1, bom) + 1  # the BOM is no column
            return fail(line, col, f"not valid UTF-8 (byte 0x{raw[at]:02x})")
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
        too_long = {(line, col) for line, col, message in located if TOO_LONG in message}
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
        return read_located(text)


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
        moved = item.get("movedFrom")
        retired = item.get("retired") is True
        yield Rule(
            key,
            0 if retired else item["amount"],
            Source(shown, line, col),
            item.get("coinConfigId"),
            RuleKey.parse(moved) if moved is not None else None,
            retired,
        )


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


def _move_problems(rules: Sequence[Rule]) -> list[Problem]:
    """``movedFrom`` that cannot be a rename: onto itself, from a key still defined as a
    rule (a swap is named as one), or one old key claimed by two rules."""
    defined = {rule.key: rule for rule in rules}
    claimed: dict[RuleKey, Rule] = {}
    problems: list[Problem] = []

    def at(rule: Rule, message: str) -> None:
        problems.append(Problem(rule.source.path, rule.source.line, rule.source.col, message))

    for rule in rules:
        old = rule.moved_from
        if old is None:
            continue
        if old == rule.key:
            at(rule, f"movedFrom {old} is this rule's own key; remove movedFrom")
            continue
        other = defined.get(old)
        if other is not None and other.moved_from == rule.key:
            at(
                rule,
                f"{rule.key} and {old} are moved into each other (a swap) at {rule.source} "
                f"and {other.source}; coins-sync does not swap keys in one apply. Move one "
                "of them to a temporary key first, apply, then move the other",
            )
        elif other is not None:
            at(
                rule,
                f"movedFrom {old}, but {old} is still defined as a rule at {other.source}: "
                "a key cannot be both moved away and kept. Remove that rule, or remove "
                "movedFrom here",
            )
        earlier = claimed.setdefault(old, rule)
        if earlier is not rule:
            for here, there in ((rule, earlier), (earlier, rule)):
                at(
                    here,
                    f"movedFrom {old} is also claimed by {there.key} at {there.source}; one "
                    "config can move to only one key",
                )
    return problems
