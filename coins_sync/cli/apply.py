"""``coins-sync apply``: the one command that sends creates and updates."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coins_sync import console
from coins_sync.cli.app import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    modules_for_good,
)
from coins_sync.cli.options import (
    force_option,
    format_option,
    make_client,
    only_option,
    with_workspace,
)
from coins_sync.errors import SettingsError
from coins_sync.plan.reconcile import Action, Plan
from coins_sync.plan.render import render, styled_symbols
from coins_sync.plan.subset import Subset
from coins_sync.workspace import Workspace

if TYPE_CHECKING:  # the apply package loads only when apply runs
    from coins_sync.apply.report import ApplyReport


@click.command("apply")
@with_workspace(lock_timeout=True)
@click.argument("planfile", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Apply without asking (needed without a terminal).")
@click.option(
    "--parallelism",
    type=click.IntRange(1, 64),
    default=None,
    help=(
        "The most requests in flight at once, fewer while the server limits the rate "
        "(default: the environment's, 8)."
    ),
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
@only_option
@format_option(
    "text", "json", help="The final report's format; json prints one document on stdout."
)
def apply_command(
    workspace: Workspace,
    planfile: Path | None,
    yes: bool,
    parallelism: int | None,
    max_wait: float | None,
    retry_uncertain: bool,
    force: bool,
    refresh: bool,
    only: tuple[str, ...],
    fmt: str,
) -> int:
    """Create and update configs on EnKash so they match the rule files.

    Without PLANFILE, plans afresh, shows the plan and asks. With PLANFILE (from
    `plan --out`), applies exactly that plan without asking (the saved plan was the
    review), and refuses it if the state or the configs changed since. Creates are
    journaled before they are sent, so an interrupted apply never loses or repeats one.
    When the server limits the request rate (HTTP 429), apply paces itself to it, with
    at most --parallelism requests in flight.

    \b
    Examples:
      coins-sync apply
      coins-sync plan --out plan.json && coins-sync apply plan.json
      coins-sync apply --env prod --yes --parallelism 16
      coins-sync apply --only CEKEKCARDS --yes --format json > report.json
    """
    with modules_for_good():
        from coins_sync.apply import ApplyRequest, ApplyStoppedError, run_apply, to_send
        from coins_sync.apply.report import ApplyReport
        from coins_sync.enkash import check_credentials

    settings = workspace.settings
    settings.require_api_url()
    check_credentials(os.environ, settings.encryption)
    if planfile is not None and refresh:
        raise click.UsageError("--refresh cannot be combined with PLANFILE")
    if planfile is not None and only:
        raise click.UsageError("--only cannot be combined with PLANFILE (the plan has its own)")
    subset = Subset.parse(only)
    # with --format json, stdout holds the report alone; the plan goes to stderr
    to_err = fmt == "json"

    def show(the_plan: Plan) -> None:
        if to_err:
            console.err(render(the_plan, "text", colour=False), nl=False)
            return
        colour = console.use_colour()
        console.out(
            render(the_plan, "text", colour=colour),
            nl=False,
            keep=styled_symbols() if colour else (),
        )

    def confirm(the_plan: Plan) -> bool:
        show(the_plan)
        if yes or planfile is not None:  # a saved plan was the review, as in Terraform
            return True
        if not sys.stdin.isatty():
            raise SettingsError(
                "refusing to apply without a terminal; pass --yes. Nothing was sent"
            )
        return click.confirm("Apply these changes?", default=False, err=to_err)

    request = ApplyRequest(
        planfile=planfile,
        force=force,
        retry_uncertain=retry_uncertain,
        refresh=refresh,
        parallelism=parallelism,
        command=f"apply (env {settings.env})",
        only=subset,
    )
    progress = console.Progress()
    reading = console.Progress(verb="read")
    stopped: ApplyStoppedError | None = None
    try:
        the_plan, report = run_apply(
            workspace,
            lambda: make_client(settings, parallelism, max_wait),
            request,
            confirm,
            on_tick=progress,
            audit=workspace.audit_log(os.environ),
            on_read=reading,
        )
    except ApplyStoppedError as e:
        stopped = e
    except KeyboardInterrupt:  # before any send, e.g. during --refresh's reads
        progress.close()
        console.err("Interrupted: nothing was sent.")
        return EXIT_INTERRUPTED
    finally:
        reading.close()
        progress.close()
    if stopped is None and planfile is not None:  # a saved partial plan has its own subset
        subset = Subset(the_plan.context.only)
    if stopped is not None:
        # what was done before it stopped; then the error
        print_report(stopped.report, fmt, settings.env, subset)
        raise stopped
    if report is None:
        if to_send(the_plan, retry_uncertain):
            (console.err if to_err else console.out)("Apply cancelled; nothing was sent.")
            if to_err:
                print_report(ApplyReport(), fmt, settings.env, subset)
            return EXIT_ERROR
        show(the_plan)
        (console.err if to_err else console.out)("Nothing to apply.")
        if to_err:
            print_report(ApplyReport(), fmt, settings.env, subset)
        if the_plan.of(Action.UNCERTAIN):
            console.err(
                "Error: uncertain creates remain unresolved. Check the server, then run "
                "`coins-sync state import KEY COIN_CONFIG_ID` for each that exists, or "
                "`coins-sync apply --retry-uncertain` to send them again."
            )
            return EXIT_ERROR
        return EXIT_OK
    print_report(report, fmt, settings.env, subset)
    if report.interrupted:
        return EXIT_TERMINATED if report.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_ERROR


def print_report(report: ApplyReport, fmt: str, env: str, only: Subset) -> None:
    """The final report: lines for a person, or one JSON document on stdout."""
    if fmt != "json":
        console.print_report(report)
        return
    console.out(json.dumps(report.to_json(env, only.patterns), indent=2))
    if report.stopped_by is not None:
        console.err(f"Error: {report.stopped_by}. The run stopped; nothing more was sent.")
