"""The ``coins-sync`` command line: a thin shell over the core modules.

Each command parses options, builds core objects and makes one core call. Only this
module turns errors into messages and exit codes: 0 success, 1 any error (usage
errors included), 2 "changes present" under ``--detailed-exitcode``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from coins_sync import __version__
from coins_sync.audit import AuditRecord, AuditSink
from coins_sync.errors import AuthError, CoinsSyncError, ConfigError, SettingsError
from coins_sync.plan import Action, Plan, check_safety
from coins_sync.planfile import save_plan
from coins_sync.redact import redact as scrub  # every encoding of every secret
from coins_sync.render import render
from coins_sync.rules import RuleKey
from coins_sync.settings import Settings, is_loopback, load_settings
from coins_sync.workspace import Workspace, unverified

if TYPE_CHECKING:  # validate and an offline plan load none of these (tests/test_import_purity.py)
    from coins_sync.apply import ApplyReport
    from coins_sync.enkash import CoinsClient
    from coins_sync.gitlease import GitLease

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


def _report_error(error: CoinsSyncError) -> None:
    if isinstance(error, ConfigError):
        for problem in error.problems:
            click.echo(scrub(str(problem)), err=True)
    click.echo(scrub(f"Error: {error}"), err=True)


_VERBOSE = re.compile(r"-v+|--verbose")


def _verbosity_first(args: list[str]) -> list[str]:
    """Accept -v/-vv/--verbose after the command too (`coins-sync plan -vv`), as people
    type them; they are moved before it. Nothing after `--` is touched."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if _VERBOSE.fullmatch(a)]
    rest = [a for a in args[:end] if not _VERBOSE.fullmatch(a)]
    return flags + rest + args[end:]


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
        args = _verbosity_first(list(sys.argv[1:] if args is None else args))
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except CoinsSyncError as e:
            _report_error(e)
            code = EXIT_ERROR
        except click.ClickException as e:
            shown = io.StringIO()
            e.show(file=shown)
            click.echo(scrub(shown.getvalue()), err=True, nl=False)
            code = EXIT_ERROR
        except OSError as e:  # the machine said no: permissions, full disk, bad path
            where = f": {e.filename}" if e.filename else ""
            click.echo(scrub(f"Error: {e.strerror or e}{where}"), err=True)
            code = EXIT_ERROR
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            code = EXIT_ERROR
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else EXIT_OK)


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
    envvar="COINS_SYNC_ENV",
    help="Environment from [tool.coins-sync.environments] (env: COINS_SYNC_ENV).",
)


def env_options(func: F) -> F:
    """The options every settings-aware command shares."""
    func = click.option("--api-url", metavar="URL", help="Override the environment's api_url.")(
        func
    )
    func = state_option(func)
    func = click.option(
        "--configs",
        type=click.Path(path_type=Path, file_okay=False),
        help="Override the configs folder.",
    )(func)
    func = env_option(func)
    return func


def resolve_settings(
    env_name: str | None,
    configs: Path | None,
    state_path: Path | None,
    api_url: str | None,
    lock_timeout: float | None = None,
) -> Settings:
    settings = load_settings(env=env_name).with_overrides(
        configs=configs, state=state_path, api_url=api_url, lock_timeout=lock_timeout
    )
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


def workspace_from(options: dict[str, Any]) -> Workspace:
    """Build the workspace from the shared options (popping them from ``options``)."""
    return Workspace(
        resolve_settings(
            options.pop("env_name"),
            options.pop("configs"),
            options.pop("state_path"),
            options.pop("api_url"),
            options.pop("lock_timeout", None),
        )
    )


def use_colour() -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def parse_key(text: str) -> RuleKey:
    try:
        return RuleKey.parse(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="KEY") from e


force_option = click.option(
    "--force",
    is_flag=True,
    help=(
        "Do not refuse a plan over the update threshold (apply: nor a new state "
        "while one of the same name exists elsewhere in the project)."
    ),
)
lock_timeout_option = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait this long for the state lock instead of failing at once.",
)


