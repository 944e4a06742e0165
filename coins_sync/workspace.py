"""A workspace binds one environment's settings to its configs, state and audit log.

It is what the CLI builds from options and hands to the core: it opens the backend and
the audit sink, loads the configs and plans. It does nothing else; the commands that
change the state live with their job (apply in :mod:`coins_sync.apply`, ``state
import`` in :mod:`coins_sync.apply.adopt`, ``state rm`` and ``state push`` in
:mod:`coins_sync.edits`), and import this module, never the other way round.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coins_sync.configs.loader import RuleLoader
from coins_sync.configs.model import ConfigSet
from coins_sync.errors import SettingsError
from coins_sync.plan.drift import Reader
from coins_sync.plan.online import plan_refreshed, plan_settled, settle
from coins_sync.plan.reconcile import Action, Plan, PlanContext, SafetyRules, plan
from coins_sync.plan.subset import Subset
from coins_sync.settings import Settings
from coins_sync.state.audit import AuditLog, AuditRecord, AuditSink, audit_path_for, read_audit
from coins_sync.state.file import open_store
from coins_sync.state.model import State
from coins_sync.state.store import StateStore

if TYPE_CHECKING:  # validate and an offline plan never load the PostgreSQL driver
    from coins_sync.state.postgres import PostgresStateStore


def open_backend(settings: Settings) -> StateStore:
    """The state store of an environment: its file, or its PostgreSQL schema."""
    if settings.backend == "postgres":
        from coins_sync.state.postgres import PostgresStateStore

        rescue = pg_rescue_path(settings.state)
        return PostgresStateStore(settings.env, settings.pg_schema, rescue_path=rescue)
    return open_store(settings.state)


def pg_rescue_path(state: Path) -> Path:
    """Where a PostgreSQL environment keeps results the database did not take."""
    return state.with_name(state.stem + ".pg-rescue.jsonl")


@dataclass
class Workspace:
    """One environment: where its rules are, where its state is, and its guards."""

    settings: Settings
    store: StateStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = open_backend(self.settings)

    def refuse_fresh_clone(self, the_plan: Plan, force: bool) -> None:
        """The other half of the new-empty-state guard: no creates are planned from an
        empty state while the git state branch (``COINS_SYNC_STATE_BRANCH``, default
        ``coins-sync-state``) holds this environment's state file, as in a fresh clone.
        Offline: only refs the clone has. Raises StateError naming the branch."""
        if the_plan.context.lineage or force or self.settings.backend != "file":
            return  # a plan made against a state records its lineage
        if not the_plan.of(Action.CREATE):
            return
        from coins_sync.statebranch import refuse_fresh_clone

        refuse_fresh_clone(self.settings.state, self.store.describe())

    def audit_log(self, environ: Mapping[str, str]) -> AuditSink:
        """Where this environment's audit records go (file beside the state, or table)."""
        if self.settings.backend == "postgres":
            return self.postgres_store("audit").audit_log(environ)
        return AuditLog.beside(self.settings.state, self.settings.env, environ)

    def read_audit(self, unreadable: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every audit record of this environment, oldest first; lines of an audit log
        file that cannot be read are named in ``unreadable``."""
        if self.settings.backend == "postgres":
            return self.postgres_store("report").read_audit()
        return read_audit(audit_path_for(self.settings.state), unreadable)

    @property
    def safety(self) -> SafetyRules:
        s = self.settings
        return SafetyRules(
            max_amount=s.max_amount,
            update_threshold=s.update_threshold,
            min_entries=s.update_threshold_min_entries,
        )

    def load_configs(self, paths: list[Path] | None = None) -> ConfigSet:
        loader = RuleLoader(
            max_amount=self.settings.max_amount, max_file_bytes=self.settings.max_file_bytes
        )
        return loader.load(paths or [self.settings.configs])

    def read_state(self) -> State:
        """The state as apply would see it, leftover journal included; writes nothing."""
        return self.store.read()

    def context(self, state: State, configs: ConfigSet) -> PlanContext:
        return PlanContext(
            env=self.settings.env,
            lineage=state.lineage,
            serial=state.serial,
            configs_digest=configs.digest,
        )

    def plan(
        self,
        state: State | None = None,
        configs: ConfigSet | None = None,
        refresh_with: Reader | None = None,
        verify_with: Reader | None = None,
        on_tick: Callable[[int, int, int], None] | None = None,
        only: Subset | None = None,
    ) -> Plan:
        """Configs against state; never writes. Offline unless ``refresh_with`` is given,
        in which case every managed config is read back first and drift is planned, or
        ``verify_with``, which reads back only the entries of an update whose outcome is
        unknown (one GET each) and plans from what the server really holds."""
        configs = configs or self.load_configs()
        state = state or self.read_state()
        if only:  # outside the subset is left alone: filtered out before reconciling
            only.check_matches(configs, state)
            whole = state
            partial = self.plan(
                only.state(state, configs),
                only.configs(configs),
                refresh_with,
                verify_with,
                on_tick,
            )
            return only.widen(replace(partial, context=self.context(whole, configs)), whole)
        context = self.context(state, configs)
        width = self.settings.parallelism
        if refresh_with is not None:
            return plan_refreshed(configs.rules, state, context, refresh_with, width, on_tick)
        if verify_with is not None:
            return plan_settled(configs.rules, settle(state, verify_with, width), context)
        return plan(configs.rules, state, context)

    def record_audit(self, *items: AuditRecord) -> None:
        """Append ``items`` to this environment's audit log (actor and commit from the
        process environment)."""
        audit = self.audit_log(os.environ)
        try:
            for item in items:
                audit.record(item)
        finally:
            audit.close()

    def postgres_store(self, command: str) -> PostgresStateStore:
        """The environment's PostgreSQL store, or a clear error for a file environment."""
        from coins_sync.state.postgres import PostgresStateStore

        if not isinstance(self.store, PostgresStateStore):
            raise SettingsError(
                f'`state {command}` needs an environment with backend = "postgres"; '
                f"{self.settings.env!r} keeps its state in {self.store.describe()}"
            )
        return self.store
