"""The shipped JSON Schemas, and schema validation that points at the offending value.

The schema files in ``coins_sync/schemas/`` are the single source of truth for the
shape of a rule file and of a saved plan; ``schemas/`` at the top of the repository
links to them for editors and reviewers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

RULES_SCHEMA = "rules.schema.json"
PLAN_SCHEMA = "plan.schema.json"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Read a shipped schema by file name (works from an installed wheel too)."""
    text = resources.files("coins_sync").joinpath("schemas", name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _is_true_integer(_checker: object, instance: object) -> bool:
    # JSON Schema counts 6.0 as an integer and jsonschema excludes only bools;
    # coin amounts must be written as whole numbers, so floats never pass.
    return type(instance) is int


_TYPE_CHECKER = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_true_integer)
_StrictValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator, type_checker=_TYPE_CHECKER
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


class RuleFileValidator:
    """Validates one parsed rule file against the shipped rules schema.

    ``max_amount`` replaces the schema's default maximum for ``amount``, so the
    setting and the schema never disagree.
    """

    def __init__(self, max_amount: int = 10_000) -> None:
        schema = copy.deepcopy(load_schema(RULES_SCHEMA))
        schema["$defs"]["rule"]["properties"]["amount"]["maximum"] = max_amount
        self.max_amount = max_amount
        self._validator = _StrictValidator(schema)

    def problems(self, document: Any) -> list[tuple[int, int, str]]:
        """Every schema problem in ``document`` as ``(line, col, message)``, sorted."""
        found: list[tuple[int, int, str]] = []
        for error in self._validator.iter_errors(document):
            found.extend(self._locate(document, error))
        return sorted(set(found))

    def _locate(self, document: Any, error: ValidationError) -> Iterator[tuple[int, int, str]]:
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
                yield kline, kcol, f"{where}unknown field {key!r} (allowed: {hint})"
            return
        if error.validator == "required" and isinstance(node, dict):
            missing = [k for k in schema.get("required", []) if k not in node]
            where = f"{field}: " if field else ""
            for key in missing:
                yield line, col, f"{where}missing required field {key!r}"
            return
        yield line, col, f"{field or 'file'}: {self._wording(error)}"

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
        if error.validator == "pattern":
            return (
                f"{value!r} is not a valid identifier (1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit)"
            )
        return str(error.message)


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
