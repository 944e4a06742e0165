"""The shipped schema is itself valid, and the repository copy is the shipped one."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from coins_sync.configs.schema import RULES_SCHEMA, load_schema
from tests.conftest import REPO


def test_rules_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema(RULES_SCHEMA)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_repository_schema_is_the_shipped_schema() -> None:
    repo_copy = json.loads((REPO / "schemas" / RULES_SCHEMA).read_text("utf-8"))
    assert repo_copy == load_schema(RULES_SCHEMA)


def test_schema_rejects_unknown_keys_at_every_level() -> None:
    validator = Draft202012Validator(load_schema(RULES_SCHEMA))
    good = {"companyId": "A", "rules": [{"event": "E", "amount": 1}]}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "extra": 1})
    assert not validator.is_valid({"companyId": "A", "rules": [{"event": "E", "amout": 1}]})
    assert not validator.is_valid({"companyId": "A", "rules": [{"event": "E", "amount": 10001}]})


def test_example_configs_point_editors_at_the_schema() -> None:
    for path in (REPO / "configs").glob("*.yaml"):
        assert path.read_text("utf-8").startswith(
            "# yaml-language-server: $schema=../schemas/rules.schema.json"
        ), path
