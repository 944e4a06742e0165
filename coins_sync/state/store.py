"""What every state backend offers (:class:`StateStore`) and who holds a lock."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

from coins_sync.state.journal import Journal
from coins_sync.state.model import State


@dataclass(frozen=True)
class LockHolder:
    """Who holds a state lock, as written beside it for a refused caller to read."""

    pid: int
    host: str
    user: str
    command: str
    since: str

    def describe(self) -> str:
        return (
            f"pid {self.pid} on {self.host} (user {self.user}), "
            f"running '{self.command}' since {self.since}"
        )


def os_user() -> str:
    """The operating-system user running this process, or ``unknown``."""
    import getpass  # imports here keep the start-up of validate and plan short

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


class StateStore(Protocol):
    """Where one environment's state lives. File today; a database backend can follow."""

    def describe(self) -> str:
        """A human name for messages, e.g. the state file's path."""
        ...

    def read(self) -> State:
        """The current state with any leftover journal folded in (in memory only)."""
        ...

    def write(self, state: State) -> State:
        """Persist ``state`` if its content changed; returns it with the serial written."""
        ...

    def lock(self, command: str, timeout: float = 0.0) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock, or raise LockError naming the holder."""
        ...

    def lock_holder(self) -> str | None:
        """Who holds the lock now, without taking it; None when nobody does."""
        ...

    def recover(self) -> tuple[State, tuple[str, ...]]:
        """Fold a leftover journal into the stored state (under the lock)."""
        ...

    def journal(self, state: State) -> Journal:
        """An append-only journal for an apply that starts from ``state``."""
        ...
