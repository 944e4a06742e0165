"""The state's values: entries, uncertain creates, and their deterministic JSON.

Pure: no files, no locks. A corrupt, truncated or unknown-version state is a
:class:`~coins_sync.errors.StateError`, never a guess.
"""

from __future__ import annotations

import json
import operator
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from coins_sync.configs.model import RuleKey, quick_init
from coins_sync.errors import StateError
from coins_sync.gcpause import cyclic_gc_paused
from coins_sync.inputs import loads_json

STATE_VERSION = 1
#: 1-64 ASCII letters, digits, "_" or "-" (a match object, or None)
_ID_MATCH = re.compile(r"[A-Za-z0-9_-]{1,64}").fullmatch


_last_second: tuple[int, str] = (0, "")


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with second precision, for records people read.

    Every journal and audit record takes one, so the text is made once a second."""
    global _last_second
    second = int(time.time())
    cached = _last_second  # one read: another thread may replace it meanwhile
    if cached[0] == second:
        return cached[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
    _last_second = (second, text)
    return text


def valid_config_id(value: object) -> bool:
    """A coinConfigId we are willing to store and put in a URL path."""
    return isinstance(value, str) and _ID_MATCH(value) is not None


@quick_init
@dataclass(frozen=True, slots=True)
class StateEntry:
    """A config the server confirmed: ``key`` gives ``amount``, known as ``coin_config_id``.

    ``pending`` is the amount of an update (PATCH) whose outcome is unknown: the server
    holds ``amount`` or ``pending``. A plan reads such an entry back before trusting it;
    a confirmed update clears it. ``retired`` marks a config that a ``retired: true``
    rule set to amount 0: it is kept on purpose, paying nothing.
    """

    key: RuleKey
    amount: int
    coin_config_id: str
    pending: int | None = None
    retired: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            **self.key.as_dict(),
            "amount": self.amount,
            "coinConfigId": self.coin_config_id,
        }
        if self.pending is not None:
            data["pendingAmount"] = self.pending
        if self.retired:
            data["retired"] = True
        return data


@dataclass(frozen=True, slots=True)
class Uncertain:
    """A create that was sent and whose outcome is unknown; never re-sent silently."""

    key: RuleKey
    amount: int
    since: str
    #: an intent with no result yet (journal, or an open operation row), not a recorded
    #: uncertain create: while an apply holds the lock, that apply is sending it now
    open: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {**self.key.as_dict(), "amount": self.amount, "since": self.since}


@dataclass(frozen=True)
class State:
    """An immutable snapshot of one environment's state."""

    lineage: str
    serial: int = 0
    entries: Mapping[RuleKey, StateEntry] = field(default_factory=dict)
    uncertain: Mapping[RuleKey, Uncertain] = field(default_factory=dict)
    exists: bool = True

    @classmethod
    def new(cls) -> State:
        """The state of an environment never written: no lineage until its first write."""
        return cls(lineage="", serial=0, exists=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "lineage": self.lineage,
            "serial": self.serial,
            "entries": [self.entries[k].to_json() for k in sorted(self.entries)],
        }
        if self.uncertain:
            data["uncertain"] = [self.uncertain[k].to_json() for k in sorted(self.uncertain)]
        return data

    def content(self) -> tuple[Any, ...]:
        """What a write compares to decide whether the serial must grow."""
        return (
            tuple(sorted(self.entries.values(), key=lambda e: e.key)),
            tuple(sorted(self.uncertain.values(), key=lambda u: u.key)),
        )

    def with_entry(self, entry: StateEntry) -> State:
        entries = dict(self.entries)
        entries[entry.key] = entry
        uncertain = {k: v for k, v in self.uncertain.items() if k != entry.key}
        return replace(self, entries=entries, uncertain=uncertain)

    def rekeyed(self, old: RuleKey, new: RuleKey) -> State:
        """The entry of ``old`` recorded as ``new`` under the same id (a moved config)."""
        entry = self.entries[old]
        entries = {k: v for k, v in self.entries.items() if k != old}
        entries[new] = replace(entry, key=new)
        uncertain = {k: v for k, v in self.uncertain.items() if k != new}
        return replace(self, entries=entries, uncertain=uncertain)

    def without(self, key: RuleKey) -> State:
        entries = {k: v for k, v in self.entries.items() if k != key}
        uncertain = {k: v for k, v in self.uncertain.items() if k != key}
        return replace(self, entries=entries, uncertain=uncertain)


