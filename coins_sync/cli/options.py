"""The options commands share, and the decorator that turns them into a workspace.

Commands take typed parameters only: :func:`with_workspace` adds ``--env``,
``--configs``, ``--state`` and ``--api-url`` (and ``--lock-timeout`` when asked) and
hands the command a built :class:`~coins_sync.workspace.Workspace` instead.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from coins_sync import console, envvars
from coins_sync.configs.model import RuleKey
from coins_sync.errors import SettingsError
from coins_sync.settings import MAX_LOCK_TIMEOUT, Encryption, Settings, load_settings

if TYPE_CHECKING:  # validate loads no workspace, and an offline plan no API client
    from coins_sync.enkash import CoinsClient
    from coins_sync.workspace import Workspace

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

state_option = click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Override the environment's state file.",
)
env_option = click.option(
    "--env",
    "env_name",
    metavar="NAME",
    envvar=envvars.ENV,
    help="Environment from [tool.coins-sync.environments] (env: COINS_SYNC_ENV).",
)
configs_option = click.option(
    "--configs",
    type=click.Path(path_type=Path, file_okay=False),
    help="Override the configs folder.",
)
force_option = click.option(
    "--force",
    is_flag=True,
    help=(
        "Do not refuse a plan over the update threshold (apply: nor a new state "
        "while one of the same name exists elsewhere in the project)."
    ),
)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A wait as people write it: ``10s``, ``2m``, ``1h``, ``500ms``, or plain seconds.
    Raises ValueError for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 30, 10s, 2m or 1h")
    seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds > MAX_LOCK_TIMEOUT:
        raise ValueError(f"{text!r} is longer than {MAX_LOCK_TIMEOUT / 3600:g}h")
    return seconds


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?")

lock_timeout_option = click.option(
    "--lock-timeout",
    default=None,
    callback=_duration_option,
    metavar="DURATION",
    help="Wait this long for the state lock instead of failing at once (30, 10s, 2m).",
)

only_option = click.option(
    "--only",
    "only",
    multiple=True,
    metavar="PATTERN",
    help=(
        "Plan only these rules, like Terraform's -target (repeatable): a company "
        "(CEKEKCARDS) or a key glob (GLOBEX/*/MEAL_*). The rest is left alone."
    ),
)


def format_option(*choices: str, help: str = "Output format.") -> Callable[[F], F]:
    """``--format`` (``fmt``): the first choice is the default."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help=help,
    )


yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")

#: The options that pick what a command works on; a hint repeats them (see same_flags).
_SELECTION = (
    ("env_name", "--env"),
    ("configs", "--configs"),
    ("state_path", "--state"),
    ("api_url", "--api-url"),
)


def resolve_settings(
    env_name: str | None,
    configs: Path | None = None,
    state_path: Path | None = None,
    api_url: str | None = None,
    lock_timeout: float | None = None,
) -> Settings:
    settings = load_settings(env=env_name).with_overrides(
        configs=configs, state=state_path, api_url=api_url, lock_timeout=lock_timeout
    )
    import logging  # here, not at the top: validate and init log nothing

    log = logging.getLogger("coins_sync.cli")
    log.info("project root: %s", settings.root.resolve())
    log.debug(
        "environment %s: configs %s, state %s (%s backend), api_url %s",
        settings.env,
        settings.configs,
        settings.state,
        settings.backend,
        settings.api_url or "(none)",
    )
    return settings


def with_workspace(
    *, lock_timeout: bool = False
) -> Callable[[Callable[Concatenate[Workspace, P], R]], Callable[P, R]]:
    """Add the selection options to a command and pass it the built workspace first."""

    def decorate(command: Callable[Concatenate[Workspace, P], R]) -> Callable[P, R]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            options: dict[str, Any] = kwargs  # click passes every option by name
            settings = resolve_settings(
                options.pop("env_name"),
                options.pop("configs"),
                options.pop("state_path"),
                options.pop("api_url"),
                options.pop("lock_timeout", None),
            )
            from coins_sync.workspace import Workspace

            return command(Workspace(settings), *args, **kwargs)

        wrapped: Callable[..., R] = run
        if lock_timeout:
            wrapped = lock_timeout_option(wrapped)
        wrapped = click.option(
            "--api-url", metavar="URL", help="Override the environment's api_url."
        )(wrapped)
        wrapped = env_option(configs_option(state_option(wrapped)))
        return wrapped

    return decorate


def same_flags() -> str:
    """The selection flags this command was given, quoted for a shell: a hint that
    names another command repeats them, so it reads the same configs and state."""
    from shlex import quote

    params = click.get_current_context().params
    return " ".join(
        f"{flag} {quote(str(params[name]))}"
        for name, flag in _SELECTION
        if params.get(name) is not None
    )


def parse_key(text: str) -> RuleKey:
    try:
        return RuleKey.parse(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="KEY") from e


def confirm_or_refuse(yes: bool, question: str, refusal: str) -> None:
    """Ask ``question`` on a terminal (abort on no); without one, --yes is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise SettingsError(refusal)
    click.confirm(console.safe(question), abort=True)


def make_client(
    settings: Settings, parallelism: int | None = None, max_wait: float | None = None
) -> CoinsClient:
    """The API client for an environment; credentials come from the environment only.
    ``parallelism`` and ``max_wait`` override the environment's (``--parallelism``,
    ``--max-wait``)."""
    from coins_sync.enkash import ClientOptions, CoinsClient, Credentials, make_http_client

    width = parallelism or settings.parallelism
    options = ClientOptions(
        api_url=settings.require_api_url(),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        encryption=None if settings.encryption is Encryption.NONE else settings.encryption,
        max_connections=max(width, 4),
        parallelism=width,
        max_wait=settings.max_wait if max_wait is None else max_wait,
    )
    credentials = Credentials.from_env(os.environ)
    http = make_http_client(options)
    try:
        # Creates and token requests go out on fresh connections only (see CoinsClient).
        create_http = make_http_client(options, keepalive=False)
    except BaseException:
        http.close()
        raise
    try:
        return CoinsClient(http, credentials, options, create_http=create_http)
    except BaseException:
        create_http.close()
        http.close()
        raise


def say_pending(workspace: Workspace) -> None:
    """A command that reads the state without its lock (plan, report, state list,
    state pull) folds the journal and rescue files in memory only: say which files are
    pending and which commands fold them."""
    from coins_sync import console

    store = workspace.store
    files = store.pending_files()
    if not files:
        return
    names = " and ".join(str(path) for path in files)
    console.err(
        f"Note: {names} hold{'s' if len(files) == 1 else ''} results not folded into "
        f"{store.describe()} yet; they are shown here as folded. Only `coins-sync apply`, "
        "`state rm` and `state import` fold them into the state (under its lock)."
    )
