"""Is this a fresh clone whose state lives on the git state branch?

A clone of a repository whose ``coins-sync-state`` branch holds the state has no state
file of its own: a plan from that empty state would create every rule again. This
looks, offline, at the refs the clone already has (its remote-tracking branches, a
local branch, what ``git-lease`` fetched) for that branch holding this state file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from coins_sync import envvars
from coins_sync.errors import StateError

DEFAULT_BRANCH = "coins-sync-state"
_TIMEOUT = 20.0


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git, or a hung one: nothing known
        return None


def state_branch_name() -> str:
    """The state branch: ``COINS_SYNC_STATE_BRANCH``, or ``coins-sync-state``."""
    return os.environ.get(envvars.STATE_BRANCH) or DEFAULT_BRANCH


def branch_holding(state: Path, branch: str) -> str | None:
    """The first ref of ``branch`` this clone has (``origin/coins-sync-state``, ...)
    whose tree holds ``state`` at its path in the repository, or None."""
    folder = state.parent if state.parent.is_dir() else Path.cwd()
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0 or not top.stdout.strip():
        return None
    root = Path(top.stdout.strip())
    try:
        relative = state.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    listed = _git(
        root,
        "for-each-ref",
        "--format=%(refname)",
        f"refs/remotes/*/{branch}",
        f"refs/heads/{branch}",
        f"refs/coins-sync/fetched/state/{branch}",
    )
    if listed is None or listed.returncode != 0:
        return None
    for ref in listed.stdout.split():
        found = _git(root, "cat-file", "-e", f"{ref}:{relative}")
        if found is not None and found.returncode == 0:
            return ref.removeprefix("refs/remotes/").removeprefix("refs/heads/")
    return None


def refuse_fresh_clone(state: Path, describe: str) -> None:
    """Raise when ``state`` is missing here but the state branch holds it."""
    branch = state_branch_name()
    ref = branch_holding(state, branch)
    if ref is None:
        return
    flag = "" if branch == DEFAULT_BRANCH else f" --branch {branch}"
    raise StateError(
        f"the state {describe} does not exist here, but the git branch {branch} ({ref}) "
        "holds it: this clone has no copy of the state, and planning from an empty one "
        "would create every rule again. Fetch the state for a local plan with "
        f"`coins-sync git-lease pull{flag}`; apply only under `coins-sync git-lease "
        "acquire` (as the workflow does). Nothing was sent. (--force plans from an "
        "empty state anyway.)"
    )
