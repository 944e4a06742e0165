"""The shipped JSON Schemas, and schema validation that points at the offending value.

The schema files in ``coins_sync/schemas/`` are the single source of truth for the
shape of a rule file and of a saved plan; ``schemas/`` at the top of the repository
links to them for editors and reviewers.

Rule files are first checked by a function compiled from the same schema
(:func:`compile_checker`), which is tens of times faster than jsonschema; jsonschema
runs only on a file that check refuses, to find and word every problem. The compiler
knows a small set of keywords and refuses a schema that uses any other, so a new
constraint is never skipped: validation then simply stays on jsonschema.
"""

from __future__ import annotations

import copy
import json
import logging
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema is imported only to word the problems of a refused file
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

log = logging.getLogger(__name__)

RULES_SCHEMA = "rules.schema.json"
PLAN_SCHEMA = "plan.schema.json"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Read a shipped schema by file name (works from an installed wheel too)."""
    try:  # the package is a folder on disk, nearly always
        text = (Path(__file__).parent.parent / "schemas" / name).read_text("utf-8")
    except OSError:  # zipped, or a loader without files: importlib.resources is slow to import
        from importlib import resources

        text = resources.files("coins_sync").joinpath("schemas", name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is_true_integer(_checker: object, instance: object) -> bool:
    # JSON Schema counts 6.0 as an integer and jsonschema excludes only bools;
    # coin amounts must be written as whole numbers, so floats never pass.
    return type(instance) is int


@cache
def _strict_validator_class() -> Any:
    """Draft 2020-12 with true integers (built on first use: importing jsonschema is slow)."""
    import jsonschema

    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_true_integer)
    return jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        jsonschema.Draft202012Validator, type_checker=checker
    )


_TYPE_WORDS = {
    "integer": "a whole number",
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "number": "a number",
    "boolean": "a boolean",
}


def describe_value(value: Any) -> str:
    """How a YAML value reads in a message: its YAML type and its text."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def rules_schema(max_amount: int = 10_000) -> dict[str, Any]:
    """The shipped rules schema with ``max_amount`` as the maximum of ``amount``."""
    schema = copy.deepcopy(load_schema(RULES_SCHEMA))
    schema["$defs"]["rule"]["properties"]["amount"]["maximum"] = max_amount
    return schema


def strict_validator(schema: Mapping[str, Any]) -> Validator:
    """The jsonschema validator (draft 2020-12, true integers) that words the problems."""
    validator: Validator = _strict_validator_class()(schema)
    return validator


# --- the compiled checker -----------------------------------------------------------

Check = Callable[[Any], bool]


class UnsupportedSchema(Exception):
    """The schema uses a keyword or reference the compiled checker does not know.

    Internal: :class:`RuleFileValidator` catches it and validates with jsonschema alone.
    """