@click.group(cls=CoinsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="coins-sync")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Keep EnKash coin reward rules as code: validate, plan and apply.

    \b
    Example:
      coins-sync validate && coins-sync plan && coins-sync apply
    """
    setup_logging(verbose)


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
@click.option(
    "--configs",
    type=click.Path(path_type=Path, file_okay=False),
    help="Override the configs folder.",
)
def validate(paths: tuple[Path, ...], fmt: str, env_name: str | None, configs: Path | None) -> int:
    """Check rule files against the schema and each other. No state, no network.

    PATHS are files or folders (default: the configs folder, `configs/`). Every
    problem is printed at once as `path:line:col: message`.

    \b
    Examples:
      coins-sync validate
      coins-sync validate configs/cekekcards.yaml --format json
    """
    workspace = Workspace(load_settings(env=env_name).with_overrides(configs=configs))
    try:
        config_set = workspace.load_configs(list(paths))
    except ConfigError as e:
        problems = e.problems
        files = len({p.path for p in problems})
        if fmt == "json":
            click.echo(
                json.dumps(
                    {
                        "valid": False,
                        "problems": [
                            {
                                "path": scrub(p.path),
                                "line": p.line,
                                "col": p.col,
                                "message": scrub(p.message),
                            }
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
            click.echo(
                f"invalid: {len(problems)} problem{plural} in {files} "
                f"file{'s' if files != 1 else ''}"
            )
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
        click.echo(
            f"valid: {count_rules} rule{'s' if count_rules != 1 else ''} in {count_files} "
            f"file{'s' if count_files != 1 else ''}"
        )
    return EXIT_OK


@cli.command("plan")
@env_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="Output format; markdown is ready for a PR comment.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also save the plan as JSON, for `apply PLANFILE`.",
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 for no changes, 2 for changes, 1 for errors.",
)
@force_option
@click.option(
    "--refresh",
    is_flag=True,
    help="Read every managed config from the API first and show drift (needs credentials).",
)
def plan_command(
    fmt: str,
    out: Path | None,
    detailed_exitcode: bool,
    force: bool,
    refresh: bool,
    **options: Any,
) -> int:
    """Show what apply would do. Changes nothing; no network call unless --refresh,
    except one GET for each config whose last update's outcome is unknown.

    \b
    Actions: + create, ~ update (PATCH), ! uncertain (an earlier create's outcome
    is unknown), ! orphan (in state, not in configs; never acted on).

    \b
    Examples:
      coins-sync plan
      coins-sync plan --env prod --out plan.json
      coins-sync plan --format markdown --detailed-exitcode > plan.md
      coins-sync plan --refresh      # also GET every managed config to find drift
    """
    # the same selection flags, so the hint's apply reads the same configs and state
    same = " ".join(
        f"{flag} {shlex.quote(str(options[name]))}"
        for name, flag in (
            ("env_name", "--env"),
            ("configs", "--configs"),
            ("state_path", "--state"),
        )
        if options.get(name) is not None
    )
    workspace = workspace_from(options)
    if out is not None:
        refuse_state_target(out, workspace.settings.state)
    unread = 0
    if refresh:
        with make_client(workspace.settings) as client:
            the_plan = workspace.plan(refresh_with=client)
    else:
        the_plan, unread = plan_verified(workspace)
    click.echo(render(the_plan, fmt, colour=use_colour() and fmt == "text"), nl=False)
    check_safety(the_plan, workspace.safety, force=force)
    if out is not None:
        save_plan(the_plan, out)
        command = " ".join(filter(None, ["coins-sync apply", shlex.quote(str(out)), same]))
        click.echo(f"Saved the plan to {out}; apply it with `{command}`.", err=True)
    if detailed_exitcode and (the_plan.has_changes or unread):
        return EXIT_CHANGES
    return EXIT_OK


def plan_verified(workspace: Workspace) -> tuple[Plan, int]:
    """The offline plan, with each entry of an update whose outcome is unknown read back
    (one GET each) when the API can be reached; else a warning names them. Returns the
    plan and how many such entries could not be read back."""
    state = workspace.read_state()
    pending = unverified(state)
    if not pending:
        return workspace.plan(state), 0
    try:
        client = make_client(workspace.settings)
    except (SettingsError, AuthError) as e:
        for key, entry in sorted(pending.items()):
            click.echo(
                scrub(
                    f"Warning: {key}: the outcome of its last update (amount {entry.pending}) "
                    f"is unknown; the server holds {entry.amount} or {entry.pending}, and it "
                    f"could not be read back ({e}). Set the API credentials and plan again."
                ),
                err=True,
            )
        return workspace.plan(state), len(pending)
    with client:
        return workspace.plan(state, verify_with=client), 0


@cli.group()
def state() -> None:
    """Inspect and repair the state.

    \b
    Examples:
      coins-sync state list --format json
      coins-sync state rm CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT --yes
    """


@state.command("list")
@env_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
def state_list(fmt: str, **options: Any) -> int:
    """List what the state records: live entries and uncertain creates.

    \b
    Example:
      coins-sync state list --env prod --format json
    """
    workspace = workspace_from(options)
    current = workspace.read_state()
    if fmt == "json":
        data = current.to_json()
        data.setdefault("uncertain", [])
        click.echo(json.dumps(data, indent=2))
        return EXIT_OK
    rows = [
        (str(entry.key), str(entry.amount), entry.coin_config_id)
        for entry in sorted(current.entries.values(), key=lambda e: e.key)
    ]
    rows += [
        (str(item.key), str(item.amount), "(uncertain)")
        for item in sorted(current.uncertain.values(), key=lambda u: u.key)
    ]
    width = max((len(r[0]) for r in rows), default=3)
    if rows:
        click.echo(f"{'KEY':<{width}}  {'AMOUNT':>6}  COIN_CONFIG_ID")
        for key, amount, config_id in rows:
            click.echo(f"{key:<{width}}  {amount:>6}  {config_id}")
    where = workspace.store.describe()
    click.echo(
        f"{len(current.entries)} entries, {len(current.uncertain)} uncertain "
        f"in {where} (serial {current.serial})"
    )
    return EXIT_OK


@state.command("rm")
@env_options
@lock_timeout_option
@click.argument("key")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def state_rm(key: str, yes: bool, **options: Any) -> int:
    """Forget KEY (COMPANY/CONFIGURATION/EVENT). The config stays on the server.

    Use it after a config was removed by other means; the next plan would
    otherwise never show it again.

    \b
    Example:
      coins-sync state rm CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT --yes
    """
    rule_key = parse_key(key)
    workspace = workspace_from(options)
    if not yes:
        if not sys.stdin.isatty():
            raise SettingsError("refusing to change state without a terminal; pass --yes")
        click.confirm(f"Forget {rule_key} in {workspace.store.describe()}?", abort=True)
    written, forgotten = workspace.forget(rule_key, command=f"state rm {rule_key}")
    audit = audit_for(workspace)
    audit.record(
        AuditRecord(
            "forget", rule_key, "forgotten", forgotten.amount, None, forgotten.coin_config_id
        )
    )
    audit.close()
    click.echo(f"Forgot {rule_key} (state serial {written.serial}).")
    return EXIT_OK


def make_client(settings: Settings, parallelism: int | None = None) -> CoinsClient:
    """The API client for an environment; credentials come from the environment only."""
    from coins_sync.enkash import ClientOptions, CoinsClient, Credentials, make_http_client

    width = parallelism or settings.parallelism
    options = ClientOptions(
        api_url=settings.require_api_url(),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        encryption=None if settings.encryption == "none" else settings.encryption,
        max_connections=max(width, 4),
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


def audit_for(workspace: Workspace) -> AuditSink:
    return workspace.audit_log(os.environ)


class Progress:
    """A one-line progress display on a terminal (stderr); silent otherwise.

    While its line is open, a log line (the Ctrl-C warning, a retry) first ends it, so
    the message never lands on the bar's line.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.shown = False
        self.line_open = False
        self._filter = _EndProgressLine(self)
        for handler in logging.getLogger("coins_sync").handlers:
            handler.addFilter(self._filter)

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < 2:
            return
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "-" * (width - filled)
        click.echo(f"\r  [{bar}] {done}/{total}", err=True, nl=False)
        self.shown = self.line_open = True

    def end_line(self) -> None:
        if self.line_open:
            self.line_open = False
            click.echo("", err=True)

    def close(self) -> None:
        for handler in logging.getLogger("coins_sync").handlers:
            handler.removeFilter(self._filter)
        self.end_line()


