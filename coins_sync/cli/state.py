"""``coins-sync state``: inspect, repair and move the state."""

from __future__ import annotations

from pathlib import Path

import click

from coins_sync import console
from coins_sync.cli.app import EXIT_ERROR, EXIT_OK
from coins_sync.cli.options import (
    confirm_or_refuse,
    env_option,
    format_option,
    make_client,
    parse_key,
    say_pending,
    with_workspace,
    yes_option,
)
from coins_sync.errors import SettingsError, StateError
from coins_sync.settings import load_settings, valid_schema_name
from coins_sync.state.model import State
from coins_sync.workspace import Workspace

_NO_TERMINAL = "refusing to change state without a terminal; pass --yes"


@click.group()
def state() -> None:
    """Inspect and repair the state.

    \b
    Examples:
      coins-sync state list --format json
      coins-sync state show CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT
      coins-sync state rm CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT --yes
    """


@state.command("list")
@with_workspace()
@format_option("text", "json")
def state_list(workspace: Workspace, fmt: str) -> int:
    """List what the state records: live entries and uncertain creates.

    \b
    Example:
      coins-sync state list --env prod --format json
    """
    current = workspace.read_state()
    say_pending(workspace)
    console.out(console.state_listing(current, workspace.store.describe(), fmt))
    return EXIT_OK


@state.command("rm")
@with_workspace(lock_timeout=True)
@click.argument("key")
@yes_option
def state_rm(workspace: Workspace, key: str, yes: bool) -> int:
    """Forget KEY (COMPANY/CONFIGURATION/EVENT). The config stays on the server.

    Use it after a config was removed by other means; the next plan would
    otherwise never show it again.

    \b
    Example:
      coins-sync state rm CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT --yes
    """
    rule_key = parse_key(key)
    confirm_or_refuse(yes, f"Forget {rule_key} in {workspace.store.describe()}?", _NO_TERMINAL)
    from coins_sync.edits import forget

    written, _ = forget(workspace, rule_key, command=f"state rm {rule_key}")
    console.out(f"Forgot {rule_key} (state serial {written.serial}).")
    return EXIT_OK


@state.command("mv")
@with_workspace(lock_timeout=True)
@click.argument("old")
@click.argument("new")
@yes_option
def state_mv(workspace: Workspace, old: str, new: str, yes: bool) -> int:
    """Record the entry of OLD as NEW under the same coinConfigId; nothing is sent.

    For a config whose companyId, configuration or event was changed on the server
    by hand. To change the server too, give the rule `movedFrom: OLD` instead and
    run plan and apply. The audit log records both keys.

    \b
    Example:
      coins-sync state mv ACME/DEFAULT/MEAL_CARD ACME/DEFAULT/MEAL_CARD_PAYMENT --yes
    """
    from coins_sync.lifecycle import check_rename, rename_entry

    old_key, new_key = parse_key(old), parse_key(new)
    where = workspace.store.describe()
    entry = check_rename(workspace.read_state(), old_key, new_key, where)
    confirm_or_refuse(
        yes,
        f"Record {entry.coin_config_id} as {new_key} instead of {old_key} in {where} "
        "(nothing is sent)?",
        _NO_TERMINAL,
    )
    written, moved = rename_entry(
        workspace, old_key, new_key, command=f"state mv {old_key} {new_key}"
    )
    console.out(
        f"Moved {old_key} -> {new_key} ({moved.coin_config_id}, amount {moved.amount}; "
        f"state serial {written.serial}). Nothing was sent."
    )
    return EXIT_OK


@state.command("show")
@with_workspace()
@click.argument("key")
@format_option("text", "json")
def state_show(workspace: Workspace, key: str, fmt: str) -> int:
    """Show what the state records for KEY, with its history from the audit log.

    The history follows the entry's coinConfigId across moves. Exits 1 when KEY is
    neither in the state nor in the audit log.

    \b
    Example:
      coins-sync state show CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT
    """
    import json

    from coins_sync.lifecycle import render_view, show_entry

    rule_key = parse_key(key)
    unreadable: list[str] = []
    view = show_entry(workspace.read_state(), rule_key, workspace.read_audit(unreadable))
    for where in unreadable:
        console.err(f"warning: {where}: unreadable audit line skipped")
    if view.entry is None and view.uncertain is None and not view.history:
        raise StateError(f"{rule_key} is not in {workspace.store.describe()} nor in its audit log")
    if fmt == "json":
        console.out(json.dumps(view.to_json(), indent=2))
    else:
        console.out(render_view(view, workspace.store.describe()))
    return EXIT_OK


@state.command("import")
@with_workspace(lock_timeout=True)
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
    workspace: Workspace, key: str | None, coin_config_id: str | None, source: Path | None
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
        return import_file(workspace, source)
    if key is None or coin_config_id is None:
        raise click.UsageError("give KEY and COIN_CONFIG_ID, or --from FILE")
    from coins_sync.apply.adopt import import_one

    rule_key = parse_key(key)
    with make_client(workspace.settings) as client:
        written, entry = import_one(
            workspace, rule_key, coin_config_id, client.get, command=f"state import {rule_key}"
        )
    console.out(
        f"Imported {rule_key} as {entry.coin_config_id} (amount {entry.amount}; "
        f"state serial {written.serial})."
    )
    return EXIT_OK


