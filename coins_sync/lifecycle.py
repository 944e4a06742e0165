"""A rule's life in the state: ``state mv`` (re-key without sending) and ``state show``
(one entry and its history from the audit log).

``state mv`` is for a config whose key fields were changed on the server by hand: the
state follows the server under the same id, and nothing is sent. A rename that should
also change the server is a ``movedFrom`` in the rule files instead (plan, then apply).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from coins_sync.configs.model import RuleKey
from coins_sync.errors import StateError
from coins_sync.state.audit import AuditAction, AuditRecord
from coins_sync.state.journal import Outcome
from coins_sync.state.model import State, StateEntry, Uncertain
from coins_sync.workspace import Workspace


def check_rename(state: State, old: RuleKey, new: RuleKey, where: str) -> StateEntry:
    """The entry ``state mv OLD NEW`` would re-key; a StateError says why it cannot."""
    if old == new:
        raise StateError(f"{old} and {new} are the same key; nothing to move")
    entry = state.entries.get(old)
    if entry is None:
        if old in state.uncertain:
            raise StateError(
                f"{old} is an uncertain create in {where}, with no id to move; resolve it "
                f"first (`coins-sync state import {old} ID`)"
            )
        raise StateError(f"{old} is not in {where}")
    taken = state.entries.get(new)
    if taken is not None:
        raise StateError(
            f"{new} is already recorded in {where} as {taken.coin_config_id}; {old} is "
            f"{entry.coin_config_id}. Nothing was changed"
        )
    if new in state.uncertain:
        raise StateError(
            f"{new} is an uncertain create in {where}; resolve it first "
            f"(`coins-sync state import {new} ID` or `state rm {new}`)"
        )
    return entry


def rename_entry(
    workspace: Workspace, old: RuleKey, new: RuleKey, command: str
) -> tuple[State, StateEntry]:
    """Record the entry of ``old`` as ``new`` under the same id, under the lock; the
    audit log records both keys. Nothing is sent. Returns the state written and the
    entry as it is now recorded."""
    store = workspace.store
    with store.lock(command, workspace.settings.lock_timeout):
        state, _ = store.recover()
        entry = check_rename(state, old, new, store.describe())
        written = store.write(state.rekeyed(old, new))
    moved = written.entries[new]
    audit = workspace.audit_log(os.environ)
    try:
        audit.record(
            AuditRecord(
                AuditAction.RENAME,
                new,
                Outcome.MOVED,
                entry.amount,
                entry.amount,
                entry.coin_config_id,
                "re-keyed in state only (state mv); nothing was sent",
                moved_from=old,
            )
        )
    finally:
        audit.close()
    return written, moved


@dataclass(frozen=True)
class EntryView:
    """``state show KEY``: what the state records for KEY, and every audit record that
    concerns it (its key, a move from or to it, or the id it is recorded under)."""

    key: RuleKey
    entry: StateEntry | None
    uncertain: Uncertain | None
    history: tuple[Mapping[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key.as_dict(),
            "entry": None if self.entry is None else self.entry.to_json(),
            "uncertain": None if self.uncertain is None else self.uncertain.to_json(),
            "history": [dict(record) for record in self.history],
        }


def _record_key(value: object) -> RuleKey | None:
    if not isinstance(value, dict):
        return None
    try:
        return RuleKey(str(value["companyId"]), str(value["configuration"]), str(value["event"]))
    except KeyError:
        return None


def show_entry(state: State, key: RuleKey, audit: Iterable[Mapping[str, Any]]) -> EntryView:
    """One key's entry and history; the history follows the entry's id across moves."""
    entry = state.entries.get(key)
    config_id = entry.coin_config_id if entry is not None else None
    history = tuple(
        record
        for record in audit
        if _record_key(record.get("key")) == key
        or _record_key(record.get("movedFrom")) == key
        or (config_id is not None and record.get("coinConfigId") == config_id)
    )
    return EntryView(key, entry, state.uncertain.get(key), history)


def render_view(view: EntryView, where: str) -> str:
    """``state show`` as text: the entry, then one line per audit record, oldest first."""
    lines = [f"{view.key}  ({where})"]
    entry = view.entry
    if entry is not None:
        lines.append(f"  coinConfigId  {entry.coin_config_id}")
        lines.append(f"  amount        {entry.amount}")
        if entry.retired:
            lines.append("  retired       yes (kept at amount 0; pays nothing)")
        if entry.pending is not None:
            lines.append(
                f"  pending       amount {entry.pending} was sent, outcome unknown; the next "
                "plan reads it back"
            )
    elif view.uncertain is not None:
        lines.append(
            f"  uncertain     a create of amount {view.uncertain.amount} was sent "
            f"{view.uncertain.since}, outcome unknown"
        )
    else:
        lines.append("  not in state")
    if not view.history:
        lines.append("History: no audit record")
        return "\n".join(lines)
    lines.append(f"History ({len(view.history)} audit records, oldest first):")
    for record in view.history:
        lines.append("  " + _history_line(record))
    return "\n".join(lines)


def _history_line(record: Mapping[str, Any]) -> str:
    before, after = record.get("before"), record.get("after")
    if before is None and after is None:
        amount = ""
    elif before is None:
        amount = f" amount {after}"
    else:
        amount = f" amount {before} -> {after}"
    moved = _record_key(record.get("movedFrom"))
    key = _record_key(record.get("key"))
    what = f" {moved} -> {key}" if moved is not None else f" {key}"
    config = f" {record['coinConfigId']}" if record.get("coinConfigId") else ""
    actor = f" by {record['actor']}" if record.get("actor") else ""
    commit = f" @ {str(record['commit'])[:12]}" if record.get("commit") else ""
    message = f" ({record['message']})" if record.get("message") else ""
    return (
        f"{record.get('at')} {record.get('action')} {record.get('outcome')}{what}{amount}"
        f"{config}{actor}{commit}{message}"
    )
