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
from dataclasses import dataclass, field

from coins_sync import defaults
from coins_sync.configs.model import Rule, RuleKey, Source
from coins_sync.errors import AmountOutOfRangeError, PlanConflictError, TooManyUpdatesError
from coins_sync.plan.drift import Drift, DriftField
from coins_sync.state.model import RecordedIds, State


class Action(enum.Enum):
    """What apply would do for one key. Declaration order is the display order."""

    CREATE = "create"
    IMPORT = "import"
    UPDATE = "update"
    UNCERTAIN = "uncertain"
    ORPHAN = "orphan"
    UNCHANGED = "unchanged"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {action: index for index, action in enumerate(Action)}
#: Actions that make a plan "have changes" (exit 2 under --detailed-exitcode).
CHANGING = frozenset({Action.CREATE, Action.IMPORT, Action.UPDATE, Action.UNCERTAIN})


@dataclass(frozen=True, slots=True)
class Change:
    """One key's planned action.

    ``amount`` is the desired amount (for orphans, the amount in state); ``before`` the
    amount in state for updates; ``coin_config_id`` the server's id when one is known
    (for an import, the id the configs name).
    """

    action: Action
    key: RuleKey
    amount: int
    before: int | None = None
    source: Source | None = None
    coin_config_id: str | None = None

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
        return tuple(sorted({d.key for d in self.drift if d.field is not DriftField.AMOUNT}))

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
            for change in self.of(Action.CREATE, Action.IMPORT, Action.UPDATE, Action.UNCERTAIN)
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
        updates = len(self.of(Action.UPDATE))
        managed = self.managed
        if managed >= safety.min_entries and updates > safety.update_threshold * managed:
            share = 100 * updates / managed
            raise TooManyUpdatesError(
                f"unsafe plan: {updates} updates touch {share:.0f}% of {managed} managed "
                f"entries, over the {safety.update_threshold:.0%} threshold. Review the plan, "
                "then rerun with --force, or raise update_threshold for this environment",
                updates=updates,
                managed=managed,
                threshold=safety.update_threshold,
            )


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

    Raises PlanConflictError when a ``coinConfigId`` in the configs contradicts the state.
    """
    desired: Mapping[RuleKey, Rule] = {rule.key: rule for rule in rules}
    conflicts = _id_conflicts(desired, state)
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
        if entry is None:
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
    for key, entry in state.entries.items():
        if key not in desired:
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


@dataclass(frozen=True)
class SafetyRules:
    """Guards against a plan that touches too much at once, in the manner of octoDNS."""

    max_amount: int = defaults.MAX_AMOUNT
    update_threshold: float = defaults.UPDATE_THRESHOLD
    min_entries: int = defaults.UPDATE_THRESHOLD_MIN_ENTRIES
