"""The ``coins-sync`` command line: a thin shell over the core modules.

Each command parses options, builds core objects and makes one core call. Only this
module turns errors into messages and exit codes: 0 success, 1 any error (usage
errors included), 2 "changes present" under ``--detailed-exitcode``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from coins_sync.errors import CoinsSyncError, ConfigError
from coins_sync.loader import ConfigSet, RuleLoader
from coins_sync.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_INTERRUPTED = 130

SECRET_VARIABLES = (
    "COINS_SYNC_TOKEN",
    "COINS_SYNC_CLIENT_SECRET",
    "COINS_SYNC_PASSWORD",
    "COINS_SYNC_COOKIE",
)


def scrub(text: str) -> str:
    """Replace any secret from the environment in ``text``; a last line of defence."""
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _report_error(error: CoinsSyncError) -> None:
    if isinstance(error, ConfigError):
        for problem in error.problems:
            click.echo(scrub(str(problem)), err=True)
    click.echo(scrub(f"Error: {error}"), err=True)


class CoinsGroup(click.Group):
    """A group whose every error exits 1 (click uses 2 for usage errors)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except CoinsSyncError as e:
            _report_error(e)
            code = EXIT_ERROR
        except click.ClickException as e:
            e.show()
            code = EXIT_ERROR
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            code = EXIT_ERROR
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def env_options(func: F) -> F:
    """The options every settings-aware command shares."""
    func = click.option("--api-url", metavar="URL", help="Override the environment's api_url.")(
        func
    )
    func = click.option(
        "--state",
        "state_path",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Override the environment's state file.",
    )(func)
    func = click.option(
        "--configs",
        type=click.Path(path_type=Path, file_okay=False),
        help="Override the configs folder.",
    )(func)
    func = click.option(
        "--env",
        "env_name",
        metavar="NAME",
        envvar="COINS_SYNC_ENV",
        help="Environment from [tool.coins-sync.environments] (env: COINS_SYNC_ENV).",
    )(func)
    return func


def resolve_settings(
    env_name: str | None,
    configs: Path | None,
    state_path: Path | None,
    api_url: str | None,
) -> Settings:
    return load_settings(env=env_name).with_overrides(
        configs=configs, state=state_path, api_url=api_url
    )


def load_configs(settings: Settings, paths: Sequence[Path] = ()) -> ConfigSet:
    loader = RuleLoader(max_amount=settings.max_amount, max_file_bytes=settings.max_file_bytes)
    return loader.load(list(paths) or [settings.configs])


@click.group(cls=CoinsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="coins-sync")
def cli() -> None:
    """Keep EnKash coin reward rules as code: validate, plan and apply.

    \b
    Example:
      coins-sync validate && coins-sync plan && coins-sync apply
    """


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option("--env", "env_name", metavar="NAME", envvar="COINS_SYNC_ENV", help="Environment.")
def validate(paths: tuple[Path, ...], fmt: str, env_name: str | None) -> int:
    """Check rule files against the schema and each other. No state, no network.

    PATHS are files or folders (default: the configs folder, `configs/`). Every
    problem is printed at once as `path:line:col: message`.

    \b
    Examples:
      coins-sync validate
      coins-sync validate configs/cekekcards.yaml --format json
    """
    settings = load_settings(env=env_name)
    try:
        config_set = load_configs(settings, paths)
    except ConfigError as e:
        problems = e.problems
        files = len({p.path for p in problems})
        if fmt == "json":
            click.echo(
                json.dumps(
                    {
                        "valid": False,
                        "problems": [
                            {"path": p.path, "line": p.line, "col": p.col, "message": p.message}
                            for p in problems
                        ],
                        "summary": {"problems": len(problems), "files_with_problems": files},
                    },
                    indent=2,
                )
            )
        else:
            for problem in problems:
                click.echo(scrub(str(problem)))
            plural = "s" if len(problems) != 1 else ""
            click.echo(f"invalid: {len(problems)} problem{plural} in {files} file(s)")
        return EXIT_ERROR
    count_files, count_rules = len(config_set.files), len(config_set.rules)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "valid": True,
                    "problems": [],
                    "summary": {"files": count_files, "rules": count_rules},
                },
                indent=2,
            )
        )
    else:
        click.echo(f"valid: {count_rules} rules in {count_files} files")
    return EXIT_OK


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="coins-sync")
