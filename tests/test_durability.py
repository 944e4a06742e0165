"""Durability: no state record is lost to a concurrent writer, a signal, a full disk or an
odd path (issue 15, sections 2 to 5).

Each test drives the CLI (CliRunner in-process, or a real process for signals) against
the sandbox on 127.0.0.1; faults are injected at the boundary (a wrapped ``os.write``, a
state file replaced mid-run), never by editing the code under test.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import CoinsClient, RemoteConfig
from coins_sync.sandbox import SandboxServer
from coins_sync.state.file import FileStateStore
from coins_sync.state.model import State, StateEntry, serialize
from tests import chaos
from tests.conftest import SANDBOX_TOKEN, Invoke, write

RULES = """\
companyId: ACME
rules:
  - event: A_EVENT
    amount: 5
  - event: B_EVENT
    amount: 6
  - event: C_EVENT
    amount: 7
  - event: D_EVENT
    amount: 8
"""
ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
OTHER = RuleKey("OTHER", "DEFAULT", "PULLED_EVENT")


@pytest.fixture
def store(project: Path) -> FileStateStore:
    write(project / "configs/acme.yaml", RULES)
    return FileStateStore(project / "state" / "default.json")


def apply(invoke: Invoke, sandbox: SandboxServer, *args: str) -> Any:
    return invoke("apply", "--yes", "--parallelism", "1", "--api-url", sandbox.url, *args, env=ENV)


def after_creates(
    monkeypatch: pytest.MonkeyPatch, count: int, action: Callable[[], None]
) -> list[RemoteConfig]:
    """Run ``action`` once, right after the server confirmed the ``count``-th create."""
    original = CoinsClient.create
    confirmed: list[RemoteConfig] = []

    def create(self: CoinsClient, key: RuleKey, amount: int) -> RemoteConfig:
        remote = original(self, key, amount)
        confirmed.append(remote)
        if len(confirmed) == count:
            action()
        return remote

    monkeypatch.setattr(CoinsClient, "create", create)
    return confirmed


def ids_in(state: State) -> set[str]:
    return {entry.coin_config_id for entry in state.entries.values()}


# -- section 2: compare-and-swap -------------------------------------------------------


def git_pull(store: FileStateStore) -> State:
    """Replace the state file as a `git pull` would: same lineage, a higher serial, an
    entry this run knows nothing about."""
    current = store.read_stored()
    newer = State(
        lineage=current.lineage,
        serial=current.serial + 5,
        entries={**current.entries, OTHER: StateEntry(OTHER, 1, "pulled-id-1")},
    )
    store.path.write_bytes(serialize(newer))
    return newer


def test_a_newer_state_on_disk_is_never_overwritten_and_the_run_is_rescued(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pulled: list[State] = []
    confirmed = after_creates(monkeypatch, 2, lambda: pulled.append(git_pull(store)))
    done = apply(invoke, sandbox)
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    assert "refusing to overwrite the newer state" in done.output
    assert store.rescue_path.name in done.output and "coins-sync plan" in done.output
    # the newer state is untouched, and this run's results are kept beside it
    assert store.read_stored() == pulled[0]
    assert store.rescue_path.exists()
    assert len(confirmed) == 4 and len(sandbox.configs()) == 4

    # the next run folds the rescue file in: nothing is created twice, nothing lost
    plan = invoke("plan", env=ENV)
    assert "No changes" in plan.output or "0 to create" in plan.output, plan.output
    again = apply(invoke, sandbox)
    assert again.exit_code == 0, again.output
    assert len(sandbox.configs()) == 4
    final = store.read_stored()
    assert ids_in(final) == {c.coin_config_id for c in confirmed} | {"pulled-id-1"}
    assert not store.rescue_path.exists()


def test_a_rescue_file_of_another_lineage_is_refused_not_dropped(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
) -> None:
    assert apply(invoke, sandbox).exit_code == 0
    line = json.dumps(
        {
            "kind": "result",
            "lineage": "someone-else",
            "companyId": "ACME",
            "configuration": "DEFAULT",
            "event": "A_EVENT",
            "amount": 5,
            "outcome": "created",
            "coinConfigId": "x1",
            "at": "2024-01-01T00:00:00Z",
        }
    )
    store.rescue_path.write_text(line + "\n")
    done = apply(invoke, sandbox)
    assert done.exit_code == 1
    assert store.rescue_path.name in done.output and "another state" in done.output
    assert store.rescue_path.exists()


# -- section 3: signals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signals", "expected"),
    [
        ((signal.SIGTERM,), 143),
        ((signal.SIGINT, signal.SIGTERM), 130),  # CI: SIGINT, then SIGTERM while draining
        ((signal.SIGTERM, signal.SIGTERM), 143),
    ],
)
def test_sigterm_stops_like_ctrl_c_and_a_second_signal_loses_nothing(
    project: Path, signals: tuple[int, ...], expected: int
) -> None:
    figures = chaos.Figures("SIGTERM", rules=24)
    with chaos.lab(project, latency_ms=150) as the_lab:
        desired = chaos.write_rules(project / "configs", 24)
        code = chaos.interrupt_apply(the_lab, random.Random(3), figures, signals)
        output = the_lab.outputs[-1]
        assert code == expected, output
        assert "Traceback" not in output
        assert "Interrupted: nothing new was sent" in output
        assert not the_lab.store.journal_path.exists()
        stored = the_lab.store.read_stored()
        assert not stored.uncertain  # what was in flight finished and was recorded
        assert 0 < len(stored.entries) < 24
        assert {c["coinConfigId"] for c in the_lab.server.configs()} == ids_in(stored)

        the_lab.converge(figures, desired)
        assert figures.rounds == 1 and figures.ok, figures.report()


def test_ctrl_c_during_apply_refresh_exits_130(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert apply(invoke, sandbox).exit_code == 0
    write(project / "configs/acme.yaml", RULES.replace("amount: 5", "amount: 50"))

    def interrupted_get(self: CoinsClient, coin_config_id: str) -> RemoteConfig:
        raise KeyboardInterrupt

    monkeypatch.setattr(CoinsClient, "get", interrupted_get)
    done = apply(invoke, sandbox, "--refresh")
    assert done.exit_code == 130, done.output
    assert "nothing was sent" in done.output
    assert [c["amount"] for c in sandbox.configs()].count(50) == 0


# -- section 4: full disks and odd paths -------------------------------------------------


class FullDisk:
    """``os.write`` on files under ``state/`` fails with ENOSPC once switched on; the audit
    log first gets a short write (half the bytes), as a real full disk does. ``spare``
    names files that still fit (a small rescue file, say)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, spare: str = "\0") -> None:
        self.on = False
        self.spare = spare
        self.refused = 0
        self.torn = False
        real = os.write

        def write(fd: int, data: Any) -> int:
            if self.on:
                try:
                    target = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    target = ""
                if f"{os.sep}state{os.sep}" in target and self.spare not in target:
                    self.refused += 1
                    if target.endswith(".audit.jsonl") and not self.torn and len(data) > 1:
                        self.torn = True  # one short write, then nothing fits
                        return real(fd, bytes(data)[: len(data) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)


def test_a_full_disk_stops_cleanly_and_prints_every_confirmed_id(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disk = FullDisk(monkeypatch)
    confirmed = after_creates(monkeypatch, 2, lambda: setattr(disk, "on", True))
    done = apply(invoke, sandbox)
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output and disk.refused
    assert "No space left on device" in done.output
    assert len(confirmed) == 2 and len(sandbox.configs()) == 2  # nothing sent after
    for remote in confirmed:  # every id the server confirmed is printed, with its key
        assert f"{remote.key} coinConfigId={remote.coin_config_id}" in done.output
    assert store.read_stored().entries == {}  # the state is intact: never half-written
    # (the state file was first written before any send, to fix the lineage)


def test_a_full_disk_with_room_for_the_rescue_file_loses_no_confirmed_create(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disk = FullDisk(monkeypatch, spare="rescue")
    confirmed = after_creates(monkeypatch, 2, lambda: setattr(disk, "on", True))
    done = apply(invoke, sandbox)
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    assert store.rescue_path.name in done.output
    assert store.rescue_path.exists()

    disk.on = False  # space freed: the next apply folds the rescue file, sends the rest
    again = apply(invoke, sandbox)
    assert again.exit_code == 0, again.output
    assert "uncertain" not in again.output.replace("0 uncertain", "")
    state = store.read_stored()
    assert not state.uncertain and len(state.entries) == 4
    assert {c.coin_config_id for c in confirmed} <= ids_in(state)
    assert len(sandbox.configs()) == 4  # no duplicate
    assert not store.rescue_path.exists()

    # the audit line torn by the short write is ended before the next one, and `report`
    # counts it instead of skipping it silently
    audit = project / "state" / "default.audit.jsonl"
    lines = audit.read_bytes().split(b"\n")
    assert sum(1 for line in lines if line and not parses(line)) == 1, lines
    report = invoke("report", env=ENV)
    assert report.exit_code == 0, report.output
    assert "1 unreadable audit line(s)" in report.output


def test_a_state_file_that_is_a_symlink_is_written_through(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
) -> None:
    shared = project / "shared" / "prod.json"
    shared.parent.mkdir()
    store.path.parent.mkdir()
    store.path.symlink_to(shared)
    assert apply(invoke, sandbox).exit_code == 0
    assert store.path.is_symlink()
    assert len(FileStateStore(shared).read_stored().entries) == 4


def test_a_journal_path_that_is_a_directory_is_an_error_before_any_send(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
) -> None:
    store.journal_path.mkdir(parents=True)
    done = apply(invoke, sandbox)
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    assert store.journal_path.name in done.output and "directory" in done.output
    assert sandbox.configs() == []


def parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def test_a_rescue_file_that_cannot_be_written_is_said_and_the_run_fails_cleanly(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    store: FileStateStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nowhere left to keep the results: the user is told which file failed and why, and
    the confirmed ids are printed (the last copy), without a traceback."""
    from coins_sync.state.files import AppendLog

    real_open = AppendLog._open

    def full_disk_for_the_rescue(self: AppendLog) -> int:
        if self.what == "rescue file":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self)

    monkeypatch.setattr(AppendLog, "_open", full_disk_for_the_rescue)
    confirmed = after_creates(monkeypatch, 2, lambda: git_pull(store))
    done = apply(invoke, sandbox)
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    assert "cannot append to the rescue file: [Errno 28] No space left" in done.output
    for remote in confirmed:
        assert remote.coin_config_id in done.output
