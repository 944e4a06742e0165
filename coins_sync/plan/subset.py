"""``--only``: plan and apply a subset of the rules, as Terraform's ``-target`` does.

A pattern is a company glob (``CEKEKCARDS``, ``ACME*``) or a key glob of three parts
(``GLOBEX/*/MEAL_*``), matched case-sensitively with :func:`fnmatch.fnmatchcase`. The
plan is made from the rules and state entries inside the subset only, so what lies
outside is left alone: it is neither created, updated nor reported as an orphan. The
plan's context records the patterns, so a saved plan is checked against the same subset.

A move (``movedFrom``) is one unit: a rule is inside the subset when its new key or the
key it moves from matches, and so is the state entry it moves from. Otherwise a subset
naming only the new key would plan a create beside the old config (two configs paying
for one event), and one naming only the old key would call the moving rule an orphan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

from coins_sync.configs.model import ConfigSet, Rule, RuleKey
from coins_sync.errors import SettingsError
from coins_sync.plan.online import Settled
from coins_sync.plan.reconcile import Action, Plan
from coins_sync.state.model import State


@dataclass(frozen=True)
class Subset:
    """The ``--only`` patterns; an empty subset is everything."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> Subset:
        """Check each pattern's shape; a bad one is a SettingsError naming it."""
        kept: list[str] = []
        for pattern in patterns:
            parts = pattern.split("/")
            if len(parts) not in (1, 3) or not all(parts):
                raise SettingsError(
                    f"--only {pattern!r}: give a company (CEKEKCARDS, ACME*) or a key "
                    "COMPANY/CONFIGURATION/EVENT, globs allowed (GLOBEX/*/MEAL_*)"
                )
            if pattern not in kept:
                kept.append(pattern)
        return cls(tuple(kept))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, key: RuleKey) -> bool:
        if not self.patterns:
            return True
        return any(
            fnmatchcase(str(key) if "/" in pattern else key.company_id, pattern)
            for pattern in self.patterns
        )

    def configs(self, configs: ConfigSet) -> ConfigSet:
        """The rules inside the subset; the digest stays the whole set's (a saved plan
        is fresh only while no rule file changed, inside the subset or not)."""
        if not self.patterns:
            return configs
        return replace(configs, rules=tuple(r for r in configs.rules if self._holds(r)))

    def _holds(self, rule: Rule) -> bool:
        """A rule is inside when its key or the key it moves from matches."""
        return self.matches(rule.key) or (
            rule.moved_from is not None and self.matches(rule.moved_from)
        )

    def state(self, state: State, configs: ConfigSet | None = None) -> State:
        """The entries and uncertain creates inside the subset, with the entries that
        a rule inside it moves from (``configs``: the whole set)."""
        if not self.patterns:
            return state
        moved = set[RuleKey]()
        if configs is not None:
            moved = {r.moved_from for r in configs.rules if r.moved_from and self._holds(r)}
        keep = {k for k in (*state.entries, *state.uncertain) if self.matches(k) or k in moved}
        return replace(
            state,
            entries={k: e for k, e in state.entries.items() if k in keep},
            uncertain={k: u for k, u in state.uncertain.items() if k in keep},
        )

    def settled(self, settled: Settled, configs: ConfigSet | None = None) -> Settled:
        """A settled state (pending updates read back) cut to the subset."""
        if not self.patterns:
            return settled
        state = self.state(settled.state, configs)
        drift = tuple(d for d in settled.drift if d.key in state.entries or self.matches(d.key))
        return Settled(self.state(settled.before, configs), state, drift)

    def check_matches(self, configs: ConfigSet, state: State) -> None:
        """Refuse a pattern that matches no rule and no state entry: a typo must not
        read as "no changes"."""
        keys = [r.key for r in configs.rules] + [*state.entries, *state.uncertain]
        for pattern in self.patterns:
            if not any(Subset((pattern,)).matches(key) for key in keys):
                raise SettingsError(
                    f"--only {pattern!r} matches no rule in the configs and no entry in the state"
                )

    def widen(self, partial: Plan, whole: State) -> Plan:
        """A plan made from the subset, with what depends on the whole state restored:
        ``managed`` (the update threshold is a share of everything managed) and the
        companies new to the state (one whose other rules are managed is not new)."""
        known = {key.company_id for key in whole.entries}
        new = sorted({c.key.company_id for c in partial.of(Action.CREATE)} - known)
        return replace(
            partial,
            managed=len(whole.entries),
            new_companies=tuple(new),
            context=replace(partial.context, only=self.patterns),
        )


def describe(patterns: Sequence[str]) -> str:
    """``--only A --only B/*/C`` as the summary names it."""
    return ", ".join(patterns)
