"""Apply as a real process that is killed, interrupted or raced, against the sandbox.

Every apply here is `python -m coins_sync apply --yes` in a subprocess; the sandbox runs
in this process on 127.0.0.1 with latency, so kills and interrupts land mid-flight. The
machinery is shared with `tests/chaos.py`, whose campaigns run in `make chaos`.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from coins_sync.state.file import FileStateStore
from tests import chaos


def recorded_ids(the_lab: chaos.Lab) -> set[str]:
    return {entry.coin_config_id for entry in the_lab.state().entries.values()}


def assert_converged_without_loss(the_lab: chaos.Lab, figures: chaos.Figures) -> None:
    assert figures.converged, figures.report()
    configs = the_lab.server.configs()
    keys = [chaos.key_of(config) for config in configs]
    assert len(keys) == len(set(keys)), "duplicate configs on the server"
    assert {config["coinConfigId"] for config in configs} == recorded_ids(the_lab)
    assert (figures.duplicates, figures.lost, figures.wrong, figures.mismatched) == (0, 0, 0, 0)
    assert not any("is locked by" in output for output in the_lab.outputs)
    assert not any("Traceback" in output for output in the_lab.outputs)


def test_kill_9_at_random_instants_loses_no_record_and_duplicates_nothing(
    project: Path,
) -> None:
    rng = random.Random(20240611)
    figures = chaos.Figures("kill -9", rules=60)
    with chaos.lab(project, latency_ms=40, fail_after_rate=0.05, seed=11) as the_lab:
        desired = chaos.write_rules(project / "configs", 60)
        for _ in range(3):  # `make chaos` runs the long campaigns
            # Right after the kill, before any recovery, the state file plus the journal
            # left behind must account for every config the server holds.
            found = chaos.kill_apply(the_lab, rng, figures, window=0.2)
            assert (found.duplicates, found.lost, found.wrong) == (0, 0, 0), figures.report()
        assert figures.kills_mid_flight >= 2, figures.report()  # killed while sending

        the_lab.converge(figures, desired)  # the next apply recovers the journal
        assert not the_lab.store.journal_path.exists()
        assert_converged_without_loss(the_lab, figures)


def test_sigint_mid_apply_exits_130_folds_state_and_leaves_no_journal(project: Path) -> None:
    figures = chaos.Figures("SIGINT", rules=24)
    with chaos.lab(project, latency_ms=150) as the_lab:
        desired = chaos.write_rules(project / "configs", 24)
        code = chaos.interrupt_apply(the_lab, random.Random(5), figures)
        output = the_lab.outputs[-1]
        assert code == 130, output
        assert "Interrupted: nothing new was sent" in output
        assert not the_lab.store.journal_path.exists()
        stored = the_lab.store.read_stored()  # folded into the state file itself
        assert stored == the_lab.state()
        assert not stored.uncertain  # requests in flight finished and were recorded
        assert 0 < len(stored.entries) < 24
        assert {c["coinConfigId"] for c in the_lab.server.configs()} == recorded_ids(the_lab)
        created, not_started = map(int, re.findall(r"(\d+) (?:created|not started)", output))
        assert created == len(stored.entries) and created + not_started == 24

        the_lab.converge(figures, desired)
        assert figures.rounds == 1
        assert_converged_without_loss(the_lab, figures)


def test_two_applies_at_once_one_fails_on_the_lock_naming_the_holder(project: Path) -> None:
    with chaos.lab(project) as the_lab:
        chaos.write_rules(project / "configs", 20)
        with (
            chaos.creates_held(the_lab.server) as release,  # the lock holder stays mid-flight
            the_lab.spawn("apply", "--yes", "--parallelism", "4") as one,
            the_lab.spawn("apply", "--yes", "--parallelism", "4") as two,
        ):
            deadline = time.monotonic() + 30
            while one.poll() is None and two.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # until the loser has given up
            release.set()
            codes = {one.pid: one.wait(timeout=30), two.pid: two.wait(timeout=30)}
        assert sorted(codes.values()) == [0, 1], the_lab.outputs
        winner = next(pid for pid, code in codes.items() if code == 0)
        loser = next(pid for pid, code in codes.items() if code == 1)
        message = the_lab.output_of[loser]
        assert f"is locked by pid {winner} " in message, message
        assert "Traceback" not in message
        assert "20 created" in the_lab.output_of[winner]
        assert the_lab.server.stats["creates"] == 20  # nothing was sent twice
        assert len(the_lab.server.configs()) == 20
        assert len(the_lab.state().entries) == 20


def test_lock_left_by_a_killed_apply_does_not_block_the_next(project: Path) -> None:
    with chaos.lab(project, latency_ms=100) as the_lab:
        desired = chaos.write_rules(project / "configs", 20)
        with the_lab.spawn("apply", "--yes", "--parallelism", "2") as proc:
            assert the_lab.wait_for_journal(proc, timeout=15)
            proc.kill()
            proc.wait(timeout=30)
        store = FileStateStore(the_lab.store.path)
        assert store.holder_path.exists()  # the dead holder's record is still there
        assert store.journal_path.exists()

        code, output = the_lab.cli("apply", "--yes")
        assert "locked" not in output
        assert code in (0, 1), output  # 1 only when the kill left an uncertain create
        figures = chaos.Figures("lock", rules=20)
        the_lab.converge(figures, desired)
        assert_converged_without_loss(the_lab, figures)