class RecordedIds:
    """The one check that an id may be recorded as a key, shared by every way in:
    ``state import KEY ID``, ``state import --from FILE`` and a rule's ``coinConfigId``.

    An id is recorded under one key only, and a key under one id: recording an id that
    the state holds under another key would manage one config as two rules (and a
    ``state rm`` of one would orphan the other's record).
    """

    def __init__(self, state: State) -> None:
        self._entries = state.entries
        self._owner = {entry.coin_config_id: key for key, entry in state.entries.items()}

    def conflict(self, key: RuleKey, coin_config_id: str) -> str | None:
        """Why ``coin_config_id`` cannot be recorded as ``key`` (a sentence that names
        what the state records), or None when it can."""
        entry = self._entries.get(key)
        if entry is not None and entry.coin_config_id != coin_config_id:
            return f"the state records {key} as {entry.coin_config_id}, not {coin_config_id}"
        owner = self._owner.get(coin_config_id)
        if owner is not None and owner != key:
            return f"the state records {coin_config_id} as {owner}, not {key}"
        return None


def serialize(state: State) -> bytes:
    """Deterministic bytes: the same content always gives the same file, the bytes of
    ``json.dumps(state.to_json(), indent=2, sort_keys=True, ensure_ascii=False)``."""
    data = state.to_json()
    text = _indented_flat(data)
    if text is None:  # not the shape the fast path knows: the reference encoder
        text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


_SCALARS = frozenset({str, int, bool, type(None)})
#: Each object of a list at depth 1, as ``indent=2`` lays out its items, but encoded
#: by the C encoder (``indent`` alone takes json's pure-Python one, 5x slower). A JSON
#: string never holds a raw newline, so the separator below never occurs inside one.
_DEPTH_2_ITEMS = ",\n      "
_FLAT_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(_DEPTH_2_ITEMS, ": ")
)
_BETWEEN_OBJECTS = "}" + _DEPTH_2_ITEMS + "{"


