"""The compiled checker: a JSON Schema turned into one plain Python function.

It says only *whether* an instance is valid, tens of times faster than jsonschema, and
agrees with :func:`coins_sync.configs.schema.strict_validator` on every instance. It
knows a small set of keywords and raises :class:`UnsupportedSchema` for a schema that
uses any other, so a new constraint is never skipped: validation then simply stays on
jsonschema. It never imports jsonschema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

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
        "const",
        "if",
        "then",
        "else",
    }
)


def _is_number(value: object) -> bool:
    import numbers  # here: the rules schema has no "number", and validate starts faster

    return isinstance(value, numbers.Number) and not isinstance(value, bool)


# Exactly the type checker of strict_validator: "integer" admits no float and no bool.
_TYPES: dict[str, Check] = {
    "integer": lambda v: type(v) is int,
    "number": _is_number,
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


def _const(expected: Any) -> Check:
    """``const`` for a scalar: equal and of the same JSON type (``true`` is not ``1``)."""
    if isinstance(expected, dict | list | float):
        raise UnsupportedSchema("const: only strings, integers, booleans and null")
    kind = type(expected)
    return lambda v: type(v) is kind and v == expected


def _flag(schema: Any) -> tuple[str, bool] | None:
    """NAME and B when ``schema`` is ``{"required": [NAME], "properties": {NAME:
    {"const": B}}}`` with a boolean B (``retired: true``), else None."""
    if not isinstance(schema, Mapping) or set(schema) != {"required", "properties"}:
        return None
    required, properties = schema["required"], schema["properties"]
    if not isinstance(required, list) or len(required) != 1 or not isinstance(properties, Mapping):
        return None
    (name,) = required
    sub = properties.get(name)
    if set(properties) != {name} or not isinstance(sub, Mapping) or set(sub) != {"const"}:
        return None
    expected = sub["const"]
    return (name, expected) if isinstance(name, str) and isinstance(expected, bool) else None


def _required(schema: Any) -> list[str] | None:
    """The names when ``schema`` is ``{"required": [NAMES]}``, else None."""
    if not isinstance(schema, Mapping) or set(schema) != {"required"}:
        return None
    names = schema["required"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


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
        if "const" in schema:
            checks.append(_const(schema["const"]))
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
        if "if" in schema:  # last: after the type checks, the shapes it tests are known
            checks.append(self.conditional(schema, known_object=names == "object"))
        return _all_of(checks)

    def conditional(self, schema: Mapping[str, Any], known_object: bool = False) -> Check:
        """``if``/``then``/``else``: the instance must pass ``then`` when it passes
        ``if``, else ``else`` (an absent branch passes). ``known_object``: the type
        checks before this one let only objects through."""
        then = self.compile(schema.get("then", True))
        flag, required = _flag(schema["if"]), _required(schema.get("else", True))
        if known_object and flag is not None and required is not None and len(required) == 1:
            # the shape of `retired: true` (no amount) or an amount: one call per rule
            name, expected = flag
            (needed,) = required
            return lambda v: then(v) if v.get(name, _ABSENT) is expected else needed in v
        condition = self.compile(schema["if"])
        otherwise = self.compile(schema.get("else", True))
        return lambda v: then(v) if condition(v) else otherwise(v)

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
        needed = tuple(required)
        closed = extra is False

        by_name = dict(fields)

        def check_closed(v: Any) -> bool:
            # every key must be a known property: walk the instance's keys, usually
            # fewer than the properties a schema offers
            for name in needed:
                if name not in v:
                    return False
            for name, value in v.items():
                check = by_name.get(name)
                if check is None or not check(value):
                    return False
            return True

        def check_object(v: Any) -> bool:
            for name in needed:
                if name not in v:
                    return False
            for name, check in fields:
                value = v.get(name, _ABSENT)
                if value is not _ABSENT and not check(value):
                    return False
            return True

        return check_closed if closed else check_object

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
