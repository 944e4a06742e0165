"""The one exception tree of coins-sync.

Every expected failure is a :class:`CoinsSyncError`; the CLI turns it into
``Error: ...`` on stderr and exit code 1. Anything else is a bug.

::

    CoinsSyncError
    ├── SettingsError          bad [tool.coins-sync] settings or options
    │   └── UnknownFormatError  an output format no renderer has
    ├── ConfigError            rule files that cannot be used (carries .problems)
    ├── StateError             unreadable, corrupt or unknown-version state / journal
    │   ├── LockError          the state is locked by another holder (carries .holder)
    │   ├── StateConflictError another writer replaced the state; nothing was overwritten
    │   ├── FencedError        this run lost the PostgreSQL state lock; nothing more is written
    │   ├── CheckpointError    a checkpoint could not be made (.unrecorded, .kept)
    │   └── ApplyStoppedError  an apply stopped early (carries .report: what was done)
    ├── StalePlanError         a saved plan no longer matches state or configs
    ├── PlanFileError          a saved plan file that cannot be read or is not a plan
    ├── PlanConflictError      a coinConfigId in the configs contradicts the state
    ├── UnsafePlanError        a plan that must not be applied as it is (raise_if_unsafe)
    │   ├── AmountOutOfRangeError  a change's amount above max_amount; --force cannot pass it
    │   └── TooManyUpdatesError    updates over the update_threshold share, without --force
    ├── GitLeaseError          the git state-branch lease protocol cannot go on
    │   ├── LeaseHeldError     another run holds the lease (carries .holder)
    │   └── LeasePushError     the new state could not be pushed; the lease stays (.kept)
    └── ApiError               the coins API refused or failed (carries .status, .code)
        ├── AuthError          no credentials, token refused, or 401 after a refresh
        ├── UnreachableError   no connection on any try; nothing was sent (.address)
        ├── UnusableAmountError  a config whose amount is not a whole number of 0 or more
        ├── RateLimitError     the run's budget for waiting out 429s is spent; not sent
        └── OutcomeUnknownError  a create or update was sent and its result is unknown

Messages never contain secrets: callers pass only public values into them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # type names only: this module imports nothing of coins-sync at run time
    from coins_sync.configs.model import RuleKey


class Problem(NamedTuple):
    """One located problem in a rule file: ``path:line:col: message``.

    ``path`` is already relative to the working directory; ``line`` and ``col``
    are 1-based, and 0 when the problem concerns the file as a whole.

    Immutable, hashable and ordered by its fields, as a frozen ordered dataclass is; a
    named tuple because building a dataclass class costs start-up time (exec).
    """

    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class CoinsSyncError(Exception):
    """Root of every expected coins-sync failure."""


class SettingsError(CoinsSyncError):
    """The settings in pyproject.toml or the command-line options are invalid."""


class UnknownFormatError(SettingsError, ValueError):
    """An output format name that no renderer has."""


class ConfigError(CoinsSyncError):
    """Rule files failed validation; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem], where: str = "the rule files") -> None:
        self.problems = sorted(problems)
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in {where}")


class StateError(CoinsSyncError):
    """The state, its journal or its backup cannot be read or written safely."""


class LockError(StateError):
    """Another process holds the state lock; ``holder`` describes it when known."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class StateConflictError(StateError):
    """The state on disk is not the one this command read: another writer (a ``git pull``,
    another working copy) replaced it. Nothing was overwritten."""


class FencedError(StateError):
    """This run no longer holds the state lock; nothing more may be written or sent."""


class CheckpointError(StateError):
    """A journal's checkpoint could not be made: the run lost its lock or its database.

    ``unrecorded`` lists each result the server confirmed that the state does not hold,
    as (key, coinConfigId), possibly none; ``kept`` is the file they were written to
    instead (None when nothing was, or writing it failed). The message says both.
    """

    def __init__(
        self,
        message: str,
        unrecorded: Sequence[tuple[RuleKey, str]] = (),
        kept: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.unrecorded = tuple(unrecorded)
        self.kept = kept


class ApplyStoppedError(StateError):
    """An apply stopped early because a worker, a journal write or a checkpoint failed.

    ``report`` (an :class:`~coins_sync.apply.report.ApplyReport`) says what was done
    before it stopped; its ``state`` is what was folded. It is typed ``Any`` so that this
    module imports nothing of coins-sync (no import cycle, not even for type checking).
    """

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class StalePlanError(CoinsSyncError):
    """A saved plan was made against another state serial or other configs."""


class PlanFileError(CoinsSyncError):
    """A saved plan file cannot be read or is not a coins-sync plan."""


class PlanConflictError(CoinsSyncError):
    """A ``coinConfigId`` in the configs contradicts what the state records."""


class UnsafePlanError(CoinsSyncError):
    """The plan must not be applied as it is; each refusal is a subclass."""


class AmountOutOfRangeError(UnsafePlanError):
    """A change would set an amount above ``max_amount`` (or below 0); always refused.

    ``key`` and ``amount`` name the first such change, ``count`` how many there are.
    """

    def __init__(self, message: str, key: str, amount: int, max_amount: int, count: int) -> None:
        super().__init__(message)
        self.key = key
        self.amount = amount
        self.max_amount = max_amount
        self.count = count


class TooManyUpdatesError(UnsafePlanError):
    """The plan updates more than ``threshold`` of the ``managed`` entries; ``--force``
    passes it once a person has reviewed the plan."""

    def __init__(self, message: str, updates: int, managed: int, threshold: float) -> None:
        super().__init__(message)
        self.updates = updates
        self.managed = managed
        self.threshold = threshold


class ApiError(CoinsSyncError):
    """The coins API answered with an error or could not be reached.

    ``status`` is the HTTP status (None when no response arrived), ``code`` the
    envelope's ``response_code`` when there was one.
    """

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AuthError(ApiError):
    """Credentials are missing or were refused. Token requests are never retried."""


class UnusableAmountError(ApiError):
    """The server holds config ``coin_config_id`` (of ``key``, a RuleKey) with an amount
    that is not a whole number of 0 or more. ``raw`` is that amount as the server wrote
    it (cut short). Nothing may record or plan from it: a person decides."""

    def __init__(self, message: str, coin_config_id: str, key: object, raw: str) -> None:
        super().__init__(message, status=200)
        self.coin_config_id = coin_config_id
        self.key = key
        self.raw = raw


class UnreachableError(ApiError):
    """The API could not be reached at all (connection refused or timed out on every
    try); nothing was sent. ``address`` is ``host:port``."""

    def __init__(self, message: str, address: str) -> None:
        super().__init__(message)
        self.address = address


class RateLimitError(ApiError):
    """The server kept refusing requests (429) until the run's budget for waiting on
    its rate limit was spent; the request was not processed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=429)


class OutcomeUnknownError(ApiError):
    """A create or update was sent but whether the server processed it is unknown."""


class GitLeaseError(CoinsSyncError):
    """The lease protocol on a git state branch cannot go on (git failed or refused)."""


class LeaseHeldError(GitLeaseError):
    """Another run holds the lease on the state branch; ``holder`` describes it."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class LeasePushError(GitLeaseError):
    """The state could not be pushed onto this run's lease, which stays.

    ``kept`` lists the local files that hold the only copy of the new state.
    """

    def __init__(self, message: str, kept: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kept = tuple(kept)