class _EndProgressLine(logging.Filter):
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.end_line()
        return True


def print_report(report: ApplyReport) -> None:
    for key, reason in report.failed:
        if reason != report.stopped_by:  # said once, below
            click.echo(scrub(f"  failed     {key}: {reason}"), err=True)
    for key, reason in report.uncertain:
        click.echo(scrub(f"  uncertain  {key}: {reason}"), err=True)
    if report.uncertain or report.skipped_uncertain:
        click.echo(
            "  Uncertain creates may exist on the server. If one does, record it with "
            "`coins-sync state import KEY COIN_CONFIG_ID`; to send it again, use "
            "`coins-sync apply --retry-uncertain`.",
            err=True,
        )
    if report.unrecorded:
        click.echo(
            f"  Confirmed by the server but not in the state file ({len(report.unrecorded)}):",
            err=True,
        )
        for key, config_id in report.unrecorded:
            click.echo(scrub(f"  confirmed  {key} coinConfigId={config_id}"), err=True)
    if report.interrupted:
        click.echo(
            "  Interrupted: nothing new was sent; every result so far is recorded.", err=True
        )
    click.echo(report.summary())
    if report.stopped_by is not None:
        click.echo(
            scrub(f"Error: {report.stopped_by}. The run stopped; nothing more was sent."),
            err=True,
        )


