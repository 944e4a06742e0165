"""The shipped JSON Schemas, and schema validation that points at the offending value.

The schema files in ``coins_sync/schemas/`` are the single source of truth for the
shape of a rule file and of a saved plan; ``schemas/`` at the top of the repository
links to them for editors and reviewers.

Rule files are first checked by a function compiled from the same schema
(:mod:`coins_sync.configs.checker`), which is tens of times faster than jsonschema;
jsonschema is imported and run only on a file that check refuses, to find and word
every problem.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coins_sync import defaults
from coins_sync.configs.checker import Check, UnsupportedSchema, compile_checker
from coins_sync.configs.model import IDENTIFIER_RULE

if TYPE_CHECKING:  # jsonschema is imported only to word the problems of a refused file
    from jsonschema.exceptions import ValidationError
    from jsonschema.protocols import Validator

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


def rules_schema(max_amount: int = defaults.MAX_AMOUNT) -> dict[str, Any]:
    """The shipped rules schema with ``max_amount`` as the maximum of ``amount``."""
    schema = copy.deepcopy(load_schema(RULES_SCHEMA))
    schema["$defs"]["rule"]["properties"]["amount"]["maximum"] = max_amount
    return schema


def strict_validator(schema: Mapping[str, Any]) -> Validator:
    """The jsonschema validator (draft 2020-12, true integers) that words the problems."""
    validator: Validator = _strict_validator_class()(schema)
    return validator


class RuleFileValidator:
    """Validates one parsed rule file against the shipped rules schema.

    ``max_amount`` replaces the schema's default maximum for ``amount``, so the
    setting and the schema never disagree.
    """

    def __init__(self, max_amount: int = defaults.MAX_AMOUNT) -> None:
        schema = rules_schema(max_amount)
        self.max_amount = max_amount
        self._schema = schema
        self._validator: Validator | None = None  # built on the first refused file
        self._fast: Check | None
        try:
            self._fast = compile_checker(schema)
        except UnsupportedSchema as e:  # correct, only slower
            import logging  # here: validate imports no logging (see console.setup_logging)

            logging.getLogger(__name__).debug("rule files are checked by jsonschema alone: %s", e)
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
        if error.schema is False and isinstance(node, dict):
            # jsonschema reports a field that a false schema forbids at the object that
            # holds it (without the field's name): find the field by its value
            named = [k for k, v in node.items() if v is error.instance]
            if named:
                path.append(named[0])
                parent, node = node, node[named[0]]
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
            yield line, col, f"{field or 'file'}: {self._wording(error, path)}"
        elif error.validator == "type":
            expected = error.validator_value
            words = _TYPE_WORDS.get(str(expected), str(expected))
            quote = f"; quote it ('{spelling}')" if expected == "string" else ""
            read = _yaml11(spelling, node)
            yield line, col, f"{read}, but {field} must be {words}{quote}"
        else:
            yield line, col, f"{_yaml11(spelling, node)}; {field}: {self._wording(error, path)}"

    def _wording(self, error: ValidationError, path: list[Any]) -> str:
        value = error.instance
        if error.validator == "type":
            expected = error.validator_value
            words = _TYPE_WORDS.get(str(expected), str(expected))
            return f"must be {words}, got {describe_value(value)}"
        if error.validator == "maximum":
            return f"{value} is above the maximum of {error.validator_value} (max_amount)"
        if error.validator == "minimum":
            return f"{value} is below the minimum of {error.validator_value}"
        last = path[-1:]
        if error.schema is False and last == ["amount"]:
            return (
                "a retired rule has no amount (apply keeps it at 0 on the server); remove "
                "amount, or remove retired: true to keep paying"
            )
        if error.schema is False and last == ["movedFrom"]:
            return (
                "a retired rule cannot be moved in the same change; apply the move first, "
                "then retire the rule"
            )
        if error.validator == "pattern" and last == ["movedFrom"]:
            return (
                f"{value!r} is not a key COMPANY/CONFIGURATION/EVENT (each part 1-64 "
                "letters, digits, '_', '.' or '-', starting with a letter or digit)"
            )
        if error.validator == "pattern" and last == ["coinConfigId"]:
            return f"{value!r} is not a valid coinConfigId (1-64 letters, digits, '_' or '-')"
        if error.validator == "pattern":
            return f"{value!r} is not a valid identifier ({IDENTIFIER_RULE})"
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
