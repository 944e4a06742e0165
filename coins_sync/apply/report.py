"""What an apply did, and the error that carries it when the run stopped early
(:class:`~coins_sync.errors.ApplyStoppedError`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coins_sync.configs.model import RuleKey
from coins_sync.errors import (
    ApplyStoppedError,
    CheckpointError,
    CoinsSyncError,
    StateConflictError,
)
from coins_sync.state.model import State


@dataclass
class ApplyReport:
    """What an apply did. ``failed`` and ``uncertain`` list keys with a short reason."""

    created: list[RuleKey] = field(default_factory=list)
    imported: list[RuleKey] = field(default_factory=list)
    updated: list[RuleKey] = field(default_factory=list)
    moved: list[RuleKey] = field(default_factory=list)
    retired: list[RuleKey] = field(default_factory=list)
    failed: list[tuple[RuleKey, str]] = field(default_factory=list)
    uncertain: list[tuple[RuleKey, str]] = field(default_factory=list)
    skipped_uncertain: list[RuleKey] = field(default_factory=list)
    #: Why the run stopped early: a refused credential or an unreachable API.
    stopped_by: str | None = None
    not_started: int = 0
    interrupted: bool = False
    signal_name: str = ""  # "SIGTERM" when that stopped the run, else "" (SIGINT or none)
    #: Confirmed results that the state file could not take: (key, coinConfigId). Printed
    #: so that no id the server confirmed is known only to a lost process.
    unrecorded: list[tuple[RuleKey, str]] = field(default_factory=list)
    rescue: Path | None = None
    state: State | None = None
    #: How the server's rate limit (HTTP 429) paced the run (Pacer.summary), or None.
    rate_limit: str | None = None

    @property
    def ok(self) -> bool:
        # an uncertain create left unresolved needs a person, so it is not "ok" either
        return not (self.failed or self.uncertain or self.skipped_uncertain or self.interrupted)

    def summary(self) -> str:
        parts = [
            f"{len(self.created)} created",
            f"{len(self.updated)} updated",
            f"{len(self.failed)} failed",
            f"{len(self.uncertain)} uncertain",
        ]
        if self.retired:
            parts.insert(2, f"{len(self.retired)} retired")
        if self.moved:
            parts.insert(1, f"{len(self.moved)} moved")
        if self.imported:
            parts.insert(1, f"{len(self.imported)} imported")
        if self.skipped_uncertain:
            parts.append(f"{len(self.skipped_uncertain)} uncertain skipped")
        if self.not_started:
            parts.append(f"{self.not_started} not started")
        return "Apply: " + ", ".join(parts) + "."

    def to_json(self, env: str, only: Sequence[str] = ()) -> dict[str, Any]:
        """``apply --format json``'s final report (schemas/apply-report.schema.json).
        Reasons are scrubbed of secrets here, before JSON escapes them."""
        from coins_sync.redact import redact

        def keyed(items: Sequence[tuple[RuleKey, str]], name: str) -> list[dict[str, Any]]:
            return [{"key": key.as_dict(), name: redact(text)} for key, text in items]

        return {
            "format_version": 1,
            "environment": env,
            "ok": self.ok,
            "summary": {
                "created": len(self.created),
                "imported": len(self.imported),
                "updated": len(self.updated),
                "moved": len(self.moved),
                "retired": len(self.retired),
                "failed": len(self.failed),
                "uncertain": len(self.uncertain),
                "uncertain_skipped": len(self.skipped_uncertain),
                "not_started": self.not_started,
            },
            "created": [key.as_dict() for key in self.created],
            "imported": [key.as_dict() for key in self.imported],
            "updated": [key.as_dict() for key in self.updated],
            "moved": [key.as_dict() for key in self.moved],
            "retired": [key.as_dict() for key in self.retired],
            "failed": keyed(self.failed, "reason"),
            "uncertain": keyed(self.uncertain, "reason"),
            "uncertain_skipped": [key.as_dict() for key in self.skipped_uncertain],
            "unrecorded": keyed(self.unrecorded, "coinConfigId"),
            "stopped_by": None if self.stopped_by is None else redact(self.stopped_by),
            "interrupted": self.interrupted,
            "rate_limit": self.rate_limit,
            "only": list(only),
        }


def describe(error: BaseException) -> str:
    if isinstance(error, CoinsSyncError):
        return str(error)
    if isinstance(error, OSError):  # of a rename, the target is the file that matters
        target = error.filename2 or error.filename
        where = f": {target}" if target else ""
        return f"{error.strerror or error}{where}"
    return f"unexpected {type(error).__name__}: {error}"


def stopped_error(
    report: ApplyReport, errors: Sequence[BaseException], fold_error: Exception | None
) -> ApplyStoppedError:
    """The error of a run that stopped early: why, and where its results are kept."""
    parts = []
    if errors:
        first = f"apply stopped: {describe(errors[0])}; nothing new was sent after it"
        if len(errors) > 1:
            first += f" ({len(errors) - 1} more worker(s) failed too)"
        parts.append(first)
    if fold_error is None:
        parts.append("Every result confirmed so far is recorded in the state")
    elif isinstance(fold_error, CheckpointError):
        parts.append(describe(fold_error))  # it says what is recorded, and where the rest is
    else:
        what = (
            "apply did not overwrite the state"
            if isinstance(fold_error, StateConflictError)
            else "apply could not write its results into the state"
        )
        where = _rescue_note(report)
        parts.append(
            f"{what[0].upper() if parts else what[0]}{what[1:]} ({describe(fold_error)}). "
            f"{where}. The next `coins-sync apply` (or `state rm`, `state import`) folds "
            "them into the state under its lock; `plan`, `report` and `state list` show "
            "them and say they are pending: run `coins-sync plan` and check it before "
            "applying again"
        )
    return ApplyStoppedError(". ".join(parts), report)


def _rescue_note(report: ApplyReport) -> str:
    if report.rescue is not None:
        return (
            f"The state on disk was left as it is; this run's results are kept in "
            f"{report.rescue} (and the journal)"
        )
    return (
        "The state on disk was left as it is; the journal and the audit log keep what "
        "was done, and the confirmed ids are listed above"
    )
