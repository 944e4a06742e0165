"""The file backend: ``<name>.json`` with ``.backup``, ``.journal.jsonl``, ``.lock``
and ``.rescue.jsonl`` beside it.

Writes are atomic and compare the serial on disk with the one read (a newer state is
never overwritten), the lock is an OS lock a killed holder releases, and a refused
caller is told who holds it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from coins_sync.errors import LockError, SettingsError, StateConflictError, StateError
from coins_sync.inputs import read_input
from coins_sync.state.fence import Fenced, sort_fenced
from coins_sync.state.files import AppendLog, Entry, atomic_write, fsync_dir
from coins_sync.state.journal import (
    JournalRecord,
    JournalReplay,
    Snapshot,
    fold,
    parse_journal,
)
from coins_sync.state.model import (
    State,
    parse_state,
    serialize,
    utc_now,
)
from coins_sync.state.store import LockHolder, os_user

if TYPE_CHECKING:
    import filelock

log = logging.getLogger(__name__)


class FileStateStore:
    """State in ``<name>.json`` with ``.backup``, ``.journal.jsonl`` and ``.lock`` beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.backup_path = path.with_name(path.name + ".backup")
        self.journal_path = path.with_name(path.stem + ".journal.jsonl")
        #: Results an apply could not fold into the state (a newer state on disk, a full
        #: disk): appended, never rewritten; the next apply (or state rm/import) folds
        #: it in, fenced (state/fence.py), and removes it.
        self.rescue_path = path.with_name(path.stem + ".rescue.jsonl")
        #: The serial of the state this store last read for a journal or wrote: the
        #: fence every journal and rescue line is written under.
        self.fence: int | None = None
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
            return read_input(self.path)
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
            raw = read_input(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateError(f"{path}: cannot read {what}: {e.strerror or e}") from e
        return parse_journal(raw, state.lineage, str(path))

    def _replay(self, state: State) -> list[tuple[Path, JournalReplay, Fenced]]:
        """The rescue file's records, then the journal's, each sorted against ``state``
        by its fence: what folds (in that order), what is kept aside."""
        found = []
        for path, what in ((self.rescue_path, "rescue file"), (self.journal_path, "journal")):
            replay = self._replay_file(path, state, what)
            if replay is not None:
                found.append((path, replay, sort_fenced(state, replay.records)))
        return found

    def pending_files(self) -> list[Path]:
        """The journal and rescue files not folded into the state file yet."""
        return [path for path in (self.rescue_path, self.journal_path) if path.is_file()]

    def read(self) -> State:
        """The state with the journal and rescue files folded in (fenced), in memory
        only: the files stay until a command that writes the state folds them."""
        state = self.read_stored()
        replays = self._replay(state)
        for path, replay, fenced in replays:
            for message in (*replay.damaged, *fenced.notes(str(path), state.serial)):
                log.warning("%s", message)
        return fold(state, [r for _, _, fenced in replays for r in fenced.fold])

    def write_rescue(self, lineage: str, records: Iterable[JournalRecord]) -> Path:
        """Append ``records`` to the rescue file beside the state (fsynced), each line
        fenced by :attr:`fence`; the next apply (or state rm/import) folds it into the
        state. Raises StateError when it cannot be written."""
        rescue = AppendLog(self.rescue_path, "rescue file")
        try:
            lines = (record.to_line(lineage, self.fence) for record in records)
            rescue.append(b"".join(lines))
        finally:
            rescue.close()
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
                self.fence = current.serial
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
        self.fence = new.serial
        return new

    def recover(self) -> tuple[State, tuple[str, ...]]:
        stored = self.read_stored()
        replays = self._replay(stored)
        if not replays:
            return stored, ()
        folded = self.write(fold(stored, [r for _, _, fenced in replays for r in fenced.fold]))
        # both are folded into the state just written: only now may they go. A file
        # with damaged lines, or with lines kept aside by their fence, is kept aside
        # for a person, never deleted.
        messages: list[str] = []
        for path, replay, fenced in replays:
            messages += [*replay.damaged, *fenced.notes(str(path), stored.serial)]
            if replay.damaged or fenced.stale:
                kind = "damaged" if replay.damaged else "stale"
                aside = path.with_name(f"{path.name}.{kind}-{int(time.time())}")
                os.replace(path, aside)
                messages.append(f"{kind} {path.name} kept as {aside}")
            else:
                path.unlink()
        fsync_dir(self.journal_path.parent)
        for message in messages:
            log.warning("%s", message)
        return folded, tuple(messages)

    def journal(self, state: State) -> FileJournal:
        self.fence = state.serial
        return FileJournal(self, state.lineage)

    # locking -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float = 0.0) -> Iterator[None]:
        import socket  # only here: reading a state for a plan takes no lock

        import filelock

        made = [f for f in (self.path.parent, *self.path.parent.parents) if not f.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.lock_path), timeout=timeout, is_singleton=False)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    lock.acquire(timeout=max(0.0, deadline - time.monotonic()), poll_interval=0.1)
                except FileNotFoundError:  # a holder that wrote nothing removed the folder
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    continue
                if _lock_file_is_current(lock, self.lock_path):
                    break
                # its holder wrote nothing and removed the file while holding it; the lock
                # now lives in a new file at that path, so take that one
                lock.release()
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
                user=os_user(),
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
            if self._nothing_written() and _lock_fd(lock) is not None:
                # a refused or empty command leaves no lock file (nor the folder it made)
                # behind; removed while still held, and a waiter checks the file it got
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()
                for folder in made:  # innermost first; only while empty
                    try:
                        folder.rmdir()
                    except OSError:
                        break
            lock.release()

    def lock_holder(self) -> str | None:
        """Who holds the lock now, without taking it (a live holder's record); None
        when nobody does, or only a killed process left its record."""
        if not self.lock_path.exists():
            return None
        holder = self._read_holder_once()
        return holder.describe() if holder is not None and _may_be_alive(holder) else None

    def _nothing_written(self) -> bool:
        """True when no file of this state exists beside its lock: never written."""
        keep = {self.lock_path.name, self.holder_path.name}
        try:
            siblings = list(self.path.parent.iterdir())
        except OSError:
            return False
        prefix = (self.path.name, self.path.stem + ".")
        return not any(p.name.startswith(prefix) and p.name not in keep for p in siblings)

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
            data = json.loads(read_input(self.holder_path, 64 * 1024))
            return LockHolder(**data)
        except (OSError, ValueError, TypeError, RecursionError):
            return None