@cli.command("apply")
@env_options
@lock_timeout_option
@click.argument("planfile", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (needed without a terminal).")
@click.option(
    "--parallelism",
    type=click.IntRange(1, 64),
    default=None,
    help="Requests in flight at once (default: the environment's, 8).",
)
@click.option(
    "--retry-uncertain",
    is_flag=True,
    help="Send again creates whose earlier outcome is unknown (may duplicate them).",
)
@force_option
@click.option("--refresh", is_flag=True, help="Read managed configs back first and correct drift.")
def apply_command(
    planfile: Path | None,
    yes: bool,
    parallelism: int | None,
    retry_uncertain: bool,
    force: bool,
    refresh: bool,
    **options: Any,
) -> int:
    """Create and update configs on EnKash so they match the rule files.

    Without PLANFILE, plans afresh, shows the plan and asks. With PLANFILE (from
    `plan --out`), applies exactly that plan, and refuses it if the state or the
    configs changed since. Creates are journaled before they are sent, so an
    interrupted apply never loses or repeats one.

    \b
    Examples:
      coins-sync apply
      coins-sync plan --out plan.json && coins-sync apply plan.json --yes
      coins-sync apply --env prod --yes --parallelism 16
    """
    from coins_sync.apply import ApplyRequest, ApplyStoppedError, run_apply, to_send

    workspace = workspace_from(options)
    settings = workspace.settings
    settings.require_api_url()
    from coins_sync.enkash import check_credentials

    check_credentials(os.environ, settings.encryption)
    if planfile is not None and refresh:
        raise click.UsageError("--refresh cannot be combined with PLANFILE")

    def confirm(the_plan: Plan) -> bool:
        click.echo(render(the_plan, "text", colour=use_colour()), nl=False)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise SettingsError(
                "refusing to apply without a terminal; pass --yes. Nothing was sent"
            )
        return click.confirm("Apply these changes?", default=False)

    request = ApplyRequest(
        planfile=planfile,
        force=force,
        retry_uncertain=retry_uncertain,
        refresh=refresh,
        parallelism=parallelism,
        command=f"apply (env {settings.env})",
    )
    progress = Progress()
    stopped: ApplyStoppedError | None = None
    try:
        the_plan, report = run_apply(
            workspace,
            lambda: make_client(settings, parallelism),
            request,
            confirm,
            on_tick=progress,
            audit=audit_for(workspace),
        )
    except ApplyStoppedError as e:
        stopped = e
    except KeyboardInterrupt:  # before any send, e.g. during --refresh's reads
        progress.close()
        click.echo("Interrupted: nothing was sent.", err=True)
        return EXIT_INTERRUPTED
    finally:
        progress.close()
    if stopped is not None:
        print_report(stopped.report)  # what was done before it stopped; then the error
        raise stopped
    if report is None:
        if to_send(the_plan, retry_uncertain):
            click.echo("Apply cancelled; nothing was sent.")
            return EXIT_ERROR
        click.echo(render(the_plan, "text", colour=use_colour()), nl=False)
        click.echo("Nothing to apply.")
        if the_plan.of(Action.UNCERTAIN):
            click.echo(
                "Error: uncertain creates remain unresolved. Check the server, then run "
                "`coins-sync state import KEY COIN_CONFIG_ID` for each that exists, or "
                "`coins-sync apply --retry-uncertain` to send them again.",
                err=True,
            )
            return EXIT_ERROR
        return EXIT_OK
    print_report(report)
    if report.interrupted:
        return EXIT_TERMINATED if report.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_ERROR


@state.command("import")
@env_options
@lock_timeout_option
@click.argument("key", required=False)
@click.argument("coin_config_id", required=False)
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Import every row of a CSV (companyId,configuration,event,coinConfigId) or "
    "JSON lines file.",
)
def state_import(
    key: str | None, coin_config_id: str | None, source: Path | None, **options: Any
) -> int:
    """Record an existing config COIN_CONFIG_ID as KEY, after checking it on the server.

    Resolves an uncertain create that did reach the server, or brings a config made
    by hand under management. The config is fetched (GET) and must match KEY.
    With --from FILE, every row of FILE is checked and the matching ones recorded.

    \b
    Examples:
      coins-sync state import CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT WCC817428
      coins-sync state import --from existing.csv
    """
    if source is not None:
        if key is not None or coin_config_id is not None:
            raise click.UsageError("give either KEY COIN_CONFIG_ID or --from FILE, not both")
        return state_import_file(source, options)
    if key is None or coin_config_id is None:
        raise click.UsageError("give KEY and COIN_CONFIG_ID, or --from FILE")
    rule_key = parse_key(key)
    workspace = workspace_from(options)
    with make_client(workspace.settings) as client:
        written, entry = workspace.import_entry(
            rule_key, coin_config_id, client.get, command=f"state import {rule_key}"
        )
    audit = audit_for(workspace)
    audit.record(
        AuditRecord("import", rule_key, "imported", None, entry.amount, entry.coin_config_id)
    )
    audit.close()
    click.echo(
        f"Imported {rule_key} as {entry.coin_config_id} (amount {entry.amount}; "
        f"state serial {written.serial})."
    )
    return EXIT_OK


