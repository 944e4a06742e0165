"""``coins-sync apply``: the one command that sends creates and updates."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from coins_sync import console
from coins_sync.cli.app import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED
from coins_sync.cli.options import force_option, make_client, with_workspace
from coins_sync.errors import SettingsError
from coins_sync.plan.reconcile import Action, Plan
from coins_sync.plan.render import render
from coins_sync.workspace import Workspace


@click.command("apply")
@with_workspace(lock_timeout=True)
@click.argument("planfile", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (needed without a terminal).")
@click.option(
    "--parallelism",
    type=click.IntRange(1, 64),
    default=None,
    help="Requests in flight at once (default: the environment's, 8).",
)
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0, max=86_400),
    default=None,
    metavar="SECONDS",
    help=(
        "How long, in all, to pause for the server's rate limit (HTTP 429) before the "
        "rest fails (default: the environment's max_wait, 600)."
    ),
)
@click.option(
    "--retry-uncertain",
    is_flag=True,
    help="Send again creates whose earlier outcome is unknown (may duplicate them).",
)
@force_option
@click.option("--refresh", is_flag=True, help="Read managed configs back first and correct drift.")
def apply_command(
    workspace: Workspace,
    planfile: Path | None,
    yes: bool,
    parallelism: int | None,
    max_wait: float | None,
    retry_uncertain: bool,
    force: bool,
    refresh: bool,
) -> int:
    """Create and update configs on EnKash so they match the rule files.

    Without PLANFILE, plans afresh, shows the plan and asks. With PLANFILE (from
    `plan --out`), applies exactly that plan, and refuses it if the state or the
    configs changed since. Creates are journaled before they are sent, so an
    interrupted apply never loses or repeats one. When the server limits the request
    rate (HTTP 429), apply paces itself to it, with at most --parallelism requests in
    flight.

    \b
    Examples:
      coins-sync apply
      coins-sync plan --out plan.json && coins-sync apply plan.json --yes
      coins-sync apply --env prod --yes --parallelism 16
    """
    from coins_sync.apply import ApplyRequest, ApplyStoppedError, run_apply, to_send
    from coins_sync.enkash import check_credentials

    settings = workspace.settings
    settings.require_api_url()
    check_credentials(os.environ, settings.encryption)
    if planfile is not None and refresh:
        raise click.UsageError("--refresh cannot be combined with PLANFILE")

    def confirm(the_plan: Plan) -> bool:
        click.echo(render(the_plan, "text", colour=console.use_colour()), nl=False)
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
    progress = console.Progress()
    stopped: ApplyStoppedError | None = None
    try:
        the_plan, report = run_apply(
            workspace,
            lambda: make_client(settings, parallelism, max_wait),
            request,
            confirm,
            on_tick=progress,
            audit=workspace.audit_log(os.environ),
        )
    except ApplyStoppedError as e:
        stopped = e
    except KeyboardInterrupt:  # before any send, e.g. during --refresh's reads
        progress.close()
        console.err("Interrupted: nothing was sent.")
        return EXIT_INTERRUPTED
    finally:
        progress.close()
    if stopped is not None:
        console.print_report(stopped.report)  # what was done before it stopped; then the error
        raise stopped
    if report is None:
        if to_send(the_plan, retry_uncertain):
            click.echo("Apply cancelled; nothing was sent.")
            return EXIT_ERROR
        click.echo(render(the_plan, "text", colour=console.use_colour()), nl=False)
        click.echo("Nothing to apply.")
        if the_plan.of(Action.UNCERTAIN):
            console.err(
                "Error: uncertain creates remain unresolved. Check the server, then run "
                "`coins-sync state import KEY COIN_CONFIG_ID` for each that exists, or "
                "`coins-sync apply --retry-uncertain` to send them again."
            )
            return EXIT_ERROR
        return EXIT_OK
    console.print_report(report)
    if report.interrupted:
        return EXIT_TERMINATED if report.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_ERROR
