"""Audited edits of the state outside apply: ``state rm`` and ``state push``.

Each takes the state lock, changes the state in one write and leaves an audit record;
``state import`` (which reads the server first) lives in :mod:`coins_sync.apply.adopt`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coins_sync.configs.model import RuleKey
from coins_sync.errors import StateError
from coins_sync.state.audit import AuditAction, AuditRecord
from coins_sync.state.journal import Outcome
from coins_sync.state.model import State, StateEntry
from coins_sync.workspace import Workspace


def forget(workspace: Workspace, key: RuleKey, command: str) -> tuple[State, StateEntry]:
    """Remove ``key`` from state (it stays on the server). Takes the lock; the audit
    log records it.

    Returns the new state and what was forgotten (an uncertain key has no id: "").
    """
    store = workspace.store
    with store.lock(command, workspace.settings.lock_timeout):
        state, _ = store.recover()
        entry = state.entries.get(key)
        pending = state.uncertain.get(key)
        if entry is None and pending is None:
            raise StateError(f"{key} is not in {store.describe()}")
        if entry is None and pending is not None:
            entry = StateEntry(key, pending.amount, "")
        assert entry is not None
        written = store.write(state.without(key))
    workspace.record_audit(
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


def push_state(
    workspace: Workspace, source: Path, force: bool, confirm: Callable[[State, State], None]
) -> State:
    """``state push``: replace the database's state with the file state ``source``
    (its journal folded in), under both locks.

    A state of another lineage, or a serial that is not newer than the database's,
    is refused unless ``force``. ``confirm(current, pushed)`` runs under the locks
    just before the write and raises to refuse it. Returns the state written.
    """
    from coins_sync.state.file import FileStateStore

    store = workspace.postgres_store("push")
    timeout = workspace.settings.lock_timeout
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
