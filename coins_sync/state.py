"""State: what was pushed to EnKash, its journal of in-flight work, and its lock.

The API has no list endpoint, so the state is the only memory of which configs exist.
What is promised:

* The state is versioned JSON (``version``, ``lineage``, ``serial``, sorted ``entries``)
  written as deterministic bytes, atomically (temporary file, fsync, rename), with the
  previous version kept as ``<state>.backup``. ``serial`` grows on every write that
  changes content.
* A corrupt, truncated or unknown-version state is a :class:`StateError`; the file is
  never touched.
* Apply records each result in an append-only journal (one fsynced JSON line each)
  instead of rewriting the state per call. :meth:`StateStore.recover` folds a leftover
  journal into the state: a confirmed result becomes an entry, an intent with no result
  becomes *uncertain*, and a torn last line is dropped and reported.
* One state-changing command runs per state at a time, under an OS-level lock that a
  killed holder releases; a refused caller is told who holds it.

Nothing outside this module knows that state lives in files: callers use
:class:`StateStore` (``open_store`` picks the backend).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import operator
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coins_sync.errors import LockError, StateError
from coins_sync.gcpause import cyclic_gc_paused
from coins_sync.rules import RuleKey

if TYPE_CHECKING:
    import filelock

log = logging.getLogger(__name__)

STATE_VERSION = 1
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def utc_now() -> str:
    """An ISO 8601 UTC timestamp with second precision, for records people read."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def valid_config_id(value: object) -> bool:
    """A coinConfigId we are willing to store and put in a URL path."""
    return isinstance(value, str) and 0 < len(value) <= 64 and set(value) <= _ID_CHARS


@dataclass(frozen=True, slots=True)
class StateEntry:
    """A config the server confirmed: ``key`` gives ``amount``, known as ``coin_config_id``.

    ``pending`` is the amount of an update (PATCH) whose outcome is unknown: the server
    holds ``amount`` or ``pending``. A plan reads such an entry back before trusting it;
    a confirmed update clears it.
    """

    key: RuleKey
    amount: int
    coin_config_id: str
    pending: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {**self.key.as_dict(), "amount": self.amount, "coinConfigId": self.coin_config_id}
        if self.pending is not None:
            data["pendingAmount"] = self.pending
        return data


@dataclass(frozen=True, slots=True)
class Uncertain:
    """A create that was sent and whose outcome is unknown; never re-sent silently."""

    key: RuleKey
    amount: int
    since: str

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

    def without(self, key: RuleKey) -> State:
        entries = {k: v for k, v in self.entries.items() if k != key}
        uncertain = {k: v for k, v in self.uncertain.items() if k != key}
        return replace(self, entries=entries, uncertain=uncertain)


