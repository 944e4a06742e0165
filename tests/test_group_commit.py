"""Group commit of the file logs (journal, audit log, rescue file): many threads' lines in
one write and one fsync, and still no thread returns before its own line is durable."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from coins_sync.errors import StateError
from coins_sync.state import files
from coins_sync.state.files import AppendLog, Entry

THREADS, EACH = 16, 5


class SlowDisk:
    """``os.fsync`` that takes a while and remembers how much of the file each call made
    durable, as a slow disk under load does."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        self.durable = b""  # the file's bytes as of the last fsync that returned
        self.calls = 0
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        time.sleep(self.seconds)
        self.real(fd)
        self.calls += 1
        if self.path.exists():
            self.durable = self.path.read_bytes()


def run_threads(work: list[threading.Thread]) -> None:
    for thread in work:
        thread.start()
    for thread in work:
        thread.join(30)
        assert not thread.is_alive()


def test_lines_of_many_threads_share_fsyncs_and_each_returns_once_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.journal.jsonl"
    disk = SlowDisk(path, 0.01)
    monkeypatch.setattr(files.os, "fsync", disk)
    log = AppendLog(path, "journal")
    not_durable: list[bytes] = []
    booked: list[bytes] = []

    def worker(n: int) -> None:
        for i in range(EACH):
            line = f'{{"thread":{n},"i":{i}}}\n'.encode()
            log.commit(Entry(lambda line=line: line, lambda line=line: booked.append(line)))
            if line not in disk.durable:  # append returned before an fsync covered it
                not_durable.append(line)

    run_threads([threading.Thread(target=worker, args=(n,)) for n in range(THREADS)])
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert sorted(lines) == sorted(
        f'{{"thread":{n},"i":{i}}}\n'.encode() for n in range(THREADS) for i in range(EACH)
    )
    assert not_durable == []
    assert booked == lines  # booked under the mutex, in the order of the file
    # 80 lines, written while other threads waited: far fewer fsyncs than lines
    assert disk.calls < THREADS * EACH / 2


def test_a_failed_group_write_fails_every_line_of_it_and_the_log_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.audit.jsonl"
    log = AppendLog(path, "audit log")
    log.append(b"first\n")
    real_write = files.os.write
    failing = threading.Event()
    failing.set()

    torn = threading.Event()

    def write(fd: int, data: memoryview) -> int:
        if failing.is_set():
            if not torn.is_set():  # the first write is torn, then the disk is full
                torn.set()
                real_write(fd, bytes(data)[:3])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", write)
    outcomes: list[str] = []
    errors: list[str] = []

    def worker(n: int) -> None:
        try:
            log.commit(
                Entry(
                    lambda: f"line {n}\n".encode(),
                    lambda: outcomes.append(f"written {n}"),
                    lambda: outcomes.append(f"failed {n}"),
                )
            )
        except StateError as e:
            errors.append(str(e))

    run_threads([threading.Thread(target=worker, args=(n,)) for n in range(8)])
    assert len(errors) == 8 and all("No space left on device" in e for e in errors)
    assert sorted(outcomes) == sorted(f"failed {n}" for n in range(8))
    failing.clear()
    log.append(b"after\n")
    log.close()
    lines = path.read_bytes().splitlines()
    # the torn line was ended before the next one, and nothing else of the failed groups
    assert lines == [b"first", b"lin", b"after"]


# -- review of issue 22 --------------------------------------------------------------------


class Interrupted(BaseException):
    """What a signal handler raises in the main thread (as KeyboardInterrupt does)."""


def queued(log: AppendLog, count: int) -> None:
    """Wait (bounded) until ``count`` entries wait behind the write under way."""
    for _ in range(1000):
        if len(log._group._waiting) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{count} entries never queued")


def blocking_leader(log: AppendLog) -> tuple[threading.Thread, threading.Event]:
    """A thread whose line is being written (its render waits for the event returned)
    while the test queues other lines behind it."""
    rendering, release = threading.Event(), threading.Event()

    def render() -> bytes:
        rendering.set()
        release.wait(10)
        return b"leader\n"

    thread = threading.Thread(target=log.commit, args=(Entry(render),), daemon=True)
    thread.start()
    assert rendering.wait(10)
    return thread, release


