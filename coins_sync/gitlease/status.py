"""Who holds the lease on the state branch: the run, as written in its lease commit."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from coins_sync.state.audit import current_actor
from coins_sync.state.model import utc_now


class LeaseState(Enum):
    MISSING = "missing"  # the branch does not exist yet
    FREE = "free"
    HELD = "held"


@dataclass(frozen=True)
class RunInfo:
    """Who takes a lease: written into the lease commit for the people who read it."""

    run: str
    actor: str
    commit: str
    at: str

    @classmethod
    def current(cls, environ: Mapping[str, str], run: str | None, commit: str) -> RunInfo:
        if not run:
            gh_run, attempt = environ.get("GITHUB_RUN_ID"), environ.get("GITHUB_RUN_ATTEMPT")
            if gh_run:
                run = f"{gh_run}-{attempt}" if attempt else gh_run
            else:
                run = f"local-{socket.gethostname()}-{os.getpid()}"
        return cls(
            run=_one_line(run), actor=_one_line(current_actor(environ)), commit=commit, at=utc_now()
        )

    def trailers(self) -> dict[str, str]:
        return {
            "Coins-Sync-Run": self.run,
            "Coins-Sync-Actor": self.actor,
            "Coins-Sync-Commit": self.commit,
            "Coins-Sync-At": self.at,
        }

    def describe(self) -> str:
        return f"run {self.run} (by {self.actor} at {self.at}, main commit {self.commit[:12]})"


@dataclass(frozen=True)
class BranchStatus:
    """The state branch as fetched: its tip, its lease commit and the run holding it.

    ``lease`` is the lease ref's commit; None when free, or when an older coins-sync's
    lease commit is the branch tip (``legacy``)."""

    branch: str
    state: LeaseState
    tip: str | None
    holder: RunInfo | None
    lease: str | None = None

    def describe(self) -> str:
        if self.state is LeaseState.MISSING:
            return f"branch {self.branch} does not exist yet; the first acquire creates it"
        if self.state is LeaseState.HELD and self.holder is not None:
            return f"branch {self.branch} is leased by {self.holder.describe()}"
        return f"branch {self.branch} is free (tip {str(self.tip)[:12]})"

    def to_json(self) -> dict[str, object]:
        return {
            "branch": self.branch,
            "lease": self.state.value,
            "tip": self.tip,
            "lease_commit": self.lease,
            "holder": None if self.holder is None else self.holder.__dict__,
        }


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown"


def holder_from(trailers: Mapping[str, str]) -> RunInfo:
    return RunInfo(
        run=trailers.get("Coins-Sync-Run", "unknown"),
        actor=trailers.get("Coins-Sync-Actor", "unknown"),
        commit=trailers.get("Coins-Sync-Commit", "unknown"),
        at=trailers.get("Coins-Sync-At", "unknown"),
    )
