"""``coins-sync init`` and ``coins-sync schema``: a new rules repository's first steps.

``init`` writes the settings, one commented example rule file and the rules schema the
example's modeline points at, and refuses to overwrite anything. ``schema`` prints a
packaged schema, or with ``--write`` puts it where the rule files' modelines point, so
an editor's YAML language server finds it in any repository, not only in this one.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import click

from coins_sync import console
from coins_sync.cli.app import EXIT_OK
from coins_sync.cli.options import env_option
from coins_sync.errors import SettingsError

#: The packaged schemas by the name ``schema`` takes.
SCHEMAS = {
    "rules": "rules.schema.json",
    "plan": "plan.schema.json",
    "apply-report": "apply-report.schema.json",
}
#: Where init puts the schemas, relative to the project root.
SCHEMA_FOLDER = "schemas"
EXAMPLE_NAME = "example.yaml"
_MODELINE = re.compile(r"#\s*yaml-language-server:\s*\$schema=(\S+)")

SETTINGS = """\
[tool.coins-sync]
configs = "configs"                   # where the rule files live
default_environment = "sandbox"       # used when --env is not given

# `coins-sync sandbox` runs a stand-in of the EnKash API on this address.
[tool.coins-sync.environments.sandbox]
api_url = "http://127.0.0.1:8765"
state = "state/sandbox.json"

# Production: set api_url to your EnKash coins host, then remove the leading "# ".
# Secrets come from the environment only (COINS_SYNC_CLIENT_ID, COINS_SYNC_CLIENT_SECRET,
# COINS_SYNC_USERNAME, COINS_SYNC_PASSWORD), never from this file.
# [tool.coins-sync.environments.prod]
# api_url = "https://coins.example.com"
# state = "state/prod.json"
# encryption = "aes-128-ecb"          # when the server encrypts request bodies
"""

EXAMPLE = """\
# yaml-language-server: $schema=../schemas/rules.schema.json
# One company's coin rules; make one file like this per company (any name ending in
# .yaml). The line above lets an editor with the YAML language server check the file
# as you type (`coins-sync schema --write` refreshes the schema it points at).
#
# companyId and every event and configuration start with a letter or digit, then
# letters, digits, "_", "." or "-" (64 characters at most).
companyId: EXAMPLECO
# The configuration of every rule below unless a rule names its own (default: DEFAULT).
configuration: DEFAULT
rules:
  # An employee earns `amount` coins (a whole number, 0 to max_amount) per event.
  - event: MEAL_CARD_PAYMENT
    amount: 5
  # A rule that already exists on the server is adopted, not created a second time:
  # give its id as coinConfigId (see README "Adopting existing configs").
  # - event: TRAVEL_CARD_PAYMENT
  #   amount: 8
  #   coinConfigId: WCC817428
"""


def schema_text(name: str) -> str:
    """A packaged schema's text, exactly as shipped."""
    from importlib import resources

    return resources.files("coins_sync").joinpath("schemas", SCHEMAS[name]).read_text("utf-8")


@click.command()
@click.argument(
    "folder", required=False, default=".", type=click.Path(path_type=Path, file_okay=False)
)
def init(folder: Path) -> int:
    """Start a rules repository in FOLDER (default: here).

    Writes a [tool.coins-sync] section (into pyproject.toml, or a new one), configs/
    with one commented example, and schemas/rules.schema.json, which the example's
    modeline points at for editors. Refuses to overwrite anything that exists.

    \b
    Example:
      mkdir rewards && cd rewards && coins-sync init
      coins-sync sandbox &    # a stand-in API on 127.0.0.1:8765
      coins-sync plan && coins-sync apply
    """
    pyproject = folder / "pyproject.toml"
    example = folder / "configs" / EXAMPLE_NAME
    schema = folder / SCHEMA_FOLDER / SCHEMAS["rules"]
    existing = pyproject.read_text("utf-8") if pyproject.is_file() else None
    if existing is not None and _has_section(pyproject, existing):
        raise SettingsError(f"{pyproject} already has a [tool.coins-sync] section; nothing written")
    taken = [str(p) for p in (example, schema) if p.exists() or p.is_symlink()]
    if taken:
        raise SettingsError(f"{', '.join(taken)} already exist(s); nothing written")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in ((example, EXAMPLE), (schema, schema_text("rules"))):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as f:  # never overwrites, even in a race
            f.write(text)
    if existing is None:
        with pyproject.open("x", encoding="utf-8") as f:
            f.write(SETTINGS)
        settings_where = f"{pyproject} (new)"
    else:
        gap = "" if existing.endswith("\n\n") else "\n" if existing.endswith("\n") else "\n\n"
        with pyproject.open("a", encoding="utf-8") as f:
            f.write(gap + SETTINGS)
        settings_where = f"{pyproject} ([tool.coins-sync] added)"
    console.out(
        f"Wrote {settings_where}, {example} and {schema}.\n"
        "Next: edit the example, then `coins-sync validate` and `coins-sync plan`."
    )
    return EXIT_OK


def _has_section(path: Path, text: str) -> bool:
    try:
        tool = tomllib.loads(text).get("tool")
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: {e}; nothing written") from e
    return isinstance(tool, dict) and "coins-sync" in tool


@click.command("schema")
@click.argument("name", required=False, default="rules", type=click.Choice(list(SCHEMAS)))
@click.option(
    "--write",
    is_flag=True,
    help="Write it where the rule files' modelines point (default: schemas/ at the root).",
)
@env_option
def schema_command(name: str, write: bool, env_name: str | None) -> int:
    """Print a packaged JSON Schema: rules (default), plan or apply-report.

    The rule files' modeline (`# yaml-language-server: $schema=...`) lets an editor
    check them as you type; --write puts the schema where the modelines point, so
    the editor finds the schema of the coins-sync version you run.

    \b
    Examples:
      coins-sync schema > rules.schema.json
      coins-sync schema --write
      coins-sync schema plan
    """
    text = schema_text(name)
    if not write:
        click.echo(text, nl=False)
        return EXIT_OK
    from coins_sync.settings import load_settings

    settings = load_settings(env=env_name)
    targets = _modeline_targets(settings.configs) if name == "rules" else set()
    if not targets:
        targets = {settings.root.resolve() / SCHEMA_FOLDER / SCHEMAS[name]}
    from coins_sync.state.files import atomic_write

    for target in sorted(targets):
        atomic_write(target, text.encode("utf-8"))
        console.out(f"Wrote {os.path.relpath(target)}")
    return EXIT_OK


def _modeline_targets(configs: Path) -> set[Path]:
    """The local files the rule files' schema modelines point at (URLs are skipped)."""
    from coins_sync.configs.discovery import discover

    files, _ = discover([configs])
    targets: set[Path] = set()
    for path in files:
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                head = [f.readline() for _ in range(5)]
        except OSError:
            continue
        for line in head:
            match = _MODELINE.match(line.strip())
            if match and "://" not in match[1]:
                targets.add((path.parent / match[1]).resolve())
    return targets