def test_a_waiter_interrupted_before_its_turn_does_not_stall_the_log(tmp_path: Path) -> None:
    # Ctrl-C in the main thread while it waits behind another thread's write: the write
    # then hands the next group to a thread that is gone. The log must go on (and the
    # interrupted line, never taken by a write, is not written).
    path = tmp_path / "x.audit.jsonl"
    log = AppendLog(path, "audit log")
    leader, release = blocking_leader(log)
    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def interrupt_main() -> None:
        queued(log, 1)
        signal.pthread_kill(main, signal.SIGUSR1)

    def raise_interrupted(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        interrupter = threading.Thread(target=interrupt_main, daemon=True)
        interrupter.start()
        with pytest.raises(Interrupted):
            log.append(b"interrupted\n")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    interrupter.join(10)
    release.set()
    leader.join(10)
    after = threading.Thread(target=log.append, args=(b"after\n",), daemon=True)
    after.start()
    after.join(10)
    assert not after.is_alive(), "the log stalled: the next append never returned"
    log.close()
    assert path.read_bytes().splitlines() == [b"leader", b"after"]


def test_an_entry_that_fails_alone_does_not_fail_the_others_of_its_group(
    tmp_path: Path,
) -> None:
    # One thread's render or bookkeeping raising must not fail (or unbook) the lines of
    # other threads that happen to share its write: each fails alone, as before group
    # commit, and a failed render runs its own failed callback (nothing of it is written).
    path = tmp_path / "x.journal.jsonl"
    log = AppendLog(path, "journal")
    leader, release = blocking_leader(log)
    outcomes: list[str] = []
    errors: dict[str, BaseException] = {}

    def bad_render() -> bytes:
        raise ValueError("cannot render")

    def bad_booking() -> None:
        raise RuntimeError("cannot book")

    entries = {
        "a": Entry(
            bad_render, lambda: outcomes.append("written a"), lambda: outcomes.append("failed a")
        ),
        "b": Entry(
            lambda: b"b\n",
            lambda: outcomes.append("written b"),
            lambda: outcomes.append("failed b"),
        ),
        "c": Entry(lambda: b"c\n", bad_booking, lambda: outcomes.append("failed c")),
        "d": Entry(
            lambda: b"d\n",
            lambda: outcomes.append("written d"),
            lambda: outcomes.append("failed d"),
        ),
    }

    def worker(name: str) -> None:
        try:
            log.commit(entries[name])
        except BaseException as e:
            errors[name] = e

    threads = []
    for count, name in enumerate(entries, start=1):  # queued in this order: one group
        thread = threading.Thread(target=worker, args=(name,), daemon=True)
        thread.start()
        threads.append(thread)
        queued(log, count)
    release.set()
    leader.join(10)
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    log.close()
    assert sorted(errors) == ["a", "c"]
    assert isinstance(errors["a"], ValueError) and isinstance(errors["c"], RuntimeError)
    assert outcomes == ["failed a", "written b", "written d"]
    assert path.read_bytes().splitlines() == [b"leader", b"b", b"c", b"d"]


def test_a_booking_that_appends_to_its_own_log_fails_instead_of_hanging(tmp_path: Path) -> None:
    # A bookkeeping callback runs inside the group's write; an append from there would
    # wait for the very write it runs in. It must fail (that entry alone), not hang.
    path = tmp_path / "x.journal.jsonl"
    log = AppendLog(path, "journal")
    errors: list[BaseException] = []

    def nested() -> None:
        log.append(b"nested\n")

    def worker() -> None:
        try:
            log.commit(Entry(lambda: b"outer\n", nested))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the append hung"
    assert [type(e) for e in errors] == [RuntimeError]
    log.append(b"after\n")  # the log goes on
    log.close()
    assert path.read_bytes().splitlines() == [b"outer", b"after"]


def test_an_interrupt_mid_write_fails_the_line_and_the_next_line_starts_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C while the group is being written (a torn write): the appending thread gets
    # the interrupt, the entry's failed callback runs (a confirmed result stays booked),
    # and the file is reopened, so the next line does not glue onto the torn one.
    path = tmp_path / "x.journal.jsonl"
    log = AppendLog(path, "journal")
    log.append(b"first\n")
    real_write = files.os.write

    def torn_write(fd: int, data: memoryview) -> int:
        real_write(fd, bytes(data)[:3])
        raise Interrupted

    outcomes: list[str] = []
    monkeypatch.setattr(files.os, "write", torn_write)
    with pytest.raises(Interrupted):
        log.commit(
            Entry(
                lambda: b"line\n",
                lambda: outcomes.append("written"),
                lambda: outcomes.append("failed"),
            )
        )
    monkeypatch.setattr(files.os, "write", real_write)
    log.append(b"after\n")
    log.close()
    assert outcomes == ["failed"]
    assert path.read_bytes().splitlines() == [b"first", b"lin", b"after"]
