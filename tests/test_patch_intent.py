"""Every PATCH journals its intent before it is sent (issue 21). An apply killed with
``kill -9`` after the server applied an update, but before the answer came, used to leave
no trace: after a revert of the configs, plan said "no changes" while the server held
the new amount. Now the open intent marks the entry pending and the next plan reads it
back, on both backends; a move killed the same way is found done and recorded."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.sandbox.messages import SandboxRequest, SandboxResponse
from tests import chaos

KEY = RuleKey("ACME", "DEFAULT", "MEAL")
MOVED = RuleKey("ACME", "DEFAULT", "MEAL_CARD")


@pytest.fixture(params=["file", "postgres"])
def make_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A chaos lab (a sandbox and a project folder) on either backend."""

    @contextlib.contextmanager
    def make(**faults: Any) -> Iterator[chaos.Lab]:
        if request.param == "file":
            with chaos.lab(tmp_path, **faults) as the_lab:
                yield the_lab
            return
        from tests import pg_chaos

        dsn = request.getfixturevalue("pg_dsn")
        with pg_chaos.lab(tmp_path, dsn, **faults) as the_lab:
            yield the_lab

    yield make


def rules(lab: chaos.Lab, text: str) -> None:
    (lab.workdir / "configs" / "acme.yaml").write_text(
        "companyId: ACME\nrules:\n" + text, encoding="utf-8"
    )


@contextlib.contextmanager
def patches_held(lab: chaos.Lab) -> Iterator[threading.Event]:
    """Hold every PATCH at the sandbox, once it has arrived whole, until the test is
    done with the client; the yielded event is set when the first one arrives."""
    arrived, release = threading.Event(), threading.Event()
    app = lab.server.app
    original = app.handle

    def handle(request: SandboxRequest) -> SandboxResponse:
        if request.method.upper() == "PATCH":
            arrived.set()
            release.wait(30)
        return original(request)

    app.handle = handle  # type: ignore[method-assign]
    try:
        yield arrived
    finally:
        release.set()
        del app.handle


def kill_mid_patch(lab: chaos.Lab) -> None:
    """Start an apply, ``kill -9`` it while its PATCH is in the server's hands (sent,
    not answered), then let the server apply it."""
    with patches_held(lab) as arrived, lab.spawn("apply", "--yes") as proc:
        assert arrived.wait(30), lab.outputs[-1:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    chaos.settle(lab.server)


def test_an_update_killed_after_the_server_applied_it_is_read_back(make_lab: Any) -> None:
    with make_lab() as lab:
        rules(lab, "  - event: MEAL\n    amount: 6\n")
        code, output = lab.cli("apply", "--yes")
        assert code == 0, output
        rules(lab, "  - event: MEAL\n    amount: 9\n")
        kill_mid_patch(lab)
        (config,) = lab.server.configs()
        assert config["amount"] == 9  # the server applied it; no answer came back
        entry = lab.state().entries[KEY]
        assert (entry.amount, entry.pending) == (6, 9)  # the intent left its mark

        rules(lab, "  - event: MEAL\n    amount: 6\n")  # the user reverts
        code, output = lab.cli("plan", "--detailed-exitcode", "--format", "json")
        assert code == 2, output
        (change,) = json.loads(output[output.index("{") :])["changes"]  # after stderr notes
        assert (change["action"], change["before"], change["amount"]) == ("update", 9, 6)
        code, output = lab.cli("apply", "--yes")
        assert code == 0, output
        assert lab.server.configs()[0]["amount"] == 6
        assert lab.state().entries[KEY].pending is None


def test_a_move_killed_after_the_server_applied_it_is_recorded_without_a_second_patch(
    make_lab: Any,
) -> None:
    with make_lab() as lab:
        rules(lab, "  - event: MEAL\n    amount: 6\n")
        code, output = lab.cli("apply", "--yes")
        assert code == 0, output
        rules(lab, "  - event: MEAL_CARD\n    amount: 6\n    movedFrom: ACME/DEFAULT/MEAL\n")
        kill_mid_patch(lab)
        (config,) = lab.server.configs()
        assert config["event"] == "MEAL_CARD"
        state = lab.state()
        assert state.entries[KEY].pending == 6 and MOVED not in state.entries
        patches = lab.server.stats.get("patches", 0)

        code, output = lab.cli("apply", "--yes")
        assert code == 0, output
        assert lab.server.stats.get("patches", 0) == patches  # found moved: no PATCH
        state = lab.state()
        assert KEY not in state.entries
        assert state.entries[MOVED].coin_config_id == config["coinConfigId"]
        assert state.entries[MOVED].pending is None
        code, output = lab.cli("plan", "--detailed-exitcode")
        assert code == 0, output
        assert len(lab.server.configs()) == 1


def test_a_retirement_killed_after_the_server_applied_it_is_recorded_as_retired(
    make_lab: Any,
) -> None:
    """The retirement's answer never came (kill -9 after the server set amount 0): the
    next apply reads it back and records the entry retired, with an audit record for
    the report's "when and by whom", and sends no second PATCH."""
    with make_lab() as lab:
        rules(lab, "  - event: MEAL\n    amount: 6\n")
        code, output = lab.cli("apply", "--yes")
        assert code == 0, output
        rules(lab, "  - event: MEAL\n    retired: true\n")
        kill_mid_patch(lab)
        (config,) = lab.server.configs()
        assert config["amount"] == 0  # the server applied it; no answer came back
        entry = lab.state().entries[KEY]
        assert (entry.amount, entry.pending, entry.retired) == (6, 0, False)
        patches = lab.server.stats.get("patches", 0)

        code, output = lab.cli("apply", "--yes")
        assert code == 0, output
        assert lab.server.stats.get("patches", 0) == patches  # read back: no PATCH
        entry = lab.state().entries[KEY]
        assert (entry.amount, entry.pending, entry.retired) == (0, None, True)
        code, output = lab.cli("report", "--format", "json")
        assert code == 0, output
        report = json.loads(output[output.index("{") :])
        (row,) = [row for row in report["rules"] if row["event"] == "MEAL"]
        assert row["status"] == "retired" and row["retired"]["at"], row
        code, output = lab.cli("plan", "--detailed-exitcode")
        assert code == 0, output