def state_import_file(source: Path, options: dict[str, Any]) -> int:
    """``state import --from FILE``: record every matching row, report every other."""
    from coins_sync.adopt import read_rows
    from coins_sync.loader import display_path

    workspace = workspace_from(options)
    rows = read_rows(source, display_path(source))
    progress = Progress()
    try:
        with make_client(workspace.settings) as client:
            result = workspace.import_many(
                rows, client.get, command=f"state import --from {source}", on_tick=progress
            )
    finally:
        progress.close()
    audit = audit_for(workspace)
    try:
        for row, entry in result.imported:
            audit.record(
                AuditRecord("import", row.key, "imported", None, entry.amount, row.coin_config_id)
            )
        for row, reason in result.failed:
            audit.record(
                AuditRecord("import", row.key, "failed", None, None, row.coin_config_id, reason)
            )
    finally:
        audit.close()
    for row, reason in result.failed:
        click.echo(
            scrub(f"  failed  {row.where}: {row.key} {row.coin_config_id}: {reason}"), err=True
        )
    serial = f"; state serial {result.state.serial}" if result.state is not None else ""
    click.echo(
        f"Import: {len(result.imported)} imported, {len(result.failed)} failed "
        f"(of {len(rows)} rows{serial})."
    )
    return EXIT_ERROR if result.failed else EXIT_OK


def postgres_store(workspace: Workspace, command: str) -> Any:
    """The environment's PostgreSQL store, or a clear error for a file environment."""
    from coins_sync.pgstate import PostgresStateStore

    if not isinstance(workspace.store, PostgresStateStore):
        raise SettingsError(
            f'`state {command}` needs an environment with backend = "postgres"; '
            f"{workspace.settings.env!r} keeps its state in {workspace.store.describe()}"
        )
    return workspace.store


@state.command("push")
@env_options
@lock_timeout_option
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The state file to move into the database (its journal is folded in).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force", is_flag=True, help="Push even a different lineage or a serial that is not newer."
)
def state_push(source: Path, yes: bool, force: bool, **options: Any) -> int:
    """Move a file state into the environment's PostgreSQL backend.

    Both the file's lock and the database lock are held; the file's journal is
    folded in. A state of another lineage, or a serial that is not newer than the
    database's, is refused unless --force is given.

    \b
    Example:
      coins-sync state push --env team --from state/prod.json --yes
    """
    from coins_sync.errors import StateError
    from coins_sync.state import FileStateStore

    workspace = workspace_from(options)
    store = postgres_store(workspace, "push")
    timeout = workspace.settings.lock_timeout
    file_store = FileStateStore(source)
    with file_store.lock("state push", timeout):
        pushed = file_store.read()
        if not pushed.exists:
            raise StateError(f"{source}: no state to push")
        with store.lock(f"state push --from {source}", timeout):
            current, _ = store.recover()
            if current.exists and not force:
                if current.lineage != pushed.lineage:
                    raise StateError(
                        f"{source} is lineage {pushed.lineage}, but {store.describe()} holds "
                        f"lineage {current.lineage}: another state. Nothing was pushed; "
                        "pass --force to replace it"
                    )
                if pushed.serial <= current.serial:
                    raise StateError(
                        f"{source} is serial {pushed.serial}, not newer than the database's "
                        f"serial {current.serial}. Nothing was pushed; pass --force to "
                        "replace it"
                    )
            if not yes:
                if not sys.stdin.isatty():
                    raise SettingsError("refusing to change state without a terminal; pass --yes")
                click.confirm(
                    f"Replace {len(current.entries)} entries in {store.describe()} with "
                    f"{len(pushed.entries)} from {source}?",
                    abort=True,
                )
            written = store.replace_state(pushed)
    click.echo(
        f"Pushed {len(written.entries)} entries and {len(written.uncertain)} uncertain from "
        f"{source} to {store.describe()} (lineage {written.lineage}, serial {written.serial})."
    )
    return EXIT_OK


