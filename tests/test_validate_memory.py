"""``validate`` checks without keeping every rule (RuleLoader.check): the same problems
as a full load, in the same order, and the same counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from coins_sync.configs.loader import RuleLoader
from coins_sync.errors import ConfigError, Problem
from tests.conftest import Invoke, write

ACME = """\
companyId: ACME
rules:
  - event: MEAL
    amount: 5
  - &fuel
    event: FUEL
    amount: 7
    coinConfigId: WCC1
  - *fuel
"""
ACME_AGAIN = """\
companyId: ACME
rules:
  - event: MEAL
    amount: 6
  - event: TRAVEL
    amount: 1
    coinConfigId: WCC1
"""
BROKEN = """\
companyId: BETA
rules:
  - event: MEAL
    amount: six
"""
CLEAN = """\
companyId: GAMMA
rules:
  - event: MEAL
    amount: 2
  - event: FUEL
    amount: 3
    configuration: CUSTOM
"""


def problems_of(call: object) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        call()  # type: ignore[operator]
    return list(caught.value.problems)


def test_check_finds_what_load_finds_in_the_same_order(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    write(configs / "a.yaml", ACME)
    write(configs / "b.yaml", ACME_AGAIN)
    write(configs / "c.yaml", BROKEN)
    write(configs / "d.yaml", CLEAN)
    loader = RuleLoader(cwd=tmp_path)
    loaded = problems_of(lambda: loader.load([configs]))
    checked = problems_of(lambda: RuleLoader(cwd=tmp_path).check([configs]))
    assert checked == loaded
    messages = "\n".join(p.message for p in checked)
    assert "listed again through a YAML alias" in messages  # alias, same file
    assert "duplicate rule ACME/DEFAULT/MEAL; also defined at" in messages  # across files
    assert "coinConfigId WCC1 is used twice" in messages
    assert "must be a whole number" in messages


def test_check_counts_what_load_reads(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    write(configs / "d.yaml", CLEAN)
    write(configs / "e.yaml", CLEAN.replace("GAMMA", "DELTA"))
    loaded = RuleLoader(cwd=tmp_path).load([configs])
    assert RuleLoader(cwd=tmp_path).check([configs]) == (2, 4)
    assert (len(loaded.files), len(loaded.rules)) == (2, 4)


def test_validate_reports_duplicates_across_files(project: Path, invoke: Invoke) -> None:
    write(project / "configs" / "a.yaml", ACME)
    write(project / "configs" / "b.yaml", ACME_AGAIN)
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/b.yaml:3:5: duplicate rule ACME/DEFAULT/MEAL; also defined at" in (
        result.output
    )
