"""Durable bytes on disk: one atomic write and one append-and-fsync log.

The state, its journal, the rescue file and the audit log all go through these, so a
full disk or a kill never leaves a file half-written: a whole file is replaced by
rename, and a line log ends a torn last line before appending the next.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coins_sync.errors import StateError
from coins_sync.state.groupcommit import GroupCommit


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a created, renamed or removed file) durable."""
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
    fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class Entry:
    """What one thread appends to an :class:`AppendLog`: ``render`` gives its bytes (called
    under the log's mutex, in the order of the file), ``written`` runs once they are
    durable and ``failed`` when their write failed (or ``render`` raised), both under the
    same mutex. An entry whose ``render`` or callback raises fails alone: the other
    entries of its group are written and booked as if it were not there."""

    render: Callable[[], bytes]
    written: Callable[[], None] | None = None
    failed: Callable[[], None] | None = None


class _Append:
    """One entry in a group, and what became of it (set by the group's writer)."""

    __slots__ = ("entry", "error")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.error: BaseException | None = None

    def call(self, callback: Callable[[], None] | None) -> None:
        """Run a bookkeeping callback; what it raises is this entry's error alone (an
        interrupt, which is no entry's doing, goes on up: every entry's thread gets it)."""
        if callback is None:
            return
        try:
            callback()
        except Exception as e:
            if self.error is None:
                self.error = e


class AppendLog:
    """An append-only file of lines, each written whole and fsynced before ``append``
    returns; safe to share between threads. Threads that append while a write is under
    way are written together, with one write and one fsync (group commit, see
    :class:`~coins_sync.state.groupcommit.GroupCommit`). A write that fails closes the
    file, and the next one reopens it and ends its torn last line first.

    ``mutex`` is held while a group is rendered, written and booked: a caller that holds
    it (a checkpoint) sees each entry with its bookkeeping, or neither."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what  # for messages: "journal", "audit log"
        self.mutex = threading.Lock()
        self._fd: int | None = None
        self._group: GroupCommit[_Append] = GroupCommit(self._write_group)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise IsADirectoryError(
                    errno.EISDIR, f"the {self.what} path is a directory", str(self.path)
                )
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            repair_tail(self._fd)  # a line torn by a full disk is ended first
            fsync_dir(self.path.parent)
        return self._fd

    def append_locked(self, line: bytes) -> None:
        """Append and fsync ``line``; the caller holds :attr:`mutex`."""
        try:
            fd = self._open()
            write_all(fd, line)
            os.fsync(fd)
        except OSError as e:
            self.close_locked()  # reopened next time, its torn tail ended first
            raise StateError(f"{self.path}: cannot append to the {self.what}: {e}") from e
        except BaseException:  # e.g. Ctrl-C mid-write: the tail may be torn all the same
            self.close_locked()
            raise

    def append(self, line: bytes) -> None:
        """Append and fsync ``line``; return once it is durable."""
        self.commit(Entry(lambda: line))

    def commit(self, entry: Entry) -> None:
        """Append ``entry`` (see :class:`Entry`); return once it is durable and booked, or
        raise the :class:`StateError` of its failed write (or what its own ``render`` or
        callback raised)."""
        item = _Append(entry)
        self._group.commit(item)
        if item.error is not None:
            raise item.error

    def _write_group(self, items: list[_Append]) -> None:
        """Render, write and book a group under the mutex; each item's outcome is left
        in its ``error`` (never raised here, so no entry fails for another's sake)."""
        with self.mutex:
            lines: list[bytes] = []
            taken: list[_Append] = []
            for item in items:
                try:
                    lines.append(item.entry.render())
                except Exception as e:  # this entry alone: nothing of it is written
                    item.error = e
                    item.call(item.entry.failed)
                else:
                    taken.append(item)
            if not taken:
                return
            try:
                self.append_locked(b"".join(lines))
            except BaseException as e:  # every line of the group failed with it
                for item in taken:
                    item.error = e
                    item.call(item.entry.failed)
                if not isinstance(e, Exception):
                    raise  # an interrupt: every thread of the group gets it, as before
                return
            for item in taken:
                item.call(item.entry.written)

    def close_locked(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        with self.mutex:
            self.close_locked()