@state.command("pull")
@env_options
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The file to write the state to (deterministic JSON).",
)
def state_pull(target: Path, **options: Any) -> int:
    """Write the environment's state to a file: for backups, audits or a move back.

    \b
    Example:
      coins-sync state pull --env team --to backup/team.json
    """
    from coins_sync.errors import StateError
    from coins_sync.state import atomic_write, serialize

    workspace = workspace_from(options)
    current = workspace.read_state()
    if not current.exists:
        raise StateError(f"{workspace.store.describe()} holds no state yet; nothing to pull")
    atomic_write(target, serialize(current))
    click.echo(
        f"Wrote {len(current.entries)} entries (serial {current.serial}) from "
        f"{workspace.store.describe()} to {target}."
    )
    return EXIT_OK


@state.command("force-unlock")
@env_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def state_force_unlock(yes: bool, **options: Any) -> int:
    """End a stuck holder's database session and fence its writes (postgres only).

    The lock epoch is bumped, so the old run can never write again, even if its
    process lives on. Use it only when the holder is surely stuck: a live run is
    stopped half-way (what it had done is recorded; it exits 1).

    \b
    Example:
      coins-sync state force-unlock --env team --yes
    """
    workspace = workspace_from(options)
    store = postgres_store(workspace, "force-unlock")
    if not yes:
        if not sys.stdin.isatty():
            raise SettingsError("refusing to force the lock without a terminal; pass --yes")
        click.confirm(f"End the lock holder of {store.describe()}?", abort=True)
    who = store.force_unlock()
    if who is None:
        click.echo(f"Nobody held the lock of {store.describe()}; its epoch was bumped anyway.")
    else:
        click.echo(f"Ended {who}; its writes are fenced out.")
    return EXIT_OK


@state.command("schema-sql")
@click.option("--env", "env_name", metavar="NAME", envvar="COINS_SYNC_ENV", help="Environment.")
@click.option("--schema", metavar="NAME", help="Schema name (default: the environment's).")
def state_schema_sql(env_name: str | None, schema: str | None) -> int:
    """Print the SQL of the postgres backend's schema, for a DBA to apply by hand.

    coins-sync applies the same migrations itself, under a lock, when it has the
    rights; either way the checksums it records must match.

    \b
    Example:
      coins-sync state schema-sql --env team > coins-sync-schema.sql
    """
    from coins_sync.pgschema import full_sql, valid_schema_name

    name = schema or load_settings(env=env_name).pg_schema
    if not valid_schema_name(name):
        raise SettingsError(f"--schema must be a lower-case SQL name, got {name!r}")
    click.echo(full_sql(name), nl=False)
    return EXIT_OK


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data",
    "data_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Persist configs to this JSON file (default: in memory only).",
)
@click.option("--latency-ms", default=0, type=click.IntRange(0, 60_000), help="Delay per request.")
@click.option(
    "--fail-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Chance of a fault on create/PATCH, split between before and after storing.",
)
@click.option(
    "--fail-before-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Chance of HTTP 500 without storing.",
)
@click.option(
    "--fail-after-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Chance of storing, then a 502 or a dropped connection.",
)
@click.option("--rate-429", default=0.0, type=click.FloatRange(0, 1), help="Chance of HTTP 429.")
@click.option("--seed", type=int, default=None, help="Seed for reproducible faults.")
@click.option("--encryption", is_flag=True, help="Expect and send AES-128-ECB bodies.")
@click.option("--token-ttl", default=3600, type=click.IntRange(1), help="expires_in of tokens.")
def sandbox(host: str, port: int, data_file: Path | None, **faults: Any) -> int:
    """Run a local stand-in for the EnKash coins API, for demos and tests.

    It serves create, get and PATCH with EnKash's envelopes, and /oauth/token. It
    accepts the bearer token in COINS_SYNC_TOKEN, and the password grant for the
    COINS_SYNC_CLIENT_ID/_CLIENT_SECRET/_USERNAME/_PASSWORD values. Like the real
    API, a second create makes a second config. It binds to loopback by default.

    \b
    Examples:
      COINS_SYNC_TOKEN=dev coins-sync sandbox --port 8765
      coins-sync sandbox --latency-ms 50 --fail-rate 0.1 --seed 7
    """
    from coins_sync.sandbox import SandboxOptions, SandboxServer

    options = SandboxOptions.from_env(
        os.environ, host=host, port=port, data_file=data_file, **faults
    )
    server = SandboxServer(options)
    if not options.token and not options.oauth_enabled:
        click.echo(
            "Warning: no credentials in the environment, so every request will be refused "
            "with 401. Set COINS_SYNC_TOKEN (or the COINS_SYNC_CLIENT_ID/_CLIENT_SECRET/"
            "_USERNAME/_PASSWORD set) before starting the sandbox.",
            err=True,
        )
    if not is_loopback(host.strip("[]")):
        click.echo(
            f"Warning: listening on {host}, which other machines may reach; the sandbox "
            "is a test double with test credentials. Use 127.0.0.1 unless you mean it.",
            err=True,
        )
    click.echo(f"coins-sync sandbox listening on {server.url} (Ctrl-C to stop)", err=True)

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # stop cleanly on SIGTERM too (make demo, benchmarks)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return EXIT_OK


