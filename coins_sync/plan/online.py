"""Plans that read the server first: the read-back of pending updates, and ``--refresh``.

What is promised:

* An entry whose last update's outcome is unknown (``pending``) is never planned from
  the amount the state holds: :func:`settle` reads it back (one GET each) and a plan
  made from a :class:`Settled` state plans from what the server really holds.
* A config that is missing or moved on the server keeps its mark and is never updated
  here: a person decides (the drift says why).
* Nothing here writes the state; the caller decides whether to record what was read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from coins_sync.configs.model import Rule, RuleKey
from coins_sync.plan.drift import Drift, Reader, refresh, untouchable
from coins_sync.plan.reconcile import Action, Plan, PlanContext, adopt_moves, plan
from coins_sync.state.model import State, StateEntry


def unverified(state: State) -> dict[RuleKey, StateEntry]:
    """The entries of an update whose outcome is unknown: their server amount is unknown."""
    return {key: entry for key, entry in state.entries.items() if entry.pending is not None}


@dataclass(frozen=True)
class Settled:
    """A state whose pending updates were read back (``state``), the state as it was
    read (``before``), and the drift found on the way. Only :func:`settle` makes one
    that had pending entries; :meth:`unread` wraps a state that has none."""

    before: State
    state: State
    drift: tuple[Drift, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the read-back changed what the state should record."""
        return self.state.content() != self.before.content()

    @classmethod
    def unread(cls, state: State) -> Settled:
        """A state with no pending update: nothing to read back. A state that has one
        is refused, so no plan is ever made from a pending entry's stale amount."""
        if unverified(state):
            raise ValueError("a state with pending updates must be settled (read back) first")
        return cls(state, state)


def settle(state: State, reader: Reader, parallelism: int) -> Settled:
    """Read back each entry of an update whose outcome is unknown (one GET each).

    An entry the server holds under the same key takes the server's amount and loses
    its mark: that is what the server really holds. One that is missing or moved keeps
    its mark (a person decides), and the drift says why. Writes nothing."""
    pending = unverified(state)
    if not pending:
        return Settled(state, state)
    read_back, drift = refresh(replace(state, entries=pending), reader, parallelism)
    blocked = untouchable(drift)
    settled = {
        key: replace(entry, pending=None)
        for key, entry in read_back.entries.items()
        if key not in blocked
    }
    return Settled(state, replace(state, entries={**state.entries, **settled}), tuple(drift))


def plan_settled(rules: Iterable[Rule], settled: Settled, context: PlanContext) -> Plan:
    """The plan of a settled state: a missing or moved pending config is not updated."""
    if not settled.drift:
        return plan(rules, settled.state, context)
    drift = list(settled.drift)
    return _without_blocked(adopt_moves(plan(rules, settled.state, context), drift), drift)


def plan_refreshed(
    rules: Iterable[Rule],
    state: State,
    context: PlanContext,
    reader: Reader,
    parallelism: int,
    on_tick: Callable[[int, int, int], None] | None = None,
) -> Plan:
    """``--refresh``: every managed config is read back first (pending ones included)
    and drift is planned; ``on_tick(done, total, failed)`` after each read."""
    read_back, drift = refresh(state, reader, parallelism, on_tick)
    known = {key: replace(e, pending=None) for key, e in read_back.entries.items()}
    refreshed = replace(state, entries={**state.entries, **known})
    return _without_blocked(adopt_moves(plan(rules, refreshed, context), drift), drift)


def _without_blocked(fresh: Plan, drift: list[Drift]) -> Plan:
    """Neither an update nor a retirement is sent to a config that is missing or now
    carries another key (a move found done on the server is kept: see adopt_moves)."""
    blocked = untouchable(drift)
    kept = tuple(
        change
        for change in fresh.changes
        if not (change.action in (Action.UPDATE, Action.RETIRE) and change.key in blocked)
    )
    return replace(fresh, changes=kept, drift=tuple(drift))