def _lock_fd(lock: filelock.FileLock) -> int | None:
    """The descriptor filelock holds the OS lock on, when its version exposes it."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    return fd if isinstance(fd, int) else None


def _lock_file_is_current(lock: filelock.FileLock, path: Path) -> bool:
    """Whether the file just locked is still the one at ``path`` (an earlier holder that
    wrote nothing removes its lock file; a lock on the removed file locks nothing)."""
    fd = _lock_fd(lock)
    if fd is None:
        return True  # nothing is ever removed then (see lock())
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


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


class FileJournal:
    """Append-only, fsynced journal lines; ``checkpoint`` folds results into the state."""

    def __init__(self, store: FileStateStore, lineage: str) -> None:
        self._store = store
        self._lineage = lineage
        self._log = AppendLog(store.journal_path, "journal")

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
        self._log.commit(
            Entry(
                lambda: record.to_line(self._lineage, self._store.fence),
                book,
                book if book_on_failure else None,
            )
        )

    def append_pair(
        self,
        record: JournalRecord,
        book: Callable[[], None],
        intent: JournalRecord,
        book_intent: Callable[[], None],
        *,
        book_on_failure: bool = False,
    ) -> None:
        """Append ``record`` and then ``intent`` with one write and one fsync. A crash
        can tear only the intent's line (skipped by the replay: its create was not
        sent) or the result's, as with :meth:`append`. When the write fails, the intent
        is not booked; the next checkpoint rewrites the journal without it."""

        def render() -> bytes:
            fence = self._store.fence
            return record.to_line(self._lineage, fence) + intent.to_line(self._lineage, fence)

        def booked() -> None:
            book()
            book_intent()

        self._log.commit(Entry(render, booked, book if book_on_failure else None))

    def checkpoint(self, snapshot: Snapshot) -> State:
        """Write the state from ``snapshot`` and restart the journal with only the
        records it keeps (intents still in flight).

        Crash-safe in either order: the state is written first, and replaying the old
        journal over it is idempotent.
        """
        with self._log.mutex:
            state, keep = snapshot()
            written = self._store.write(state)
            fresh = b"".join(record.to_line(self._lineage, written.serial) for record in keep)
            self._log.close_locked()
            if fresh:
                atomic_write(self._store.journal_path, fresh)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self._store.journal_path.unlink()
                fsync_dir(self._store.journal_path.parent)
            return written

    def close(self) -> None:
        self._log.close()


#: Name endings of the files that travel with a state (any environment's): journal,
#: rescue files (file and postgres backends), audit log, lock and lock holder, backup,
#: and the copies kept aside.
_BOOKKEEPING = (
    ".journal.jsonl",
    ".rescue.jsonl",
    ".pg-rescue.jsonl",
    ".audit.jsonl",
    ".lock",
    ".lock.json",
    ".json.backup",
)


def refuse_bookkeeping_target(out: Path, state_path: Path, what: str, option: str) -> None:
    """The one check of every command that writes a file a person names (``plan --out``,
    ``state pull --to``): never onto the state or a file that travels with it (journal,
    rescue, audit, lock, backup), of this environment or, by its name, of any other.
    Raises SettingsError; nothing is written."""
    store = FileStateStore(state_path)
    guarded = (
        store.path,
        store.backup_path,
        store.journal_path,
        store.rescue_path,
        store.path.with_name(store.path.stem + ".pg-rescue.jsonl"),
        store.lock_path,
        store.holder_path,
        store.path.with_name(store.path.stem + ".audit.jsonl"),
    )
    target = out.resolve()
    name = target.name
    if (
        any(target == path.resolve() for path in guarded)
        or name.endswith(_BOOKKEEPING)
        or any(f"{end}." in name for end in _BOOKKEEPING[:3])
    ):
        raise SettingsError(
            f"refusing to write {what} onto {out}: it belongs to the state "
            f"{state_path} (its journal, rescue, audit, lock or backup file, or one kept "
            f"aside); choose another {option} file. Nothing was written"
        )


def open_store(location: Path) -> FileStateStore:
    """The file backend for a state file (:func:`coins_sync.workspace.open_backend`
    chooses between it and the postgres backend)."""
    return FileStateStore(location)
