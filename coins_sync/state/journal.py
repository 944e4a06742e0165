"""The journal: fsynced intent and result lines, and the pure fold that replays them.

Apply records each result here instead of rewriting the state per call; a fold turns
a confirmed result into an entry, and an intent with no result into an *uncertain*
create. Folding twice changes nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from coins_sync.configs.model import RuleKey
from coins_sync.errors import StateError
from coins_sync.state.model import State, StateEntry, Uncertain, utc_now, valid_config_id


class JournalKind(StrEnum):
    """An ``intent`` is written before a create is sent; a ``result`` after its answer."""

    INTENT = "intent"
    RESULT = "result"


class Outcome(StrEnum):
    """What a journal result or an audit record says happened to one rule."""

    CREATED = "created"
    UPDATED = "updated"
    IMPORTED = "imported"
    FORGOTTEN = "forgotten"
    UNKNOWN = "unknown"  # a create was sent; whether the server stored it is unknown
    UNVERIFIED = "unverified"  # an update was sent; whether it was applied is unknown
    UNCERTAIN = "uncertain"  # (audit) a create whose outcome is unknown
    FAILED = "failed"


#: Results that put an entry in the state.
CONFIRMED = frozenset({Outcome.CREATED, Outcome.UPDATED, Outcome.IMPORTED})


@dataclass(frozen=True)
class JournalRecord:
    """One line of the journal: an ``intent`` before a create, or a ``result`` after."""

    kind: JournalKind
    key: RuleKey
    amount: int
    # results: created, updated, imported, unknown, failed, or unverified: an update
    # whose outcome is unknown (``amount`` is the amount sent); intents: None
    outcome: Outcome | None = None
    coin_config_id: str | None = None
    at: str = ""
    #: the state serial the line was written under (its fence; see state/fence.py);
    #: None for a record made in memory, or a line of an older coins-sync
    fence: int | None = field(default=None, compare=False)

    def to_line(self, lineage: str, serial: int | None = None) -> bytes:
        data: dict[str, Any] = {
            "kind": self.kind,
            "lineage": lineage,
            **self.key.as_dict(),
            "amount": self.amount,
            "at": self.at or utc_now(),
        }
        if self.outcome:
            data["outcome"] = self.outcome
        if self.coin_config_id:
            data["coinConfigId"] = self.coin_config_id
        if serial is not None:
            data["serial"] = serial
        return (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass(frozen=True)
class JournalReplay:
    """The complete records of a journal, and what could not be read."""

    records: tuple[JournalRecord, ...]
    damaged: tuple[str, ...]


def parse_journal(raw: bytes, lineage: str, where: str) -> JournalReplay:
    """Keep every complete record; report a torn tail or garbled lines instead of failing."""
    records: list[JournalRecord] = []
    damaged: list[str] = []
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)  # the last piece has no newline: an interrupted write
        try:
            data = json.loads(line.decode("utf-8"))
            record = _record_from(data)
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            what = "torn last record (interrupted write)" if torn else f"garbled record ({e!r})"
            damaged.append(f"{where}:{number}: {what}; skipped")
            continue
        if data.get("lineage") != lineage:
            raise StateError(
                f"{where}:{number}: journal belongs to another state (lineage "
                f"{data.get('lineage')!r}, state has {lineage!r}); move it aside to continue"
            )
        records.append(record)
    return JournalReplay(tuple(records), tuple(damaged))


def _record_from(data: Any) -> JournalRecord:
    if not isinstance(data, dict) or data.get("kind") not in tuple(JournalKind):
        raise ValueError("not a journal record")
    key = RuleKey(str(data["companyId"]), str(data["configuration"]), str(data["event"]))
    amount = data["amount"]
    if type(amount) is not int:
        raise ValueError("amount is not an integer")
    config_id = data.get("coinConfigId")
    if config_id is not None and not valid_config_id(config_id):
        raise ValueError("invalid coinConfigId")
    kind = JournalKind(data["kind"])
    fence = data.get("serial")
    if fence is not None and type(fence) is not int:
        raise ValueError("serial is not an integer")
    outcome = data.get("outcome")
    if kind == JournalKind.RESULT and outcome is None:
        raise ValueError("a result without an outcome")
    return JournalRecord(
        kind=kind,
        key=key,
        amount=amount,
        outcome=None if outcome is None else Outcome(outcome),  # unknown: ValueError
        coin_config_id=config_id,
        at=str(data.get("at", "")),
        fence=fence,
    )


def fold(state: State, records: Iterable[JournalRecord]) -> State:
    """Apply journal records to a state. Idempotent: folding twice changes nothing more."""
    entries = dict(state.entries)
    uncertain = dict(state.uncertain)
    open_intents: dict[RuleKey, JournalRecord] = {}
    for record in records:
        if record.kind == JournalKind.INTENT:
            open_intents[record.key] = record
            continue
        open_intents.pop(record.key, None)
        if record.outcome in CONFIRMED and record.coin_config_id:
            entries[record.key] = StateEntry(record.key, record.amount, record.coin_config_id)
            uncertain.pop(record.key, None)
        elif record.outcome == Outcome.UNKNOWN:
            uncertain[record.key] = Uncertain(record.key, record.amount, record.at)
        elif record.outcome == Outcome.UNVERIFIED and record.key in entries:
            entries[record.key] = replace(entries[record.key], pending=record.amount)
    for key, intent in open_intents.items():
        if key not in entries:  # a create was sent and never answered
            uncertain[key] = Uncertain(key, intent.amount, intent.at, open=True)
    return replace(state, entries=entries, uncertain=uncertain)


Snapshot = Callable[[], tuple["State", Iterable["JournalRecord"]]]


class Journal(Protocol):
    def append(
        self,
        record: JournalRecord,
        book: Callable[[], None] | None = None,
        *,
        book_on_failure: bool = False,
    ) -> None: ...

    def checkpoint(self, snapshot: Snapshot) -> State: ...

    def close(self) -> None: ...


class PairJournal(Journal, Protocol):
    """A journal that can write a result and the next create's intent as one durable
    write (one fsync, one statement), so a worker pays one round trip per create."""

    def append_pair(
        self,
        record: JournalRecord,
        book: Callable[[], None],
        intent: JournalRecord,
        book_intent: Callable[[], None],
        *,
        book_on_failure: bool = False,
    ) -> None:
        """Append ``record`` and then ``intent``, both durable before it returns.

        ``book`` is as in ``append``; ``book_intent`` runs only once both are durable.
        When the write fails, neither counts as written (the intent's create is not
        sent)."""
        ...
