"""The reconciler: desired rules versus state, as a typed, sorted plan.

``plan()`` is pure: no I/O, no side effects, so it is tested with plain values. The
safety check (:meth:`Plan.raise_if_unsafe`) is a separate call, so a plan can always be
shown, even when it may not be applied.
"""

from __future__ import annotations

import enum
import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from coins_sync import defaults
from coins_sync.configs.model import Rule, RuleKey, Source, quick_init
from coins_sync.errors import AmountOutOfRangeError, PlanConflictError, TooManyUpdatesError
from coins_sync.gcpause import cyclic_gc_paused
from coins_sync.plan.drift import Drift, DriftField
from coins_sync.state.model import RecordedIds, State


class Action(enum.Enum):
    """What apply would do for one key. Declaration order is the display order."""

    CREATE = "create"
    IMPORT = "import"
    MOVE = "move"
    UPDATE = "update"
    RETIRE = "retire"
    UNCERTAIN = "uncertain"
    ORPHAN = "orphan"
    UNCHANGED = "unchanged"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {action: index for index, action in enumerate(Action)}
#: Actions that make a plan "have changes" (exit 2 under --detailed-exitcode).
CHANGING = frozenset(
    {Action.CREATE, Action.IMPORT, Action.MOVE, Action.UPDATE, Action.RETIRE, Action.UNCERTAIN}
)
#: Actions that PATCH a config the state records: the update threshold counts them.
PATCHING = frozenset({Action.MOVE, Action.UPDATE, Action.RETIRE})


@quick_init
@dataclass(frozen=True, slots=True)
class Change:
    """One key's planned action.

    ``amount`` is the desired amount (for orphans, the amount in state); ``before`` the
    amount in state for updates, moves and retirements; ``coin_config_id`` the server's
    id when one is known (for an import, the id the configs name). A move's ``key`` is
    the new key and ``moved_from`` the key the state records; ``on_server`` says a
    refresh found the config already carrying the new key (moved by hand), so apply
    records the move without PATCHing the key fields.
    """

    action: Action
    key: RuleKey
    amount: int
    before: int | None = None
    source: Source | None = None
    coin_config_id: str | None = None
    moved_from: RuleKey | None = None
    on_server: bool = False

    @property
    def sort_key(self) -> tuple[int, RuleKey]:
        return (self.action.rank, self.key)


