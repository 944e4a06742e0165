"""``validate``: the lightest command, and the one run most often (editors, hooks, CI).

It reads settings and rule files only: no state, no network, and none of the plan or
workspace modules, so it starts about as fast as its YAML and CLI libraries load.
"""

from __future__ import annotations

from pathlib import Path

import click

from coins_sync import console
from coins_sync.cli.app import EXIT_ERROR, EXIT_OK
from coins_sync.cli.options import configs_option, env_option, format_option
from coins_sync.configs.loader import RuleLoader
from coins_sync.errors import ConfigError
from coins_sync.settings import load_settings


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@format_option("text", "json")
@env_option
@configs_option
def validate(paths: tuple[Path, ...], fmt: str, env_name: str | None, configs: Path | None) -> int:
    """Check rule files against the schema and each other. No state, no network.

    PATHS are files or folders (default: the configs folder, `configs/`). Every
    problem is printed at once as `path:line:col: message`.

    \b
    Examples:
      coins-sync validate
      coins-sync validate configs/cekekcards.yaml --format json
    """
    settings = load_settings(env=env_name).with_overrides(configs=configs)
    loader = RuleLoader(max_amount=settings.max_amount, max_file_bytes=settings.max_file_bytes)
    try:
        config_set = loader.load(list(paths) or [settings.configs])
    except ConfigError as e:
        console.out(console.problems_report(e.problems, fmt))
        return EXIT_ERROR
    console.out(console.valid_report(len(config_set.files), len(config_set.rules), fmt))
    return EXIT_OK
