"""Group commit of the file logs (journal, audit log, rescue file): many threads' lines in
one write and one fsync, and still no thread returns before its own line is durable."""

from __future__ import annotations

import os
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