# Keywords that never change whether an instance is valid.
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
)
_KEYWORDS = frozenset(
    {
        "$ref",
        "type",
        "pattern",
        "minimum",
        "maximum",
        "properties",
        "required",
        "additionalProperties",
        "items",
    }
)
# Exactly the type checker of strict_validator: "integer" admits no float and no bool.
_TYPES: dict[str, Check] = {
    "integer": lambda v: type(v) is int,
    "number": lambda v: isinstance(v, numbers.Number) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


_ABSENT: Any = object()


def _accept(_value: Any) -> bool:
    return True


def _reject(_value: Any) -> bool:
    return False


def _all_of(checks: list[Check]) -> Check:
    """One check that passes when every one of ``checks`` passes (in order)."""
    if not checks:
        return _accept
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    if len(checks) == 3:
        first, second, third = checks
        return lambda v: first(v) and second(v) and third(v)

    return lambda v: all(check(v) for check in checks)


def _only_for(kind: Check, check: Check) -> Check:
    """``check`` for instances of ``kind``; anything else passes."""
    return lambda v: not kind(v) or check(v)


def compile_checker(schema: Mapping[str, Any]) -> Check:
    """A function that says whether an instance is valid under ``schema``.

    It agrees with :func:`strict_validator` (draft 2020-12, true integers) on every
    instance, and raises UnsupportedSchema for a schema it cannot promise that for.
    """
    return _Compiler(schema).compile(schema)


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, Check] = {}
        self.resolving: set[str] = set()

    def compile(self, schema: Any) -> Check:
        if schema is True:
            return _accept
        if schema is False:
            return _reject
        if not isinstance(schema, Mapping):
            raise UnsupportedSchema(f"a schema must be an object or a boolean: {schema!r}")
        unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
        if unknown:
            raise UnsupportedSchema(f"keywords {sorted(unknown)}")
        if "$id" in schema and schema is not self.root:
            raise UnsupportedSchema("$id below the root moves where references point")
        # Each keyword below applies to one kind of instance and passes any other kind.
        by_kind: dict[str, list[Check]] = {"string": [], "number": [], "object": [], "array": []}
        if "pattern" in schema:
            search = re.compile(schema["pattern"]).search
            by_kind["string"].append(lambda v: search(v) is not None)
        if "minimum" in schema:
            low = schema["minimum"]
            by_kind["number"].append(lambda v: not v < low)
        if "maximum" in schema:
            high = schema["maximum"]
            by_kind["number"].append(lambda v: not v > high)
        if {"properties", "required", "additionalProperties"} & set(schema):
            by_kind["object"].append(self.object(schema))
        if "items" in schema:
            item = self.compile(schema["items"])
            by_kind["array"].append(lambda v: all(map(item, v)))
        checks: list[Check] = []
        if "$ref" in schema:
            checks.append(self.ref(schema["$ref"]))
        names = schema.get("type")
        if isinstance(names, str) and names in _TYPES:
            # One type: check it first, then only what applies to that kind.
            kind = "number" if names == "integer" else names
            checks.append(_all_of([_TYPES[names], *by_kind.get(kind, [])]))
        else:
            if names is not None:
                checks.append(self.type(names))
            for kind, kind_checks in by_kind.items():
                if kind_checks:
                    checks.append(_only_for(_TYPES[kind], _all_of(kind_checks)))
        return _all_of(checks)

    def type(self, expected: Any) -> Check:
        names = [expected] if isinstance(expected, str) else expected
        if not isinstance(names, list) or not all(n in _TYPES for n in names):
            raise UnsupportedSchema(f"type {expected!r}")
        checks = [_TYPES[n] for n in names]
        if len(checks) == 1:
            return checks[0]
        return lambda v: any(check(v) for check in checks)

    def object(self, schema: Mapping[str, Any]) -> Check:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(properties, Mapping) or not isinstance(required, list):
            raise UnsupportedSchema("properties must be an object and required a list")
        if not isinstance(extra, bool):
            raise UnsupportedSchema("additionalProperties must be true or false")
        fields = [(name, self.compile(sub)) for name, sub in properties.items()]
        known = frozenset(properties)
        needed = tuple(required)
        closed = extra is False

        def check_object(v: Any) -> bool:
            for name in needed:
                if name not in v:
                    return False
            if closed:
                for name in v:
                    if name not in known:
                        return False
            for name, check in fields:
                value = v.get(name, _ABSENT)
                if value is not _ABSENT and not check(value):
                    return False
            return True

        return check_object

    def ref(self, ref: Any) -> Check:
        if not isinstance(ref, str) or not ref.startswith("#") or "%" in ref:
            raise UnsupportedSchema(f"$ref {ref!r}: only references inside the schema")
        compiled = self.refs.get(ref)
        if compiled is not None:
            return compiled
        if ref in self.resolving:
            raise UnsupportedSchema(f"$ref {ref!r} is recursive")
        self.resolving.add(ref)
        target: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or part not in target:
                raise UnsupportedSchema(f"$ref {ref!r} points nowhere")
            target = target[part]
        compiled = self.refs[ref] = self.compile(target)
        self.resolving.discard(ref)
        return compiled


# --- rule files ---------------------------------------------------------------------


