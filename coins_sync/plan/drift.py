"""Drift detection: read every managed config back from the server.

``plan --refresh`` uses it to show what changed behind the tool's back. The result is
an in-memory state (the stored one is never written by a plan): an amount changed on
the server becomes the entry's amount, so a rule that still wants the old amount is
planned as an update.

Drift that coins-sync cannot safely fix is shown and left alone, never acted on: a
config the server no longer finds (404) is not re-created, because a 404 may as well
come from a wrong path, a proxy or missing read rights, and a create cannot be taken
back; and a config whose companyId, configuration or event changed now belongs to
another rule, so it is not PATCHed. The user decides (``state rm KEY`` to create the
rule afresh).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from coins_sync import defaults
from coins_sync.configs.model import RuleKey
from coins_sync.errors import ApiError, UnusableAmountError
from coins_sync.state.model import State, StateEntry

if TYPE_CHECKING:  # the plan imports Drift; the API client is needed only to refresh
    from coins_sync.enkash import RemoteConfig

log = logging.getLogger(__name__)


class Reader(Protocol):
    def get(self, coin_config_id: str) -> RemoteConfig: ...


class DriftField(StrEnum):
    """What differs for one managed config; the value is its name in the JSON plan.

    Only an amount drift can be acted on (planned as an update); a missing config or a
    moved key field needs a person.
    """

    AMOUNT = "amount"
    COMPANY_ID = "companyId"
    CONFIGURATION = "configuration"
    EVENT = "event"
    MISSING = "missing"
    #: The server's amount is not a whole number of 0 or more (``-5``, ``2.5``): shown
    #: as the server wrote it, never planned from.
    UNUSABLE_AMOUNT = "unusableAmount"


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between the state and the server for a managed config.

    ``field`` is a :class:`DriftField`; its text value is accepted and converted, and
    any other text is a ValueError.
    """

    key: RuleKey
    coin_config_id: str
    field: DriftField
    in_state: str
    on_server: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", DriftField(self.field))

    def describe(self) -> str:
        if self.field is DriftField.MISSING:
            return (
                f"{self.key}: {self.coin_config_id} was not found on the server (404); "
                f"left alone. If it is really gone, `coins-sync state rm {self.key}` lets "
                "the next apply create it again"
            )
        if self.field is DriftField.UNUSABLE_AMOUNT:
            return (
                f"{self.key}: the server holds amount {self.on_server} for "
                f"{self.coin_config_id}, not a whole number of 0 or more ({self.in_state} in "
                "state); left alone for a person to settle"
            )
        return (
            f"{self.key}: {self.field} is {self.on_server} on the server, "
            f"{self.in_state} in state ({self.coin_config_id})"
        )


def _fetch(reader: Reader, entry: StateEntry) -> RemoteConfig | UnusableAmountError | None:
    try:
        return reader.get(entry.coin_config_id)
    except UnusableAmountError as e:
        return e
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def refresh(
    state: State,
    reader: Reader,
    parallelism: int = defaults.PARALLELISM,
    on_tick: Callable[[int, int, int], None] | None = None,
) -> tuple[State, list[Drift]]:
    """GET every entry (``parallelism`` at a time); return the refreshed state and drift.

    Any error other than a 404 aborts the refresh: a plan on half-known data is worse
    than no plan.
    """
    from concurrent.futures import ThreadPoolExecutor

    entries = sorted(state.entries.values(), key=lambda e: e.key)
    remotes: list[RemoteConfig | UnusableAmountError | None] = []
    with ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        for remote in pool.map(lambda entry: _fetch(reader, entry), entries):
            remotes.append(remote)
            if on_tick is not None:
                on_tick(len(remotes), len(entries), 0)
    drift: list[Drift] = []
    refreshed = dict(state.entries)
    for entry, remote in zip(entries, remotes, strict=True):
        if remote is None:
            drift.append(
                Drift(entry.key, entry.coin_config_id, DriftField.MISSING, "present", "absent")
            )
            continue
        if isinstance(remote, UnusableAmountError):
            drift.append(
                Drift(
                    entry.key,
                    entry.coin_config_id,
                    DriftField.UNUSABLE_AMOUNT,
                    str(entry.amount),
                    remote.raw,
                )
            )
            continue
        moved = [
            Drift(entry.key, entry.coin_config_id, name, ours, theirs)
            for name, ours, theirs in (
                (DriftField.COMPANY_ID, entry.key.company_id, remote.key.company_id),
                (DriftField.CONFIGURATION, entry.key.configuration, remote.key.configuration),
                (DriftField.EVENT, entry.key.event, remote.key.event),
            )
            if ours != theirs
        ]
        drift.extend(moved)
        if remote.amount != entry.amount:  # shown for a moved config too
            drift.append(
                Drift(
                    entry.key,
                    entry.coin_config_id,
                    DriftField.AMOUNT,
                    str(entry.amount),
                    str(remote.amount),
                )
            )
            refreshed[entry.key] = StateEntry(entry.key, remote.amount, entry.coin_config_id)
    log.info("refreshed %d configs, %d drifted", len(entries), len(drift))
    return replace(state, entries=refreshed), drift


def untouchable(drift: list[Drift]) -> set[RuleKey]:
    """Keys whose drift coins-sync must not act on: missing or moved to another key."""
    return {d.key for d in drift if d.field is not DriftField.AMOUNT}
