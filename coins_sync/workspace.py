"""A workspace binds one environment's settings to its configs and state.

It is what the CLI builds from options, and what each command makes one call on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coins_sync.configs.loader import RuleLoader
from coins_sync.configs.model import ConfigSet, RuleKey
from coins_sync.errors import SettingsError, StateError
from coins_sync.plan.drift import Drift, Reader, refresh, untouchable
from coins_sync.plan.reconcile import Action, Plan, PlanContext, SafetyRules, plan
from coins_sync.plan.subset import Subset
from coins_sync.settings import Settings
from coins_sync.state.audit import (
    AuditAction,
    AuditLog,
    AuditRecord,
    AuditSink,
    audit_path_for,
    read_audit,
)
from coins_sync.state.file import open_store
from coins_sync.state.journal import Outcome
from coins_sync.state.model import State, StateEntry
from coins_sync.state.store import StateStore

if TYPE_CHECKING:  # validate and an offline plan never load the API client
    from coins_sync.apply.adopt import BulkResult, ImportRow
    from coins_sync.enkash import RemoteConfig
    from coins_sync.state.postgres import PostgresStateStore


def open_backend(settings: Settings) -> StateStore:
    """The state store of an environment: its file, or its PostgreSQL schema."""
    if settings.backend == "postgres":
        from coins_sync.state.postgres import PostgresStateStore

        rescue = settings.state.with_name(settings.state.stem + ".pg-rescue.jsonl")
        return PostgresStateStore(settings.env, settings.pg_schema, rescue_path=rescue)
    return open_store(settings.state)


def unverified(state: State) -> dict[RuleKey, StateEntry]:
    """The entries of an update whose outcome is unknown: their server amount is unknown."""
    return {key: entry for key, entry in state.entries.items() if entry.pending is not None}


@dataclass
class Workspace:
    """One environment: where its rules are, where its state is, and its guards."""

    settings: Settings
    store: StateStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = open_backend(self.settings)

    def states_elsewhere(self, limit: int = 20_000) -> list[Path]:
        """State files named like this environment's that already record entries
        somewhere else under the project root (a bounded walk, hidden folders and
        virtualenvs skipped). Apply refuses to start a new, empty state next to them,
        which is how a run from the wrong folder would create every rule twice."""
        if self.settings.backend != "file":
            return []
        mine = self.settings.state.resolve()
        root = self.settings.root.resolve()
        found: list[Path] = []
        seen = 0
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "node_modules")
            seen += len(files) + len(dirs)
            if seen > limit:
                break
            if mine.name not in files:
                continue
            candidate = Path(folder) / mine.name
            if candidate.resolve() == mine:
                continue
            try:
                data = json.loads(candidate.read_bytes()[: 64 * 1024 * 1024])
            except (OSError, ValueError, RecursionError):
                continue
            if isinstance(data, dict) and data.get("lineage") and data.get("entries"):
                found.append(candidate)
        return found

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
                only.state(state), only.configs(configs), refresh_with, verify_with, on_tick
            )
            return only.widen(replace(partial, context=self.context(whole, configs)), whole)
        context = self.context(state, configs)
        if refresh_with is not None:
            read_back, drift = refresh(state, refresh_with, self.settings.parallelism, on_tick)
            known = {key: replace(e, pending=None) for key, e in read_back.entries.items()}
            refreshed = replace(state, entries={**state.entries, **known})
        elif verify_with is not None and unverified(state):
            refreshed, drift = self.settle(state, verify_with)
        else:
            return plan(configs.rules, state, context)
        fresh = plan(configs.rules, refreshed, context)
        blocked = untouchable(drift)
        kept = tuple(
            change
            for change in fresh.changes
            if not (change.action is Action.UPDATE and change.key in blocked)
        )
        return replace(fresh, changes=kept, drift=tuple(drift))

    def settle(self, state: State, reader: Reader) -> tuple[State, list[Drift]]:
        """Read back each entry of an update whose outcome is unknown (one GET each).

        An entry the server holds under the same key takes the server's amount and loses
        its mark: that is what the server really holds. One that is missing or moved
        keeps its mark (a person decides), and the drift says why. Writes nothing."""
        pending = unverified(state)
        if not pending:
            return state, []
        read_back, drift = refresh(
            replace(state, entries=pending), reader, self.settings.parallelism
        )
        blocked = untouchable(drift)
        settled = {
            key: replace(entry, pending=None)
            for key, entry in read_back.entries.items()
            if key not in blocked
        }
        return replace(state, entries={**state.entries, **settled}), drift

    def forget(self, key: RuleKey, command: str) -> tuple[State, StateEntry]:
        """Remove ``key`` from state (it stays on the server). Takes the lock; the audit
        log records it.

        Returns the new state and what was forgotten (an uncertain key has no id: "").
        """
        with self.store.lock(command, self.settings.lock_timeout):
            state, _ = self.store.recover()
            entry = state.entries.get(key)
            pending = state.uncertain.get(key)
            if entry is None and pending is None:
                raise StateError(f"{key} is not in {self.store.describe()}")
            if entry is None and pending is not None:
                entry = StateEntry(key, pending.amount, "")
            assert entry is not None
            written = self.store.write(state.without(key))
        self._audit(
            AuditRecord(
                AuditAction.FORGET,
                key,
                Outcome.FORGOTTEN,
                entry.amount,
                None,
                entry.coin_config_id,
            )
        )
        return written, entry

    def import_entry(
        self, key: RuleKey, coin_config_id: str, fetch: Callable[[str], RemoteConfig], command: str
    ) -> tuple[State, StateEntry]:
        """Record an existing server config as ``key`` after checking it really is ``key``.

        This is how an uncertain create is resolved when it did reach the server, and how
        configs made by hand come under management. The audit log records it.
        """
        with self.store.lock(command, self.settings.lock_timeout):
            state, _ = self.store.recover()
            existing = state.entries.get(key)
            if existing is not None and existing.coin_config_id != coin_config_id:
                raise StateError(
                    f"{key} is already recorded as {existing.coin_config_id}; "
                    f"run `coins-sync state rm {key}` first if that record is wrong"
                )
            remote = fetch(coin_config_id)
            if remote.key != key:
                raise StateError(
                    f"config {coin_config_id} on the server is {remote.key}, not {key}; "
                    "nothing was recorded"
                )
            entry = StateEntry(key, remote.amount, remote.coin_config_id)
            written = self.store.write(state.with_entry(entry))
        self._audit(
            AuditRecord(
                AuditAction.IMPORT, key, Outcome.IMPORTED, None, entry.amount, entry.coin_config_id
            )
        )
        return written, entry

    def import_many(
        self,
        rows: Sequence[ImportRow],
        fetch: Callable[[str], RemoteConfig],
        command: str,
        on_tick: Callable[[int, int, int], None] | None = None,
    ) -> BulkResult:
        """Record every row whose id the server confirms as its key, in one state write.

        Takes the lock; GETs with the environment's parallelism. A row that fails is
        reported in the result and never keeps a matching row from being recorded.
        """
        from coins_sync.apply.adopt import BulkResult, check_rows, fetch_all

        result = BulkResult()
        with self.store.lock(command, self.settings.lock_timeout):
            state, _ = self.store.recover()
            todo, reasons = check_rows(rows, state)
            for row, reason in zip(rows, reasons, strict=True):
                if reason:
                    result.failed.append((row, reason))
            for row, got in fetch_all(todo, fetch, self.settings.parallelism, on_tick):
                if isinstance(got, StateEntry):
                    result.imported.append((row, got))
                else:
                    result.failed.append((row, got))
            if result.imported:
                entries = dict(state.entries)
                uncertain = dict(state.uncertain)
                for _, entry in result.imported:
                    entries[entry.key] = entry
                    uncertain.pop(entry.key, None)
                state = self.store.write(replace(state, entries=entries, uncertain=uncertain))
            result.state = state
        order = {id(row): index for index, row in enumerate(rows)}
        result.failed.sort(key=lambda item: order[id(item[0])])
        self._audit(
            *(
                AuditRecord(
                    AuditAction.IMPORT,
                    row.key,
                    Outcome.IMPORTED,
                    None,
                    entry.amount,
                    row.coin_config_id,
                )
                for row, entry in result.imported
            ),
            *(
                AuditRecord(
                    AuditAction.IMPORT,
                    row.key,
                    Outcome.FAILED,
                    None,
                    None,
                    row.coin_config_id,
                    reason,
                )
                for row, reason in result.failed
            ),
        )
        return result

    def _audit(self, *items: AuditRecord) -> None:
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

    def push_state(
        self, source: Path, force: bool, confirm: Callable[[State, State], None]
    ) -> State:
        """``state push``: replace the database's state with the file state ``source``
        (its journal folded in), under both locks.

        A state of another lineage, or a serial that is not newer than the database's,
        is refused unless ``force``. ``confirm(current, pushed)`` runs under the locks
        just before the write and raises to refuse it. Returns the state written.
        """
        from coins_sync.state.file import FileStateStore

        store = self.postgres_store("push")
        timeout = self.settings.lock_timeout
        file_store = FileStateStore(source)
        with file_store.lock("state push", timeout):
            pushed = file_store.read()
            if not pushed.exists:
                raise StateError(f"{source}: no state to push")
            with store.lock(f"state push --from {source}", timeout):
                current, _ = store.recover()
                if current.exists and not force:
                    if current.lineage != pushed.lineage:
                        raise StateError(
                            f"{source} is lineage {pushed.lineage}, but {store.describe()} "
                            f"holds lineage {current.lineage}: another state. Nothing was "
                            "pushed; pass --force to replace it"
                        )
                    if pushed.serial <= current.serial:
                        raise StateError(
                            f"{source} is serial {pushed.serial}, not newer than the "
                            f"database's serial {current.serial}. Nothing was pushed; pass "
                            "--force to replace it"
                        )
                confirm(current, pushed)
                return store.replace_state(pushed)