def import_file(workspace: Workspace, source: Path) -> int:
    """``state import --from FILE``: record every matching row, report every other."""
    from coins_sync.apply.adopt import SHOWN_ROWS, import_many, read_rows
    from coins_sync.configs.discovery import display_path

    rows = read_rows(source, display_path(source))
    progress = console.Progress(verb="checked")
    try:
        with make_client(workspace.settings) as client:
            result = import_many(
                workspace,
                rows,
                client.get,
                command=f"state import --from {source}",
                on_tick=progress,
            )
    finally:
        progress.close()
    for row, reason in result.failed[:SHOWN_ROWS]:
        console.err(f"  failed  {row.where}: {row.key} {row.coin_config_id}: {reason}")
    if len(result.failed) > SHOWN_ROWS:
        console.err(f"  … and {len(result.failed) - SHOWN_ROWS:,} more rows refused")
    serial = f"; state serial {result.state.serial}" if result.state is not None else ""
    console.out(
        f"Import: {len(result.imported)} imported, {len(result.failed)} failed "
        f"(of {len(rows)} rows{serial})."
    )
    return EXIT_ERROR if result.failed else EXIT_OK


@state.command("push")
@with_workspace(lock_timeout=True)
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The state file to move into the database (its journal is folded in).",
)
@yes_option
@click.option(
    "--force", is_flag=True, help="Push even a different lineage or a serial that is not newer."
)
def state_push(workspace: Workspace, source: Path, yes: bool, force: bool) -> int:
    """Move a file state into the environment's PostgreSQL backend.

    Both the file's lock and the database lock are held; the file's journal is
    folded in. A state of another lineage, or a serial that is not newer than the
    database's, is refused unless --force is given.

    \b
    Example:
      coins-sync state push --env team --from state/prod.json --yes
    """
    store = workspace.postgres_store("push")

    def confirm(current: State, pushed: State) -> None:
        confirm_or_refuse(
            yes,
            f"Replace {len(current.entries)} entries in {store.describe()} with "
            f"{len(pushed.entries)} from {source}?",
            _NO_TERMINAL,
        )

    from coins_sync.edits import push_state

    written = push_state(workspace, source, force, confirm)
    console.out(
        f"Pushed {len(written.entries)} entries and {len(written.uncertain)} uncertain from "
        f"{source} to {store.describe()} (lineage {written.lineage}, serial {written.serial})."
    )
    return EXIT_OK


@state.command("pull")
@with_workspace()
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The file to write the state to (deterministic JSON).",
)
def state_pull(workspace: Workspace, target: Path) -> int:
    """Write the environment's state to a file: for backups, audits or a move back.

    \b
    Example:
      coins-sync state pull --env team --to backup/team.json
    """
    from coins_sync.state.file import refuse_bookkeeping_target
    from coins_sync.state.files import atomic_write
    from coins_sync.state.model import serialize

    refuse_bookkeeping_target(target, workspace.settings.state, "the state", "--to")
    current = workspace.read_state()
    say_pending(workspace)
    if not current.exists:
        raise StateError(f"{workspace.store.describe()} holds no state yet; nothing to pull")
    atomic_write(target, serialize(current))
    console.out(
        f"Wrote {len(current.entries)} entries (serial {current.serial}) from "
        f"{workspace.store.describe()} to {target}."
    )
    return EXIT_OK


@state.command("force-unlock")
@with_workspace()
@click.argument("lock_id", required=False, type=click.IntRange(min=1))
@yes_option
def state_force_unlock(workspace: Workspace, lock_id: int | None, yes: bool) -> int:
    """End a stuck holder's database session and fence its writes (postgres only).

    LOCK_ID is the id a refused command named ("locked by ... (lock id 4242)"): only
    that holder is ended, so a run that took the lock since is never hit. The lock
    epoch is bumped, so the old run can never write again, even if its process lives
    on. Use it only when the holder is surely stuck: a live run is stopped half-way
    (what it had done is recorded; it exits 1).

    \b
    Example:
      coins-sync state force-unlock 4242 --env team --yes
    """
    store = workspace.postgres_store("force-unlock")
    which = f"lock id {lock_id}, the lock holder" if lock_id else "the lock holder"
    confirm_or_refuse(
        yes,
        f"End {which} of {store.describe()}?",
        "refusing to force the lock without a terminal; pass --yes",
    )
    who = store.force_unlock(lock_id)
    if who is None:
        console.out(f"Nobody held the lock of {store.describe()}; its epoch was bumped anyway.")
    else:
        console.out(f"Ended {who}; its writes are fenced out.")
    return EXIT_OK


@state.command("schema-sql")
@env_option
@click.option("--schema", metavar="NAME", help="Schema name (default: the environment's).")
def state_schema_sql(env_name: str | None, schema: str | None) -> int:
    """Print the SQL of the postgres backend's schema, for a DBA to apply by hand.

    coins-sync applies the same migrations itself, under a lock, when it has the
    rights; either way the checksums it records must match.

    \b
    Example:
      coins-sync state schema-sql --env team > coins-sync-schema.sql
    """
    from coins_sync.state.postgres.migrations import full_sql

    name = schema or load_settings(env=env_name).pg_schema
    if not valid_schema_name(name):
        raise SettingsError(f"--schema must be a lower-case SQL name, got {name!r}")
    click.echo(full_sql(name), nl=False)
    return EXIT_OK
