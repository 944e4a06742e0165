"""``coins-sync git-lease``: keep the state on a git branch without ever losing it."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from coins_sync import console, envvars
from coins_sync.cli.app import EXIT_OK
from coins_sync.cli.options import env_option, format_option, resolve_settings, state_option

if TYPE_CHECKING:  # validate and an offline plan load none of these
    from coins_sync.gitlease import GitLease

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_BRANCH = "coins-sync-state"  # gitlease.lease.DEFAULT_BRANCH, without loading it


@click.group("git-lease")
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
      coins-sync git-lease pull --env prod && coins-sync plan --env prod
    """


def lease_options(func: F) -> F:
    """The options every git-lease command shares."""
    func = click.option(
        "--remote", default="origin", show_default=True, help="The git remote to push to."
    )(func)
    func = click.option(
        "--branch",
        default=DEFAULT_BRANCH,
        show_default=True,
        envvar=envvars.STATE_BRANCH,
        help="The state branch (env: COINS_SYNC_STATE_BRANCH).",
    )(func)
    func = state_option(func)
    func = env_option(func)
    return func


def lease_from(env_name: str | None, state_path: Path | None, branch: str, remote: str) -> GitLease:
    from coins_sync.errors import GitLeaseError
    from coins_sync.gitlease import GitLease

    settings = resolve_settings(env_name, None, state_path, None)
    if settings.backend != "file":
        raise GitLeaseError(
            f"environment {settings.env!r} keeps its state in {settings.backend} "
            f'(backend = "{settings.backend}"), not in a file on a git branch: the git '
            "lease does not apply to it, and nothing was taken or sent. Use the "
            "postgres workflow (docs/workflows/coins-sync-postgres.yml) for it"
        )
    return GitLease(settings.state, branch=branch, remote=remote, env=settings.env)


def restore_command(lease: GitLease, state_path: Path | None) -> str:
    """The restore command for this lease, with every flag that picks the same state."""
    words = ["coins-sync git-lease restore", f"--env {shlex.quote(lease.env)}"]
    if state_path is not None:
        words.append(f"--state {shlex.quote(str(state_path))}")
    if lease.branch != DEFAULT_BRANCH:
        words.append(f"--branch {shlex.quote(lease.branch)}")
    return " ".join([*words, "--from DIR"])


@git_lease.command("acquire")
@lease_options
@click.option("--run-id", help="Name of this run (default: GITHUB_RUN_ID-GITHUB_RUN_ATTEMPT).")
def git_lease_acquire(
    env_name: str | None, state_path: Path | None, branch: str, remote: str, run_id: str | None
) -> int:
    """Take the lease on the state branch and copy its state here. Exit 1 if held.

    \b
    Examples:
      coins-sync git-lease acquire --env prod
      coins-sync git-lease acquire --env prod --run-id nightly-42 --branch prod-state
    """
    lease = lease_from(env_name, state_path, branch, remote)
    commit, run = lease.acquire(run_id)
    console.out(
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
    """Push the state, journal and audit log on top of this run's lease, ending it.

    If the push fails, the lease stays, the files that hold the new state are named,
    and the command to restore them is printed (exit 1).

    \b
    Examples:
      coins-sync git-lease push --env prod
      coins-sync git-lease push --env prod --attempts 5 --retry-delay 10
    """
    from coins_sync.errors import LeasePushError

    lease = lease_from(env_name, state_path, branch, remote)
    try:
        commit = lease.push(attempts, retry_delay)
    except LeasePushError as e:
        console.err(
            f"The lease stays on {branch}: no run applies until the state is restored. "
            "These files hold the only copy of the new state; keep them (CI: upload them "
            "as an artifact):"
        )
        for name in e.kept:
            console.err(f"  {name}")
        console.err(
            f"To restore: put them in a folder DIR, then run "
            f"`{restore_command(lease, state_path)}` in a clone that can push."
        )
        raise
    console.out(f"Pushed the state to {branch} (commit {commit[:12]}); the lease is released.")
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

    \b
    Examples:
      gh run download 1234 -n coins-sync-state-1234-1 -D kept
      coins-sync git-lease restore --env prod --from kept --run 1234-1
    """
    lease = lease_from(env_name, state_path, branch, remote)
    commit = lease.restore(source, run_id)
    console.out(f"Restored the state from {source} onto {branch} (commit {commit[:12]}).")
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

    \b
    Example:
      coins-sync git-lease release --env prod --run 1234-1
    """
    lease = lease_from(env_name, state_path, branch, remote)
    commit = lease.release(run_id)
    console.out(f"Released the lease of run {run_id} on {branch} (commit {commit[:12]}).")
    return EXIT_OK


@git_lease.command("status")
@lease_options
@format_option("text", "json")
def git_lease_status(
    env_name: str | None, state_path: Path | None, branch: str, remote: str, fmt: str
) -> int:
    """Show whether the state branch is free or which run holds its lease.

    \b
    Examples:
      coins-sync git-lease status --env prod
      coins-sync git-lease status --env prod --format json
    """
    status = lease_from(env_name, state_path, branch, remote).fetch()
    console.out(console.lease_status(status, fmt))
    return EXIT_OK


@git_lease.command("pull")
@lease_options
def git_lease_pull(env_name: str | None, state_path: Path | None, branch: str, remote: str) -> int:
    """Copy the state branch's state here for a local plan; takes no lease.

    Refuses to replace a local journal or rescue file, or a local state of another
    lineage or a newer serial. Apply only under a lease (CI), never from this copy.

    \b
    Example:
      coins-sync git-lease pull --env prod && coins-sync plan --env prod
    """
    lease = lease_from(env_name, state_path, branch, remote)
    status, written = lease.pull()
    held = f"; {status.describe()}" if status.holder is not None else ""
    console.out(
        f"Pulled the state of {branch} (commit {str(status.tip)[:12]}) into "
        f"{lease.store.path}: {len(written)} file(s){held}."
    )
    return EXIT_OK