def _indented_flat(data: dict[str, Any]) -> str | None:
    """``json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)`` for an object
    whose values are scalars or lists of non-empty objects of scalars (a state), or
    None for any other shape."""
    parts: list[str] = []
    for name in sorted(data):
        value = data[name]
        if type(name) is not str:
            return None
        if type(value) in _SCALARS:
            text = _FLAT_ENCODER.encode(value)
        elif type(value) is list:
            for item in value:
                if type(item) is not dict or not item:
                    return None
                for field_value in item.values():
                    if type(field_value) not in _SCALARS:
                        return None
            if not value:
                text = "[]"
            else:  # "[{a,\n      b},\n      {c}]" -> one object a line apart
                inner = _FLAT_ENCODER.encode(value)[2:-2]
                text = (
                    "[\n    {\n      "
                    + inner.replace(_BETWEEN_OBJECTS, "\n    },\n    {\n      ")
                    + "\n    }\n  ]"
                )
        else:
            return None
        parts.append(f"  {_FLAT_ENCODER.encode(name)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}" if parts else "{}"


def parse_state(raw: bytes, where: str) -> State:
    """Parse and check state bytes; every defect is a StateError naming ``where``."""
    with cyclic_gc_paused():
        return _parse_state(raw, where)


def _parse_state(raw: bytes, where: str) -> State:
    # Not "restore .backup": it is one write behind, and the creates of that last write
    # would vanish from the state and be sent again.
    hint = f"{where} was left untouched; fix it, or restore the copy in git"
    try:
        data = loads_json(raw.decode("utf-8-sig"))  # a BOM from a hand-edited file is fine
    except UnicodeDecodeError as e:
        raise StateError(f"{where}: not UTF-8 text ({e.reason}); {hint}") from e
    except json.JSONDecodeError as e:
        raise StateError(
            f"{where}:{e.lineno}:{e.colno}: corrupt or truncated state ({e.msg}); {hint}"
        ) from e
    except (ValueError, RecursionError) as e:  # absurd numbers or nesting
        raise StateError(f"{where}: not a usable state file ({e}); {hint}") from e
    if not isinstance(data, dict):
        raise StateError(f"{where}: state must be a JSON object; {hint}")
    version = data.get("version")
    if type(version) is not int or version != STATE_VERSION:
        raise StateError(
            f"{where}: unknown state version {version!r} (this coins-sync reads version "
            f"{STATE_VERSION}); {hint}"
        )
    lineage, serial = data.get("lineage"), data.get("serial")
    if not isinstance(lineage, str) or not lineage:
        raise StateError(f"{where}: 'lineage' must be a non-empty string; {hint}")
    if type(serial) is not int or serial < 0:
        raise StateError(f"{where}: 'serial' must be a non-negative integer; {hint}")
    entries_raw = data.get("entries")
    if not isinstance(entries_raw, list):
        raise StateError(f"{where}: 'entries' must be a list; {hint}")
    entries: dict[RuleKey, StateEntry] = {}
    for index, item in enumerate(entries_raw):
        # The common case checked inline (states hold 100k entries); any doubt goes to
        # the checks below, which word the problem.
        if type(item) is dict and item.keys() >= _ENTRY_KEYS:
            company, configuration, event, amount, config_id = _ENTRY_FIELDS(item)
        else:
            company = configuration = event = amount = config_id = None
        if (
            type(company) is str
            and type(configuration) is str
            and type(event) is str
            and company
            and configuration
            and event
            and type(amount) is int
            and amount >= 0
            and type(config_id) is str
            and _ID_MATCH(config_id) is not None
        ):
            key = RuleKey(company, configuration, event)
        else:
            key, amount = _parse_keyed(item, f"{where}: entries[{index}]", hint)
            config_id = item.get("coinConfigId")
            if not valid_config_id(config_id):
                raise StateError(f"{where}: entries[{index}].coinConfigId is invalid; {hint}")
        if key in entries:
            raise StateError(f"{where}: entries[{index}] repeats key {key}; {hint}")
        entries[key] = StateEntry(key, amount, str(config_id))
        if "pendingAmount" in item:
            pending = item["pendingAmount"]
            if type(pending) is not int or pending < 0:
                raise StateError(
                    f"{where}: entries[{index}].pendingAmount must be a non-negative "
                    f"integer; {hint}"
                )
            entries[key] = StateEntry(key, amount, str(config_id), pending)
        if "retired" in item:
            if type(item["retired"]) is not bool:
                raise StateError(f"{where}: entries[{index}].retired must be true or false; {hint}")
            entries[key] = replace(entries[key], retired=item["retired"])
    uncertain: dict[RuleKey, Uncertain] = {}
    uncertain_raw = data.get("uncertain", [])
    if not isinstance(uncertain_raw, list):
        raise StateError(f"{where}: 'uncertain' must be a list; {hint}")
    for index, item in enumerate(uncertain_raw):
        key, amount = _parse_keyed(item, f"{where}: uncertain[{index}]", hint)
        uncertain[key] = Uncertain(key, amount, str(item.get("since", "")))
    return State(lineage=lineage, serial=serial, entries=entries, uncertain=uncertain)


_ENTRY_KEYS = frozenset({"companyId", "configuration", "event", "amount", "coinConfigId"})
_ENTRY_FIELDS = operator.itemgetter("companyId", "configuration", "event", "amount", "coinConfigId")


def _parse_keyed(item: object, where: str, hint: str) -> tuple[RuleKey, int]:
    if not isinstance(item, dict):
        raise StateError(f"{where} must be an object; {hint}")
    fields = [item.get(name) for name in ("companyId", "configuration", "event")]
    if not all(isinstance(f, str) and f for f in fields):
        raise StateError(f"{where} needs string companyId, configuration and event; {hint}")
    amount = item.get("amount")
    if type(amount) is not int or amount < 0:
        raise StateError(f"{where}.amount must be a non-negative integer; {hint}")
    return RuleKey(str(fields[0]), str(fields[1]), str(fields[2])), amount