def serialize(state: State) -> bytes:
    """Deterministic bytes: the same content always gives the same file."""
    text = json.dumps(state.to_json(), indent=2, sort_keys=True, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def parse_state(raw: bytes, where: str) -> State:
    """Parse and check state bytes; every defect is a StateError naming ``where``."""
    with cyclic_gc_paused():
        return _parse_state(raw, where)


def _parse_state(raw: bytes, where: str) -> State:
    # Not "restore .backup": it is one write behind, and the creates of that last write
    # would vanish from the state and be sent again.
    hint = f"{where} was left untouched; fix it, or restore the copy in git"
    try:
        data = json.loads(raw.decode("utf-8-sig"))  # a BOM from a hand-edited file is fine
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
            and valid_config_id(config_id)
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


# --- journal ------------------------------------------------------------------


@dataclass(frozen=True)
class JournalRecord:
    """One line of the journal: an ``intent`` before a create, or a ``result`` after."""

    kind: str  # "intent" | "result"
    key: RuleKey
    amount: int
    # results: "created" | "updated" | "unknown" | "failed", or "unverified": an update
    # whose outcome is unknown (``amount`` is the amount sent)
    outcome: str = ""
    coin_config_id: str | None = None
    at: str = ""

    def to_line(self, lineage: str) -> bytes:
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
    if not isinstance(data, dict) or data.get("kind") not in ("intent", "result"):
        raise ValueError("not a journal record")
    key = RuleKey(str(data["companyId"]), str(data["configuration"]), str(data["event"]))
    amount = data["amount"]
    if type(amount) is not int:
        raise ValueError("amount is not an integer")
    config_id = data.get("coinConfigId")
    if config_id is not None and not valid_config_id(config_id):
        raise ValueError("invalid coinConfigId")
    return JournalRecord(
        kind=data["kind"],
        key=key,
        amount=amount,
        outcome=str(data.get("outcome", "")),
        coin_config_id=config_id,
        at=str(data.get("at", "")),
    )


def fold(state: State, records: Iterable[JournalRecord]) -> State:
    """Apply journal records to a state. Idempotent: folding twice changes nothing more."""
    entries = dict(state.entries)
    uncertain = dict(state.uncertain)
    open_intents: dict[RuleKey, JournalRecord] = {}
    for record in records:
        if record.kind == "intent":
            open_intents[record.key] = record
            continue
        open_intents.pop(record.key, None)
        if record.outcome in ("created", "updated", "imported") and record.coin_config_id:
            entries[record.key] = StateEntry(record.key, record.amount, record.coin_config_id)
            uncertain.pop(record.key, None)
        elif record.outcome == "unknown":
            uncertain[record.key] = Uncertain(record.key, record.amount, record.at)
        elif record.outcome == "unverified" and record.key in entries:
            entries[record.key] = replace(entries[record.key], pending=record.amount)
    for key, intent in open_intents.items():
        if key not in entries:  # a create was sent and never answered
            uncertain[key] = Uncertain(key, intent.amount, intent.at)
    return replace(state, entries=entries, uncertain=uncertain)


class StateConflictError(StateError):
    """The state on disk is not the one this command read: another writer (a ``git pull``,
    another working copy) replaced it. Nothing was overwritten."""


# --- lock -----------------------------------------------------------------------


@dataclass(frozen=True)
class LockHolder:
    """Who holds a state lock, as written beside it for a refused caller to read."""

    pid: int
    host: str
    user: str
    command: str
    since: str

    def describe(self) -> str:
        return (
            f"pid {self.pid} on {self.host} (user {self.user}), "
            f"running '{self.command}' since {self.since}"
        )


# --- storage --------------------------------------------------------------------


class StateStore(Protocol):
    """Where one environment's state lives. File today; a database backend can follow."""

    def describe(self) -> str:
        """A human name for messages, e.g. the state file's path."""
        ...

    def read(self) -> State:
        """The current state with any leftover journal folded in (in memory only)."""
        ...

    def write(self, state: State) -> State:
        """Persist ``state`` if its content changed; returns it with the serial written."""
        ...

    def lock(self, command: str, timeout: float = 0.0) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock, or raise LockError naming the holder."""
        ...

    def recover(self) -> tuple[State, tuple[str, ...]]:
        """Fold a leftover journal into the stored state (under the lock)."""
        ...

    def journal(self, state: State) -> Journal:
        """An append-only journal for an apply that starts from ``state``."""
        ...


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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data``: ``os.write`` may write fewer (a full disk, a signal).

    Bounded: each round writes at least one byte, or raises."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, f"short write ({len(data) - len(view)} of {len(data)})")
        view = view[written:]


def repair_tail(fd: int) -> None:
    """Before appending to a line file (``fd`` open for reading and appending): when an
    earlier write was cut short and left a torn last line, end it, so that the next record
    starts on a line of its own instead of being glued to the torn one."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        write_all(fd, b"\n")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old bytes or the new, never a mix.

    A symbolic link is written through: its target gets the new bytes and the link stays,
    so working copies that share one state file keep sharing it."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


class FileStateStore:
    """State in ``<name>.json`` with ``.backup``, ``.journal.jsonl`` and ``.lock`` beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.backup_path = path.with_name(path.name + ".backup")
        self.journal_path = path.with_name(path.stem + ".journal.jsonl")
        #: Results an apply could not fold into the state (a newer state on disk, a full
        #: disk): appended, never rewritten; the next command folds it in and removes it.
        self.rescue_path = path.with_name(path.stem + ".rescue.jsonl")
        self.lock_path = path.with_name(path.name + ".lock")
        self.holder_path = path.with_name(path.name + ".lock.json")
        self._lock: filelock.FileLock | None = None

    def __repr__(self) -> str:
        return f"FileStateStore({str(self.path)!r})"

    def describe(self) -> str:
        return str(self.path)

    # reading -------------------------------------------------------------------

    def _read_raw(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"{self.path}: cannot read state: {e.strerror or e}") from e

    def read_stored(self) -> State:
        """The state file as written, without the journal."""
        raw = self._read_raw()
        if raw is None:
            return State.new()
        return parse_state(raw, str(self.path))

    def _replay_file(self, path: Path, state: State, what: str) -> JournalReplay | None:
        if path.is_dir():
            raise StateError(
                f"{path}: the {what} path is a directory, not a file; move it aside. "
                "Nothing was sent"
            )
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"{path}: cannot read {what}: {e}") from e
        return parse_journal(raw, state.lineage, str(path))

    def _replay(self, state: State) -> JournalReplay | None:
        """The rescue file's records, then the journal's: both folded, in that order."""
        rescue = self._replay_file(self.rescue_path, state, "rescue file")
        journal = self._replay_file(self.journal_path, state, "journal")
        if rescue is None:
            return journal
        if journal is None:
            return rescue
        return JournalReplay(rescue.records + journal.records, rescue.damaged + journal.damaged)

    def read(self) -> State:
        state = self.read_stored()
        replay = self._replay(state)
        if replay is None:
            return state
        for message in replay.damaged:
            log.warning("%s", message)
        return fold(state, replay.records)

    def write_rescue(self, lineage: str, records: Iterable[JournalRecord]) -> Path:
        """Append ``records`` to the rescue file beside the state (fsynced); the next
        command folds it into the state. Raises OSError when it cannot be written."""
        data = b"".join(record.to_line(lineage) for record in records)
        fd = os.open(self.rescue_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            repair_tail(fd)
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.rescue_path.parent)
        return self.rescue_path

    def has_journal(self) -> bool:
        return self.journal_path.exists()

    # writing -------------------------------------------------------------------

    def write(self, state: State) -> State:
        """Compare-and-swap: write only over the state ``state`` was read from (same
        lineage and serial); otherwise raise :class:`StateConflictError`, writing nothing."""
        current_raw = self._read_raw()
        if current_raw is not None:
            current = parse_state(current_raw, str(self.path))
            if current.lineage != state.lineage:
                raise StateConflictError(
                    f"{self.path}: lineage changed underneath us "
                    f"({current.lineage or 'none'} != {state.lineage or 'none'}); "
                    "refusing to overwrite"
                )
            if current.content() == state.content():
                return replace(state, serial=current.serial, exists=True)
            if current.serial != state.serial:
                raise StateConflictError(
                    f"{self.path} changed while this command ran (serial {state.serial} "
                    f"was read, {current.serial} is on disk, e.g. after a git pull); "
                    "refusing to overwrite the newer state"
                )
            new = replace(state, serial=current.serial + 1, exists=True)
            atomic_write(self.backup_path, current_raw)
        else:
            lineage = state.lineage or str(uuid.uuid4())
            new = replace(state, lineage=lineage, serial=state.serial + 1, exists=True)
        atomic_write(self.path, serialize(new))
        return new

    def recover(self) -> tuple[State, tuple[str, ...]]:
        stored = self.read_stored()
        replay = self._replay(stored)
        if replay is None:
            return stored, ()
        folded = self.write(fold(stored, replay.records))
        # both are folded into the state just written: only now may they go. A file
        # with damaged lines is kept aside for a person, never deleted.
        messages: list[str] = list(replay.damaged)
        for path in (self.rescue_path, self.journal_path):
            if not path.exists():
                continue
            if any(message.startswith(f"{path}:") for message in replay.damaged):
                aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
                os.replace(path, aside)
                messages.append(f"damaged {path.name} kept as {aside}")
            else:
                path.unlink()
        _fsync_dir(self.journal_path.parent)
        for message in messages:
            log.warning("%s", message)
        return folded, tuple(messages)

    def journal(self, state: State) -> FileJournal:
        return FileJournal(self, state.lineage)

    # locking -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0) -> Iterator[None]:
        import socket  # only here: reading a state for a plan takes no lock

        import filelock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.lock_path), timeout=timeout, is_singleton=False)
        try:
            lock.acquire(timeout=timeout, poll_interval=0.1)
        except filelock.Timeout as e:
            holder = self._read_holder()
            who = holder.describe() if holder else "another process (details unknown)"
            waited = f" after waiting {timeout:g}s" if timeout else ""
            hint = "" if timeout else ", or pass --lock-timeout SECONDS to wait"
            raise LockError(
                f"state {self.path} is locked by {who}{waited}. Wait for it to finish{hint}. "
                "A lock left by a killed process is released by the operating system, so a "
                "stuck lock means a live holder.",
                holder=who,
            ) from e
        try:
            holder = LockHolder(
                pid=os.getpid(),
                host=socket.gethostname(),
                user=_user(),
                command=command,
                since=utc_now(),
            )
            atomic_write(
                self.holder_path,
                json.dumps(holder.__dict__, sort_keys=True).encode("utf-8"),
            )
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.holder_path.unlink()
            lock.release()

    def _read_holder(self, patience: float = 1.0) -> LockHolder | None:
        """Who holds the lock, for the message of a refused caller.

        A new holder writes its record just after it takes the lock, so a caller refused
        in that instant finds no record yet, or one left by a killed process. It waits up
        to ``patience`` seconds for a live holder's record rather than name a dead pid.
        """
        deadline = time.monotonic() + patience
        while True:
            holder = self._read_holder_once()
            if holder is not None and _may_be_alive(holder):
                return holder
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _read_holder_once(self) -> LockHolder | None:
        try:
            data = json.loads(self.holder_path.read_text("utf-8"))
            return LockHolder(**data)
        except (OSError, ValueError, TypeError):
            return None


def _may_be_alive(holder: LockHolder) -> bool:
    """False only for a holder on this host whose process is surely gone."""
    import socket

    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: alive, under another user
        return True
    return True


def _user() -> str:
    import getpass  # imports here keep the start-up of validate and plan short

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


class FileJournal:
    """Append-only, fsynced journal lines; ``checkpoint`` folds results into the state."""

    def __init__(self, store: FileStateStore, lineage: str) -> None:
        self._store = store
        self._lineage = lineage
        self._mutex = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._store.journal_path.parent.mkdir(parents=True, exist_ok=True)
            if self._store.journal_path.is_dir():
                raise IsADirectoryError(
                    errno.EISDIR, "the journal path is a directory", str(self._store.journal_path)
                )
            self._fd = os.open(
                self._store.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644
            )
            repair_tail(self._fd)
            _fsync_dir(self._store.journal_path.parent)
        return self._fd

    def append(
        self,
        record: JournalRecord,
        book: Callable[[], None] | None = None,
        *,
        book_on_failure: bool = False,
    ) -> None:
        """Append and fsync ``record``; ``book`` runs under the same mutex, so that a
        concurrent checkpoint sees the record and its bookkeeping together or neither.

        When the write fails, a StateError is raised; ``book`` still runs if
        ``book_on_failure`` is set, so a result the server confirmed is kept in memory
        for the final fold rather than lost with the failed line.
        """
        line = record.to_line(self._lineage)
        with self._mutex:
            try:
                fd = self._open()
                write_all(fd, line)
                os.fsync(fd)
            except OSError as e:
                if self._fd is not None:  # reopened next time, its torn tail ended first
                    with contextlib.suppress(OSError):
                        os.close(self._fd)
                    self._fd = None
                if book is not None and book_on_failure:
                    book()
                raise StateError(
                    f"{self._store.journal_path}: cannot append to the journal: {e}"
                ) from e
            if book is not None:
                book()

    def checkpoint(self, snapshot: Snapshot) -> State:
        """Write the state from ``snapshot`` and restart the journal with only the
        records it keeps (intents still in flight).

        Crash-safe in either order: the state is written first, and replaying the old
        journal over it is idempotent.
        """
        with self._mutex:
            state, keep = snapshot()
            written = self._store.write(state)
            fresh = b"".join(record.to_line(self._lineage) for record in keep)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if fresh:
                atomic_write(self._store.journal_path, fresh)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self._store.journal_path.unlink()
                _fsync_dir(self._store.journal_path.parent)
            return written

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def open_store(location: Path) -> FileStateStore:
    """The state backend for a configured location (only files, for now)."""
    return FileStateStore(location)