@cli.command()
@env_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "csv", "json"]),
    default="markdown",
    show_default=True,
)
def report(fmt: str, **options: Any) -> int:
    """The auditor's view: every rule per company, its status and last change.

    Status is live (with its coinConfigId), pending, uncertain or orphan; the last
    change comes from the audit log beside the state. No network.

    \b
    Examples:
      coins-sync report > report.md
      coins-sync report --env prod --format csv > rules.csv
    """
    from coins_sync import report as reports

    workspace = workspace_from(options)
    configs = workspace.load_configs()
    unreadable: list[str] = []
    rows = reports.build_report(configs, workspace.read_state(), workspace.read_audit(unreadable))
    if unreadable:  # never skipped silently: the report may miss their changes
        shown = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        click.echo(
            f"Warning: {len(unreadable)} unreadable audit line(s) not counted ({shown}); "
            "the last change shown for a rule may be older than the real one",
            err=True,
        )
    env = workspace.settings.env
    if fmt == "csv":
        click.echo(scrub(reports.render_csv(rows)), nl=False)
    elif fmt == "json":
        click.echo(scrub(reports.render_json(rows, env)), nl=False)
    else:
        click.echo(scrub(reports.render_markdown(rows, env)))
    return EXIT_OK


def refuse_state_target(out: Path, state_path: Path) -> None:
    """A saved plan must never land on the state or a file that travels with it."""
    from coins_sync.audit import audit_path_for
    from coins_sync.state import FileStateStore

    store = FileStateStore(state_path)
    guarded = (
        store.path,
        store.backup_path,
        store.journal_path,
        store.lock_path,
        store.holder_path,
        audit_path_for(store.path),
    )
    target = out.resolve()
    if any(target == path.resolve() for path in guarded):
        raise SettingsError(
            f"refusing to write the plan onto {out}: it belongs to the state "
            f"{state_path}; choose another --out file. Nothing was written"
        )


@cli.group("git-lease")
def git_lease() -> None:
    """Keep the state on a git branch without ever losing it (for CI runners).

    Before apply, `acquire` takes a lease on the state branch with a compare-and-swap
    push and copies the branch's state here; it refuses while another run holds the
    lease. After apply, `push` puts the new state on top of that lease. If the push
    fails, the lease stays and no later run applies until `restore` puts the kept
    files on the branch. The git remote needs push rights for the job.

    \b
    Examples:
      coins-sync git-lease acquire --env prod && coins-sync apply --env prod --yes
      coins-sync git-lease push --env prod
      coins-sync git-lease restore --env prod --from ./coins-sync-state-1234
    """