class RuleFileValidator:
    """Validates one parsed rule file against the shipped rules schema.

    ``max_amount`` replaces the schema's default maximum for ``amount``, so the
    setting and the schema never disagree.
    """

    def __init__(self, max_amount: int = 10_000) -> None:
        schema = rules_schema(max_amount)
        self.max_amount = max_amount
        self._schema = schema
        self._validator: Validator | None = None  # built on the first refused file
        self._fast: Check | None
        try:
            self._fast = compile_checker(schema)
        except UnsupportedSchema as e:  # correct, only slower
            log.debug("rule files are checked by jsonschema alone: %s", e)
            self._fast = None

    def problems(
        self, document: Any, spelled: Mapping[tuple[int, int], str] | None = None
    ) -> list[tuple[int, int, str]]:
        """Every schema problem in ``document`` as ``(line, col, message)``, sorted.

        ``spelled`` maps the ``(line, col)`` of a value that YAML 1.1 read as something
        other than a string (``yes``, ``0x10``) to the text written there; a problem at
        such a place names that text, so that one message says all there is to say.
        """
        if self._fast is not None and self._fast(document):
            return []
        if self._validator is None:
            self._validator = strict_validator(self._schema)
        errors = list(self._validator.iter_errors(document))
        # A value of the wrong type has nothing more to fix: "must be a whole number, got
        # the float inf" says it all, so its range is not reported at the same place too.
        mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
        found: list[tuple[int, int, str]] = []
        for error in errors:
            if error.validator != "type" and tuple(error.absolute_path) in mistyped:
                continue
            found.extend(self._locate(document, error, spelled or {}))
        return sorted(set(found))

    def _locate(
        self, document: Any, error: ValidationError, spelled: Mapping[tuple[int, int], str]
    ) -> Iterator[tuple[int, int, str]]:
        path = list(error.absolute_path)
        parent: Any = None
        node: Any = document
        for part in path:
            parent, node = node, node[part]
        field = _field_name(path)
        line, col = _value_mark(document, parent, path)
        schema = error.schema if isinstance(error.schema, dict) else {}
        if error.validator == "additionalProperties" and isinstance(node, dict):
            allowed = set(schema.get("properties", {}))
            for key in node:
                if key in allowed:
                    continue
                kline, kcol = getattr(node, "key_marks", {}).get(key, (line, col))
                where = f"{field}: " if field else ""
                hint = ", ".join(sorted(allowed))
                spelling = spelled.get((kline, kcol))
                if spelling is not None:  # `yes: 1` is the key True
                    hint = f"{_yaml11(spelling, key)}; allowed: {hint}"
                    key = spelling
                else:
                    hint = f"allowed: {hint}"
                yield kline, kcol, f"{where}unknown field {key!r} ({hint})"
            return
        if error.validator == "required" and isinstance(node, dict):
            missing = [k for k in schema.get("required", []) if k not in node]
            where = f"{field}: " if field else ""
            for key in missing:
                yield line, col, f"{where}missing required field {key!r}"
            return
        spelling = spelled.get((line, col))
        if spelling is None:
            yield line, col, f"{field or 'file'}: {self._wording(error)}"
        elif error.validator == "type":
            expected = error.validator_value
            words = _TYPE_WORDS.get(str(expected), str(expected))
            quote = f"; quote it ('{spelling}')" if expected == "string" else ""
            read = _yaml11(spelling, node)
            yield line, col, f"{read}, but {field} must be {words}{quote}"
        else:
            yield line, col, f"{_yaml11(spelling, node)}; {field}: {self._wording(error)}"

    def _wording(self, error: ValidationError) -> str:
        value = error.instance
        if error.validator == "type":
            expected = error.validator_value
            words = _TYPE_WORDS.get(str(expected), str(expected))
            return f"must be {words}, got {describe_value(value)}"
        if error.validator == "maximum":
            return f"{value} is above the maximum of {error.validator_value} (max_amount)"
        if error.validator == "minimum":
            return f"{value} is below the minimum of {error.validator_value}"
        if error.validator == "pattern" and list(error.absolute_path)[-1:] == ["coinConfigId"]:
            return f"{value!r} is not a valid coinConfigId (1-64 letters, digits, '_' or '-')"
        if error.validator == "pattern":
            return (
                f"{value!r} is not a valid identifier (1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit)"
            )
        return str(error.message)


def _yaml11(spelling: str, value: Any) -> str:
    """A value as written and as YAML 1.1 read it."""
    return f"{spelling!r} is read by YAML 1.1 as {describe_value(value)}"


def _field_name(path: list[Any]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _value_mark(document: Any, parent: Any, path: list[Any]) -> tuple[int, int]:
    """The line and column where the value at ``path`` was written."""
    if not path or parent is None:
        return getattr(document, "line", 1), getattr(document, "col", 1)
    last = path[-1]
    if isinstance(last, int):
        marks = getattr(parent, "item_marks", None)
        if marks is not None and last < len(marks):
            mark: tuple[int, int] = marks[last]
            return mark
    else:
        value_marks = getattr(parent, "value_marks", None)
        if value_marks is not None and last in value_marks:
            found: tuple[int, int] = value_marks[last]
            return found
    return getattr(parent, "line", 1), getattr(parent, "col", 1)
