"""One place for defaults: every reader of a safety setting agrees with ``coins_sync.defaults``."""

from __future__ import annotations

from pathlib import Path

from coins_sync import defaults
from coins_sync.configs.loader import RuleLoader
from coins_sync.configs.schema import RULES_SCHEMA, RuleFileValidator, load_schema, rules_schema
from coins_sync.settings import Settings, load_settings
from tests.conftest import Invoke, write


def _amount_schema(schema: dict[str, object]) -> dict[str, object]:
    amount = schema["$defs"]["rule"]["properties"]["amount"]  # type: ignore[index]
    assert isinstance(amount, dict)
    return amount


def test_shipped_schema_maximum_is_the_default_max_amount() -> None:
    amount = _amount_schema(load_schema(RULES_SCHEMA))
    assert amount["maximum"] == defaults.MAX_AMOUNT
    assert f"{defaults.MAX_AMOUNT} by default" in str(amount["description"])
    assert _amount_schema(rules_schema())["maximum"] == defaults.MAX_AMOUNT


def test_settings_left_out_take_the_shared_defaults(tmp_path: Path) -> None:
    write(
        tmp_path / "pyproject.toml",
        '[tool.coins-sync]\n[tool.coins-sync.environments.sandbox]\nstate = "state/s.json"\n',
    )
    for settings in (Settings(), load_settings(tmp_path, "sandbox")):
        assert settings.max_amount == defaults.MAX_AMOUNT
        assert settings.max_file_bytes == defaults.MAX_FILE_BYTES
        assert settings.update_threshold == defaults.UPDATE_THRESHOLD
        assert settings.update_threshold_min_entries == defaults.UPDATE_THRESHOLD_MIN_ENTRIES
        assert settings.parallelism == defaults.PARALLELISM


def test_loader_and_validator_default_to_the_shared_limits() -> None:
    loader = RuleLoader()
    assert loader.max_amount == defaults.MAX_AMOUNT
    assert loader.max_file_bytes == defaults.MAX_FILE_BYTES
    assert RuleFileValidator().max_amount == defaults.MAX_AMOUNT


def test_validate_without_a_max_amount_setting_refuses_one_above_the_default(
    project: Path, invoke: Invoke
) -> None:
    rule = "companyId: ACME\nrules:\n  - event: E\n    amount: {}\n"
    write(project / "configs" / "a.yaml", rule.format(defaults.MAX_AMOUNT))
    assert invoke("validate").exit_code == 0
    write(project / "configs" / "a.yaml", rule.format(defaults.MAX_AMOUNT + 1))
    result = invoke("validate")
    assert result.exit_code == 1
    assert f"above the maximum of {defaults.MAX_AMOUNT}" in result.output
    assert "a.yaml:4" in result.output
