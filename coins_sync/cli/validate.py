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
from coins_sync.errors import ConfigError, Problem
from coins_sync.settings import Settings, environment_names, load_settings


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@format_option("text", "json")
@env_option
@configs_option
@click.option(
    "--all-environments",
    "every_env",
    is_flag=True,
    help="Validate the configs folder of every environment (the pre-commit hook does).",
)
def validate(
    paths: tuple[Path, ...],
    fmt: str,
    env_name: str | None,
    configs: Path | None,
    every_env: bool,
) -> int:
    """Check rule files against the schema and each other. No state, no network.

    PATHS are files or folders (default: the environment's configs folder,
    `configs/`). Every problem is printed at once as `path:line:col: message`.

    \b
    Examples:
      coins-sync validate
      coins-sync validate configs/cekekcards.yaml --format json
      coins-sync validate --all-environments
    """
    if every_env and (paths or env_name or configs):
        raise click.UsageError("--all-environments takes no PATHS, --env or --configs")
    names = environment_names() if every_env else []
    every = [load_settings(env=name) for name in names]
    settings = every or [load_settings(env=env_name).with_overrides(configs=configs)]
    if console.verbosity():  # -v and -vv only: otherwise validate imports no logging
        _say_where(settings)
    folders: list[Path] = []
    for one in settings:  # a folder shared by several environments is read once
        if one.configs.resolve() not in {f.resolve() for f in folders}:
            folders.append(one.configs)
    loader = RuleLoader(
        max_amount=settings[0].max_amount, max_file_bytes=settings[0].max_file_bytes
    )
    problems: list[Problem] = []
    files = rules = 0
    for folder in folders:
        if every:  # each environment's own amount limit
            limit = max(s.max_amount for s in settings if s.configs.resolve() == folder.resolve())
            loader = RuleLoader(max_amount=limit, max_file_bytes=settings[0].max_file_bytes)
        try:
            found_files, found_rules = loader.check(list(paths) or [folder])
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        files, rules = files + found_files, rules + found_rules
    if problems:
        console.out(console.problems_report(problems, fmt))
        return EXIT_ERROR
    console.out(console.valid_report(files, rules, fmt))
    return EXIT_OK


def _say_where(settings: list[Settings]) -> None:
    import logging

    log = logging.getLogger("coins_sync.cli")
    log.info("project root: %s", settings[0].root.resolve())
    for one in settings:
        log.debug("environment %s: configs %s", one.env, one.configs)
