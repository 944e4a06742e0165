"""Durability: no state record is lost to a concurrent writer, a signal, a full disk or an
odd path (issue 15, sections 2 to 5).

Each test drives the CLI (CliRunner in-process, or a real process for signals) against
the sandbox on 127.0.0.1; faults are injected at the boundary (a wrapped ``os.write``, a
state file replaced mid-run), never by editing the code under test.
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coins_sync.api import CoinsClient, RemoteConfig
from coins_sync.rules import RuleKey
from coins_sync.sandbox import SandboxServer
from coins_sync.state import FileStateStore, State, StateEntry, serialize
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


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_bytes().splitlines():
        yield json.loads(line)


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
