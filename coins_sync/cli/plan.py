"""The read-only commands beyond ``validate``: ``plan`` and ``report``."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

import click

from coins_sync import console
from coins_sync.cli.app import EXIT_CHANGES, EXIT_OK
from coins_sync.cli.options import (
    force_option,
    format_option,
    make_client,
    only_option,
    same_flags,
    say_pending,
    with_workspace,
)
from coins_sync.errors import AuthError, CoinsSyncError, ConfigError, SettingsError
from coins_sync.plan.online import unverified
from coins_sync.plan.reconcile import Action, Plan
from coins_sync.plan.render import RENDERERS, render, styled_symbols
from coins_sync.plan.saved import save_plan
from coins_sync.plan.subset import Subset
from coins_sync.state.model import State
from coins_sync.workspace import Workspace


@click.command("plan")
@with_workspace()
@format_option(*RENDERERS, help="Output format; markdown is ready for a PR comment.")
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
@only_option
def plan_command(
    workspace: Workspace,
    fmt: str,
    out: Path | None,
    detailed_exitcode: bool,
    force: bool,
    refresh: bool,
    only: tuple[str, ...],
) -> int:
    """Show what apply would do. Changes nothing; no network call unless --refresh,
    except one GET for each config whose last update's outcome is unknown.

    \b
    Actions: + create, <= import (adopt the coinConfigId a rule names), ~ update
    (PATCH), ! uncertain (an earlier create's outcome is unknown), ! orphan (in
    state, not in configs; never acted on).

    \b
    Examples:
      coins-sync plan
      coins-sync plan --env prod --out plan.json
      coins-sync plan --format markdown --detailed-exitcode > plan.md
      coins-sync plan --refresh      # also GET every managed config to find drift
      coins-sync plan --only CEKEKCARDS --only 'GLOBEX/*/MEAL_*'

    With --format markdown, invalid configs or a plan that cannot be made print
    why as Markdown on stdout (exit 1), ready for the same PR comment.
    """
    try:
        return _plan(workspace, fmt, out, detailed_exitcode, force, refresh, Subset.parse(only))
    except CoinsSyncError as e:
        if fmt == "markdown":  # the PR comment shows this push's problems, not a stale plan
            from coins_sync.plan.problems import failure_markdown, problems_markdown

            env = workspace.settings.env
            if isinstance(e, ConfigError) and e.problems:
                console.out(problems_markdown(e.problems, env), nl=False)
            else:
                console.out(failure_markdown(str(e), env), nl=False)
        raise


def _plan(
    workspace: Workspace,
    fmt: str,
    out: Path | None,
    detailed_exitcode: bool,
    force: bool,
    refresh: bool,
    only: Subset,
) -> int:
    if out is not None:
        from coins_sync.state.file import refuse_bookkeeping_target

        refuse_bookkeeping_target(out, workspace.settings.state, "the plan", "--out")
    unread = 0
    state = workspace.read_state()
    say_pending(workspace)
    if refresh:
        progress = console.Progress(verb="read")
        try:
            with make_client(workspace.settings) as client:
                the_plan = workspace.plan(state, refresh_with=client, on_tick=progress, only=only)
        finally:
            progress.close()
    else:
        the_plan, unread = plan_verified(workspace, state, only)
    workspace.refuse_fresh_clone(the_plan, force)
    the_plan = while_applying(workspace, the_plan, state)
    colour = console.use_colour() and fmt == "text"
    console.out(
        render(the_plan, fmt, colour=colour), nl=False, keep=styled_symbols() if colour else ()
    )
    the_plan.raise_if_unsafe(workspace.safety, force=force)
    if out is not None:
        save_plan(the_plan, out)
        command = " ".join(filter(None, ["coins-sync apply", shlex.quote(str(out)), same_flags()]))
        console.err(f"Saved the plan to {out}; apply it with `{command}`.")
    if detailed_exitcode and (the_plan.has_changes or unread):
        return EXIT_CHANGES
    return EXIT_OK


def while_applying(workspace: Workspace, the_plan: Plan, state: State) -> Plan:
    """A plan made while an apply holds the lock: it names the holder, and the creates
    that apply has journaled but not answered yet are in flight, not uncertain."""
    holder = workspace.store.lock_holder()
    if holder is None:
        return the_plan
    flying = {key for key, item in state.uncertain.items() if item.open}
    in_flight = tuple(c.key for c in the_plan.of(Action.UNCERTAIN) if c.key in flying)
    return replace(the_plan, lock_holder=holder, in_flight=in_flight)


def plan_verified(
    workspace: Workspace, state: State | None = None, only: Subset | None = None
) -> tuple[Plan, int]:
    """The offline plan, with each entry of an update whose outcome is unknown read back
    (one GET each) when the API can be reached; else a warning names them. Returns the
    plan and how many such entries could not be read back."""
    state = state or workspace.read_state()
    pending = unverified(state)
    if not pending:
        return workspace.plan(state, only=only), 0
    try:
        client = make_client(workspace.settings)
    except (SettingsError, AuthError) as e:
        for key, entry in sorted(pending.items()):
            console.err(
                f"Warning: {key}: the outcome of its last update (amount {entry.pending}) "
                f"is unknown; the server holds {entry.amount} or {entry.pending}, and it "
                f"could not be read back ({e}). Set the API credentials and plan again."
            )
        return workspace.plan(state, only=only), len(pending)
    with client:
        return workspace.plan(state, verify_with=client, only=only), 0


@click.command()
@with_workspace()
@format_option("markdown", "csv", "json")
def report(workspace: Workspace, fmt: str) -> int:
    """The auditor's view: every rule per company, its status and last change.

    Status is live (with its coinConfigId), pending, uncertain or orphan; the last
    change comes from the audit log beside the state. No network.

    \b
    Examples:
      coins-sync report > report.md
      coins-sync report --env prod --format csv > rules.csv
    """
    from coins_sync import report as reports

    configs = workspace.load_configs()
    unreadable: list[str] = []
    rows = reports.build_report(configs, workspace.read_state(), workspace.read_audit(unreadable))
    say_pending(workspace)
    if unreadable:  # never skipped silently: the report may miss their changes
        shown = ", ".join(unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        console.err(
            f"Warning: {len(unreadable)} unreadable audit line(s) not counted ({shown}); "
            "the last change shown for a rule may be older than the real one"
        )
    env = workspace.settings.env
    if fmt == "csv":
        console.out(reports.render_csv(rows), nl=False)
    elif fmt == "json":
        console.out(reports.render_json(rows, env), nl=False)
    else:
        console.out(reports.render_markdown(rows, env))
    return EXIT_OK