@dataclass(frozen=True)
class PlanContext:
    """What a saved plan must still match when it is applied."""

    env: str = "default"
    lineage: str = ""
    serial: int = 0
    configs_digest: str = ""
    #: The ``--only`` patterns of a partial plan (plan/subset.py); empty: every rule.
    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Every key's change, sorted by action then key, plus what it was made against.

    ``drift`` holds what ``--refresh`` found on the server (empty for an offline plan).
    ``new_companies`` lists the companies this plan creates rules for although the state
    records no entry of theirs (the first-contact guard); ``agreeing_ids`` counts the
    rules whose ``coinConfigId`` in the configs agrees with the state.
    """

    changes: tuple[Change, ...]
    managed: int
    context: PlanContext = field(default_factory=PlanContext)
    drift: tuple[Drift, ...] = ()
    new_companies: tuple[str, ...] = ()
    agreeing_ids: int = 0
    #: who held the state lock when this plan was made (an apply running), or ""
    lock_holder: str = ""
    #: uncertain creates that are that apply's creates in flight, not unknown outcomes
    in_flight: tuple[RuleKey, ...] = ()

    @property
    def first_contact_creates(self) -> int:
        """How many creates are for a company in ``new_companies``."""
        new = set(self.new_companies)
        return sum(1 for c in self.of(Action.CREATE) if c.key.company_id in new)

    def summary(self) -> dict[str, int]:
        counts = Counter(change.action for change in self.changes)
        return {action.value: counts.get(action, 0) for action in Action}

    def of(self, *actions: Action) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.action in actions)

    @property
    def needs_a_person(self) -> tuple[RuleKey, ...]:
        """Managed keys whose config is gone (404) or moved to other key fields on the
        server: coins-sync cannot fix them, so they are changes for a person to settle."""
        settled = {c.moved_from for c in self.changes if c.on_server}
        return tuple(
            sorted(
                {
                    d.key
                    for d in self.drift
                    if d.field is not DriftField.AMOUNT and d.key not in settled
                }
            )
        )

    @property
    def has_changes(self) -> bool:
        return bool(self.needs_a_person) or any(
            change.action in CHANGING for change in self.changes
        )

    def raise_if_unsafe(self, safety: SafetyRules, force: bool = False) -> None:
        """Raise an UnsafePlanError subclass when this plan should not be applied as it is.

        An amount out of range (:class:`AmountOutOfRangeError`) is refused even with
        ``force``; too many updates (:class:`TooManyUpdatesError`) only without it.
        """
        too_big = [
            change
            for change in self.of(
                Action.CREATE, Action.IMPORT, Action.MOVE, Action.UPDATE, Action.UNCERTAIN
            )
            if change.amount > safety.max_amount or change.amount < 0
        ]
        if too_big:
            first = too_big[0]
            raise AmountOutOfRangeError(
                f"{first.key}: amount {first.amount} is above max_amount {safety.max_amount} "
                f"({len(too_big)} such change(s)); this is always refused",
                key=str(first.key),
                amount=first.amount,
                max_amount=safety.max_amount,
                count=len(too_big),
            )
        if force:
            return
        updates = len(self.of(*PATCHING))
        managed = self.managed
        if managed >= safety.min_entries and updates > safety.update_threshold * managed:
            share = 100 * updates / managed
            raise TooManyUpdatesError(
                f"unsafe plan: {updates} updates{_included(self)} touch "
                f"{share:.0f}% of {managed} managed "
                f"entries, over the {safety.update_threshold:.0%} threshold. Review the plan, "
                "then rerun with --force, or raise update_threshold for this environment",
                updates=updates,
                managed=managed,
                threshold=safety.update_threshold,
            )


def _included(plan: Plan) -> str:
    """What the update count includes besides updates, when anything."""
    moves, retires = len(plan.of(Action.MOVE)), len(plan.of(Action.RETIRE))
    if not moves and not retires:
        return ""
    return f" ({moves} moves and {retires} retirements included)"


_change_key = operator.attrgetter("key")


def _id_conflicts(desired: Mapping[RuleKey, Rule], state: State) -> list[str]:
    """Every rule whose ``coinConfigId`` the state records otherwise: for that key, or
    as the id of another key (the check :class:`RecordedIds` makes for every import)."""
    adopting = [rule for rule in desired.values() if rule.coin_config_id is not None]
    if not adopting:
        return []
    recorded = RecordedIds(state)
    problems: list[str] = []
    for rule in adopting:
        assert rule.coin_config_id is not None
        old = state.entries.get(rule.moved_from) if rule.moved_from is not None else None
        if old is not None and rule.key not in state.entries:
            continue  # a move: _moves checks the id against the old key's
        reason = recorded.conflict(rule.key, rule.coin_config_id)
        if reason is not None:
            problems.append(
                f"{rule.source}: {rule.key} has coinConfigId {rule.coin_config_id} in the "
                f"configs, but {reason}. Fix the file, or run `coins-sync state rm KEY` "
                "for the record that is wrong"
            )
    return problems


def plan(
    rules: Iterable[Rule],
    state: State,
    context: PlanContext | None = None,
) -> Plan:
    """Diff desired ``rules`` against ``state``. Pure.

    Raises PlanConflictError when a ``coinConfigId`` in the configs contradicts the state,
    or a ``movedFrom`` cannot be a move (see :func:`_moves`).
    """
    with cyclic_gc_paused():  # a change per rule, and no reference cycle among them
        return _plan(rules, state, context)


def _plan(rules: Iterable[Rule], state: State, context: PlanContext | None) -> Plan:
    desired: Mapping[RuleKey, Rule] = {rule.key: rule for rule in rules}
    conflicts = _id_conflicts(desired, state)
    moves, move_conflicts = _moves(desired, state)
    conflicts.extend(move_conflicts)
    if conflicts:
        raise PlanConflictError("\n".join(conflicts))
    # One list per action; sorting each by key gives the (rank, key) order without
    # hashing an Enum member per change (it matters at 100k rules).
    by_action: dict[Action, list[Change]] = {action: [] for action in Action}
    creates, updates = by_action[Action.CREATE], by_action[Action.UPDATE]
    unchanged, uncertain = by_action[Action.UNCHANGED], by_action[Action.UNCERTAIN]
    imports = by_action[Action.IMPORT]
    agreeing = 0
    for key, rule in desired.items():
        entry = state.entries.get(key)
        moved = moves.get(key)
        if moved is not None:
            by_action[Action.MOVE].append(moved)
        elif rule.retired and entry is not None and entry.amount > 0:
            by_action[Action.RETIRE].append(
                Change(
                    Action.RETIRE,
                    key,
                    0,
                    before=entry.amount,
                    source=rule.source,
                    coin_config_id=entry.coin_config_id,
                )
            )
        elif rule.retired and entry is None and rule.coin_config_id is None:
            # never created: nothing pays, nothing to do (and nothing is created)
            unchanged.append(Change(Action.UNCHANGED, key, 0, source=rule.source))
        elif entry is None:
            if rule.coin_config_id is not None:  # adopt it; this also settles an uncertain key
                imports.append(
                    Change(
                        Action.IMPORT,
                        key,
                        rule.amount,
                        source=rule.source,
                        coin_config_id=rule.coin_config_id,
                    )
                )
            elif key in state.uncertain:
                uncertain.append(Change(Action.UNCERTAIN, key, rule.amount, source=rule.source))
            else:
                creates.append(Change(Action.CREATE, key, rule.amount, source=rule.source))
        elif entry.amount != rule.amount:
            agreeing += rule.coin_config_id is not None
            updates.append(
                Change(
                    Action.UPDATE,
                    key,
                    rule.amount,
                    before=entry.amount,
                    source=rule.source,
                    coin_config_id=entry.coin_config_id,
                )
            )
        else:
            agreeing += rule.coin_config_id is not None
            unchanged.append(
                Change(
                    Action.UNCHANGED,
                    key,
                    rule.amount,
                    source=rule.source,
                    coin_config_id=entry.coin_config_id,
                )
            )
    moved_away = {change.moved_from for change in moves.values()}
    for key, entry in state.entries.items():
        if key not in desired and key not in moved_away:
            by_action[Action.ORPHAN].append(
                Change(Action.ORPHAN, key, entry.amount, coin_config_id=entry.coin_config_id)
            )
    for key, left in state.uncertain.items():
        if key not in desired and key not in state.entries:
            uncertain.append(Change(Action.UNCERTAIN, key, left.amount))
    changes: list[Change] = []
    for action in Action:
        changes.extend(sorted(by_action[action], key=_change_key))
    known = {key.company_id for key in state.entries}
    new_companies = sorted({c.key.company_id for c in creates} - known)
    return Plan(
        tuple(changes),
        managed=len(state.entries),
        context=context or PlanContext(),
        new_companies=tuple(new_companies),
        agreeing_ids=agreeing,
    )


def _moves(
    desired: Mapping[RuleKey, Rule], state: State
) -> tuple[dict[RuleKey, Change], list[str]]:
    """The moves that ``movedFrom`` asks for, by new key, and every ``movedFrom`` that
    cannot be one: a typo (the state holds neither key), a collision (it holds both),
    or an old key whose create is still uncertain.

    A ``movedFrom`` whose new key the state already holds is done: a no-op. A state
    with no entry at all (a new environment) has nothing to move from, so the rule is
    planned as any other.
    """
    moves: dict[RuleKey, Change] = {}
    problems: list[str] = []
    if not state.entries:
        return moves, problems
    for key, rule in desired.items():
        old = rule.moved_from
        if old is None:
            continue
        before, after = state.entries.get(old), state.entries.get(key)
        if before is not None and after is not None:
            problems.append(
                f"{rule.source}: movedFrom {old} collides: the state records both {old} "
                f"(id {before.coin_config_id}) and {key} (id {after.coin_config_id}). "
                f"Nothing was sent. Keep one: `coins-sync state rm KEY` forgets the other "
                "(it stays on the server), then set its amount to 0 by hand or retire it"
            )
        elif before is not None:
            if rule.coin_config_id is not None and rule.coin_config_id != before.coin_config_id:
                problems.append(
                    f"{rule.source}: {key} has coinConfigId {rule.coin_config_id}, but "
                    f"movedFrom {old} is recorded as {before.coin_config_id}"
                )
                continue
            moves[key] = Change(
                Action.MOVE,
                key,
                rule.amount,
                before=before.amount,
                source=rule.source,
                coin_config_id=before.coin_config_id,
                moved_from=old,
            )
        elif after is None and old in state.uncertain:
            problems.append(
                f"{rule.source}: movedFrom {old}, whose create is uncertain: resolve it "
                f"first (`coins-sync state import {old} ID`, or `state rm {old}`)"
            )
        elif after is None and rule.coin_config_id is None:
            problems.append(
                f"{rule.source}: movedFrom {old} names a key the state does not record "
                f"(nor {key}): a typo would create a second config while the old one keeps "
                "paying. Nothing was sent. Fix movedFrom to the key `coins-sync state list` "
                "shows, or remove it to create the rule as a new one"
            )
    return moves, problems


def adopt_moves(fresh: Plan, drift: Iterable[Drift]) -> Plan:
    """A refreshed plan's moves in the light of what the server holds. Pure.

    A move whose old config already carries the new key on the server (moved by hand,
    or by a PATCH whose answer was lost) is recorded without a PATCH of the key fields
    (``on_server``); one whose old config is gone (404) or carries a third key is left
    out: a person decides, as for any config moved on the server.
    """
    server: dict[RuleKey, dict[str, str]] = {}
    for d in drift:
        if d.field is DriftField.MISSING:
            server[d.key] = {}
        elif d.field is not DriftField.AMOUNT:
            server.setdefault(d.key, d.key.as_dict())[d.field.value] = d.on_server
    if not server:
        return fresh
    changes: list[Change] = []
    for change in fresh.changes:
        old = change.moved_from
        if change.action is Action.MOVE and old is not None and old in server:
            if server[old] != change.key.as_dict():
                continue
            change = replace(change, on_server=True)
        changes.append(change)
    return replace(fresh, changes=tuple(changes))


@dataclass(frozen=True)
class SafetyRules:
    """Guards against a plan that touches too much at once, in the manner of octoDNS."""

    max_amount: int = defaults.MAX_AMOUNT
    update_threshold: float = defaults.UPDATE_THRESHOLD
    min_entries: int = defaults.UPDATE_THRESHOLD_MIN_ENTRIES
