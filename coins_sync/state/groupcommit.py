"""Group commit: many threads' records made durable by one write, each thread returning
only once its own record is.

An apply's workers each journal a record before they go on (an intent before its create
is sent, a result as soon as the answer came). Made durable one at a time, 16 workers
queue behind each other's fsync (or database commit): under load that wait, not the
network, sets the pace. With :class:`GroupCommit`, a record that arrives while a write is
under way waits for it; then one waiting thread writes every record that piled up
meanwhile, in arrival order, with one write. Nothing is durable any later than before,
and no thread returns before its record is.

The PostgreSQL journal (one statement per group) and the file logs (one ``write`` and one
``fsync`` per group: journal, audit log, rescue file) share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class _Waiter(Generic[T]):
    """One item waiting for the write that takes it."""

    __slots__ = ("done", "error", "item", "lead", "ready")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False  # written, or failed with ``error``
        self.lead = False  # its thread is to write the next group
        self.error: BaseException | None = None
        self.ready = threading.Event()  # set once ``done`` or ``lead``


class GroupCommit(Generic[T]):
    """Writes items in groups with ``write(items)``, which makes them all durable or
    raises; :meth:`commit` returns once its item is written, or raises what the write of
    its group raised (every item of a failed group gets the same error)."""

    def __init__(self, write: Callable[[list[T]], None]) -> None:
        self._write = write
        self._queue = threading.Lock()
        self._waiting: list[_Waiter[T]] = []
        self._writing = False
        self._writer: int | None = None  # the thread in ``write`` now (guarded by _queue)

    def commit(self, item: T) -> None:
        """Return once ``item`` is written (raise what its group's write raised).

        With no write under way, this thread writes every waiting item; else it waits
        until that write has taken ``item`` along, or has handed it the next write. Only
        the threads concerned are woken, each once. A thread interrupted while it waits
        (Ctrl-C in the main thread) withdraws its item if no write has taken it yet, and
        hands on the next write if it was handed it: the others never wait for it."""
        waiter = _Waiter(item)
        try:
            with self._queue:
                if self._writer == threading.get_ident():
                    # from inside ``write`` (a bookkeeping callback): it would wait for itself
                    raise RuntimeError("cannot commit from inside the write of a group")
                self._waiting.append(waiter)
                waiter.lead = not self._writing
                self._writing = True
            while not waiter.lead and not waiter.done:
                waiter.ready.wait(1.0)  # the writer always sets it: done, or handed the lead
            if not waiter.done:
                self._lead()
        except BaseException:
            self._withdraw(waiter)
            raise
        if waiter.error is not None:
            raise waiter.error

    def _withdraw(self, waiter: _Waiter[T]) -> None:
        """Take back a waiter whose thread stops waiting; a write that took it already
        goes on without it."""
        with self._queue:
            if waiter not in self._waiting:
                return
            self._waiting.remove(waiter)
            if waiter.lead:
                self._hand_on()

    def _hand_on(self) -> None:
        """The next waiting thread writes the next group, or none is under way (the
        caller holds ``_queue``)."""
        if self._waiting:
            self._waiting[0].lead = True
            self._waiting[0].ready.set()
        else:
            self._writing = False

    def _lead(self) -> None:
        """Write the waiting items as one group, then hand the next group on (whatever
        the write raised: an item's thread is never left waiting)."""
        with self._queue:
            batch, self._waiting = self._waiting, []
            self._writer = threading.get_ident()
        error: BaseException | None = None
        try:
            self._write([waiter.item for waiter in batch])
        except BaseException as e:  # every item of the group failed with it
            error = e
        finally:
            with self._queue:
                self._writer = None
                for waiter in batch:
                    waiter.done, waiter.error = True, error
                self._hand_on()
            for waiter in batch:
                waiter.ready.set()
