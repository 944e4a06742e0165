"""Fenced folds: a journal or rescue line folds only over entries it is newer than.

Every journal and rescue line carries the state serial it was written under (its
fence). A line written under the serial the state has now belongs to it: it folds as it
is. A line written under another serial (or none: an older coins-sync) is older than
the state may be: a stuck run that lost its lock, a state replaced by a ``git pull``
meanwhile. Such a line folds only where it cannot replace newer data; everything else
is kept aside and reported, never folded:

* a create's intent, result or unknown outcome folds for a key the state records no
  entry of (it is then newer than nothing, or than an uncertain mark); where the state
  records the same id, there is nothing to fold; where it records another id, the line
  is kept aside (the server may hold both configs: a person decides);
* an update's result for an entry of the same id folds only as an *unverified* update
  (``pending``): whether the server holds that amount or the state's is unknown, so the
  next apply reads it back; an entry that is gone or has another id keeps it aside.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from coins_sync.state.journal import CONFIRMED, JournalKind, JournalRecord, Outcome
from coins_sync.state.model import State


@dataclass(frozen=True)
class Fenced:
    """The records of one file, sorted against a state: what folds, what is kept aside."""

    fold: tuple[JournalRecord, ...]
    aside: tuple[tuple[JournalRecord, str], ...]  # with the reason
    stale: int  # how many were written under another serial
    doubted: int = 0  # stale updates folded as unverified: read back before planning

    def notes(self, where: str, serial: int) -> list[str]:
        """What a person must know, one line each (nothing when all folded as written)."""
        if not self.stale:
            return []
        lines = [
            f"{where}: {self.stale} record(s) were written under another state serial than "
            f"the state's {serial} (an older run, or a state replaced meanwhile): folded only "
            f"where nothing newer is recorded; {self.doubted} update(s) marked unverified "
            f"(the server is read back before anything is planned on them), "
            f"{len(self.aside)} kept aside"
        ]
        for record, why in self.aside:
            outcome = record.outcome or "create sent"
            config = f" {record.coin_config_id}" if record.coin_config_id else ""
            lines.append(
                f"  kept aside: {record.key} {outcome}{config} (amount {record.amount}): {why}"
            )
        return lines


def sort_fenced(state: State, records: Iterable[JournalRecord]) -> Fenced:
    """Sort ``records`` against ``state`` (see the module's rules)."""
    records = list(records)
    answered = {r.key for r in records if r.kind is JournalKind.RESULT}
    fold: list[JournalRecord] = []
    aside: list[tuple[JournalRecord, str]] = []
    stale = doubted = 0
    for record in records:
        if record.fence is not None and record.fence == state.serial:
            fold.append(record)
            continue
        stale += 1
        entry = state.entries.get(record.key)
        creates = record.kind is JournalKind.INTENT or record.outcome in (
            *CONFIRMED - {Outcome.UPDATED},
            Outcome.UNKNOWN,
        )
        if record.outcome is Outcome.FAILED:
            fold.append(record)  # folds to nothing; it closes an intent
        elif record.kind is JournalKind.INTENT and entry is not None and record.key in answered:
            continue  # its result (below or above) decides
        elif creates:
            if entry is None:
                fold.append(record)
            elif record.coin_config_id and entry.coin_config_id == record.coin_config_id:
                continue  # recorded already; any later update of it is newer
            else:
                aside.append((record, f"the state records {entry.coin_config_id} for it"))
        elif entry is None:
            aside.append((record, "the state records no entry for it any more"))
        elif record.coin_config_id and entry.coin_config_id != record.coin_config_id:
            aside.append((record, f"the state records {entry.coin_config_id} for it"))
        elif record.amount != entry.amount or record.outcome is Outcome.UNVERIFIED:
            fold.append(replace(record, outcome=Outcome.UNVERIFIED))
            doubted += 1
    return Fenced(tuple(fold), tuple(aside), stale, doubted)
