"""Issue 23 item 1: `coins-sync init` and `coins-sync schema` in a new rules repository."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, Invoke, write

PACKAGED = REPO / "coins_sync" / "schemas"


def test_init_in_an_empty_folder_writes_a_project_that_validates_and_plans(
    tmp_path: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "rewards"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert invoke("validate").exit_code == 1  # before: "configs:0:0: no such file or folder"
    result = invoke("init")
    assert result.exit_code == 0, result.output
    settings = tomllib.loads((empty / "pyproject.toml").read_text())["tool"]["coins-sync"]
    assert settings["configs"] == "configs"
    example = (empty / "configs" / "example.yaml").read_text()
    first = example.splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/rules.schema.json"
    # the modeline points at a file that exists, relative to the rule file
    target = (empty / "configs" / first.split("=", 1)[1]).resolve()
    assert target.read_text() == (PACKAGED / "rules.schema.json").read_text()
    assert sum(1 for line in example.splitlines() if line.lstrip().startswith("#")) >= 5
    jsonschema.validate(yaml.safe_load(example), json.loads(target.read_text()))
    assert invoke("validate").output == "valid: 1 rule in 1 file\n"
    plan = invoke("plan")
    assert plan.exit_code == 0, plan.output
    assert "+ EXAMPLECO/DEFAULT/MEAL_CARD_PAYMENT" in plan.output


def test_init_adds_a_section_to_an_existing_pyproject(project: Path, invoke: Invoke) -> None:
    original = '[project]\nname = "rules"\nversion = "1"\n'
    write(project / "pyproject.toml", original)
    result = invoke("init")
    assert result.exit_code == 0, result.output
    text = (project / "pyproject.toml").read_text()
    assert text.startswith(original)
    data = tomllib.loads(text)
    assert data["project"]["name"] == "rules"
    assert data["tool"]["coins-sync"]["default_environment"] == "sandbox"


def test_init_refuses_to_overwrite_anything(project: Path, invoke: Invoke) -> None:
    write(project / "pyproject.toml", "[tool.coins-sync]\nconfigs = 'rules'\n")
    result = invoke("init")
    assert result.exit_code == 1
    assert "already has a [tool.coins-sync] section; nothing written" in result.output
    assert not (project / "configs" / "example.yaml").exists()
    assert not (project / "schemas").exists()

    (project / "pyproject.toml").unlink()
    write(project / "configs" / "example.yaml", "mine\n")
    result = invoke("init")
    assert result.exit_code == 1
    assert "example.yaml already exist(s); nothing written" in result.output
    assert (project / "configs" / "example.yaml").read_text() == "mine\n"
    assert not (project / "pyproject.toml").exists()


def test_schema_prints_each_packaged_schema(invoke: Invoke) -> None:
    for name, file in (
        ("rules", "rules.schema.json"),
        ("plan", "plan.schema.json"),
        ("apply-report", "apply-report.schema.json"),
    ):
        result = invoke("schema", name)
        assert result.exit_code == 0
        assert result.output == (PACKAGED / file).read_text()
    assert invoke("schema").output == (PACKAGED / "rules.schema.json").read_text()
    assert invoke("schema", "nope").exit_code == 1


def test_schema_write_puts_it_where_the_modelines_point(project: Path, invoke: Invoke) -> None:
    write(project / "pyproject.toml", "[tool.coins-sync]\nconfigs = 'rules'\n")
    write(
        project / "rules" / "team" / "acme.yaml",
        "# yaml-language-server: $schema=../../editor/rules.json\ncompanyId: ACME\nrules: []\n",
    )
    result = invoke("schema", "--write")
    assert result.exit_code == 0, result.output
    written = project / "editor" / "rules.json"
    assert written.read_text() == (PACKAGED / "rules.schema.json").read_text()
    assert not (project / "schemas").exists()


def test_schema_write_without_modelines_uses_schemas_at_the_root(
    project: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(project / "pyproject.toml", "[tool.coins-sync]\n")
    write(project / "configs" / "acme.yaml", "companyId: ACME\nrules: []\n")
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")
    assert invoke("schema", "plan", "--write").exit_code == 0
    assert (project / "schemas" / "plan.schema.json").read_text() == (
        PACKAGED / "plan.schema.json"
    ).read_text()


def test_the_repository_schemas_are_the_packaged_ones() -> None:
    """schemas/ at the top level is the repository's copy (for modelines and links);
    the wheel ships coins_sync/schemas. They must never differ."""
    top = {p.name: p.read_bytes() for p in (REPO / "schemas").glob("*.json")}
    packaged = {p.name: p.read_bytes() for p in PACKAGED.glob("*.json")}
    assert top == packaged
    assert set(top) >= {"rules.schema.json", "plan.schema.json", "apply-report.schema.json"}


def test_every_example_config_has_a_modeline_to_an_existing_schema() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        assert (path.parent / first.split("=", 1)[1]).is_file(), path