def lease_options(func: F) -> F:
    """The options every git-lease command shares."""
    func = click.option(
        "--remote", default="origin", show_default=True, help="The git remote to push to."
    )(func)
    func = click.option(
        "--branch",
        default="coins-sync-state",
        show_default=True,
        envvar="COINS_SYNC_STATE_BRANCH",
        help="The state branch (env: COINS_SYNC_STATE_BRANCH).",
    )(func)
    func = state_option(func)
    func = env_option(func)
    return func


def lease_from(env_name: str | None, state_path: Path | None, branch: str, remote: str) -> GitLease:
    from coins_sync.gitlease import GitLease

    settings = resolve_settings(env_name, None, state_path, None)
    return GitLease(settings.state, branch=branch, remote=remote)


@git_lease.command("acquire")
@lease_options
@click.option("--run-id", help="Name of this run (default: GITHUB_RUN_ID-GITHUB_RUN_ATTEMPT).")
def git_lease_acquire(
    env_name: str | None, state_path: Path | None, branch: str, remote: str, run_id: str | None
) -> int:
    """Take the lease on the state branch and copy its state here. Exit 1 if held."""
    lease = lease_from(env_name, state_path, branch, remote)
    commit, run = lease.acquire(run_id)
    click.echo(
        f"Took the lease on {branch} for run {run.run} (commit {commit[:12]}); "
        f"the state is in {lease.store.path}."
    )
    return EXIT_OK


@git_lease.command("push")
@lease_options
@click.option("--attempts", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option(
    "--retry-delay", type=click.FloatRange(0, 60), default=2.0, show_default=True, metavar="S"
)
def git_lease_push(
    env_name: str | None,
    state_path: Path | None,
    branch: str,
    remote: str,
    attempts: int,
    retry_delay: float,
) -> int:
    """Push the state, journal and audit log on top of this run's lease, ending it."""
    from coins_sync.errors import LeasePushError

    lease = lease_from(env_name, state_path, branch, remote)
    try:
        commit = lease.push(attempts, retry_delay)
    except LeasePushError as e:
        click.echo(
            f"The lease stays on {branch}: no run applies until the state is restored. "
            "These files hold the only copy of the new state; keep them (CI: upload them "
            "as an artifact):",
            err=True,
        )
        for name in e.kept:
            click.echo(f"  {name}", err=True)
        click.echo(
            f"To restore: put them in a folder DIR, then run `coins-sync git-lease restore "
            f"--branch {branch} --from DIR` in a clone that can push.",
            err=True,
        )
        raise
    click.echo(f"Pushed the state to {branch} (commit {commit[:12]}); the lease is released.")
    return EXIT_OK


@git_lease.command("restore")
@lease_options
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="The folder with the kept files (the downloaded artifact).",
)
@click.option("--run", "run_id", help="Only if the lease is held by this run.")
def git_lease_restore(
    env_name: str | None,
    state_path: Path | None,
    branch: str,
    remote: str,
    source: Path,
    run_id: str | None,
) -> int:
    """Put the state a failed run kept onto the branch and end that run's lease.

    The files are checked first: same lineage, a serial no older than the branch's,
    an audit log that continues the branch's.
    """
    lease = lease_from(env_name, state_path, branch, remote)
    commit = lease.restore(source, run_id)
    click.echo(f"Restored the state from {source} onto {branch} (commit {commit[:12]}).")
    return EXIT_OK


@git_lease.command("release")
@lease_options
@click.option("--run", "run_id", required=True, help="The run that holds the lease.")
def git_lease_release(
    env_name: str | None, state_path: Path | None, branch: str, remote: str, run_id: str
) -> int:
    """End the lease of a run that sent nothing, keeping the branch's state as it is.

    Use it only when that run's log shows it stopped before apply sent anything;
    otherwise restore the state it kept.
    """
    lease = lease_from(env_name, state_path, branch, remote)
    commit = lease.release(run_id)
    click.echo(f"Released the lease of run {run_id} on {branch} (commit {commit[:12]}).")
    return EXIT_OK


@git_lease.command("status")
@lease_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def git_lease_status(
    env_name: str | None, state_path: Path | None, branch: str, remote: str, fmt: str
) -> int:
    """Show whether the state branch is free or which run holds its lease."""
    status = lease_from(env_name, state_path, branch, remote).fetch()
    if fmt == "json":
        click.echo(json.dumps(status.to_json(), indent=2))
    else:
        click.echo(status.describe())
    return EXIT_OK


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


def setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ScrubFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("coins_sync")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(
        logging.DEBUG if verbosity > 1 else logging.INFO if verbosity else logging.WARNING
    )


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="coins-sync")
