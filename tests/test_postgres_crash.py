"""Apply on the postgres backend as a real process that is killed, cut off from its
database, raced or force-unlocked, against the sandbox with latency."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path

from click.testing import CliRunner

from coins_sync.cli import cli
from tests import chaos, pg_chaos


def recorded_ids(the_lab: pg_chaos.PgLab) -> set[str]:
    return {entry.coin_config_id for entry in the_lab.state().entries.values()}


def assert_converged_without_loss(the_lab: pg_chaos.PgLab, figures: chaos.Figures) -> None:
    assert figures.converged, figures.report()
    configs = the_lab.server.configs()
    keys = [chaos.key_of(config) for config in configs]
    assert len(keys) == len(set(keys)), "duplicate configs on the server"
    assert {config["coinConfigId"] for config in configs} == recorded_ids(the_lab)
    assert (figures.duplicates, figures.lost, figures.wrong, figures.mismatched) == (0, 0, 0, 0)
    assert not any("Traceback" in output for output in the_lab.outputs)
    assert the_lab.open_operations() == 0
    assert not the_lab.rescue_path.exists()


def test_kill_9_at_random_instants_loses_no_record_and_duplicates_nothing(
    project: Path, pg_dsn: str
) -> None:
    rng = random.Random(20240612)
    figures = chaos.Figures("kill -9 (postgres)", rules=60)
    with pg_chaos.lab(project, pg_dsn, latency_ms=40, fail_after_rate=0.05, seed=11) as the_lab:
        desired = chaos.write_rules(project / "configs", 60)
        for _ in range(3):  # `make chaos` runs the long campaigns
            # right after the kill, before any recovery, the database alone must account
            # for every config the server holds (open intents read as uncertain)
            found = chaos.kill_apply(the_lab, rng, figures, window=0.2)
            assert (found.duplicates, found.lost, found.wrong) == (0, 0, 0), figures.report()
        assert figures.kills_mid_flight >= 2, figures.report()
        the_lab.converge(figures, desired)
        assert_converged_without_loss(the_lab, figures)
    assert not (project / "state").exists()  # nothing on disk for a postgres environment


def test_two_working_copies_apply_at_once_one_is_refused_naming_the_holder(
    project: Path, tmp_path: Path, pg_dsn: str
) -> None:
    with pg_chaos.lab(project, pg_dsn) as the_lab:
        chaos.write_rules(project / "configs", 20)
        other_copy = tmp_path / "second-copy"
        other_copy.mkdir()
        (other_copy / "pyproject.toml").write_text(pg_chaos.PYPROJECT)
        chaos.write_rules(other_copy / "configs", 20)
        other = pg_chaos.PgLab(other_copy, the_lab.server, pg_dsn)
        with (
            chaos.creates_held(the_lab.server) as release,  # one stays mid-flight
            the_lab.spawn("apply", "--yes", "--parallelism", "4") as one,
        ):
            assert the_lab.wait_for_journal(one, timeout=15)
            with other.spawn("apply", "--yes", "--parallelism", "4") as two:
                code_two = two.wait(timeout=30)
            release.set()
            code_one = one.wait(timeout=30)
        assert (code_one, code_two) == (0, 1), the_lab.outputs + other.outputs
        message = other.output_of[two.pid]
        assert f"is locked by pid {one.pid} " in message, message
        assert "running 'apply (env default)'" in message
        assert "Traceback" not in message
        assert the_lab.server.stats["creates"] == 20
        assert len(the_lab.state().entries) == 20


def test_lost_database_connection_mid_apply_rescues_then_recovers(
    project: Path, pg_dsn: str
) -> None:
    figures = chaos.Figures("lost connection", rules=40)
    with pg_chaos.lab(project, pg_dsn, latency_ms=150) as the_lab:
        desired = chaos.write_rules(project / "configs", 40)
        with the_lab.spawn("apply", "--yes", "--parallelism", "4") as proc:
            assert the_lab.wait_for_journal(proc, timeout=15)
            time.sleep(0.2)  # requests are in flight at the sandbox
            assert the_lab.terminate("coins-sync apply") >= 1
            code = proc.wait(timeout=30)
        output = the_lab.outputs[-1]
        assert code == 1, output
        assert "RESCUE: created" in output
        assert "Traceback" not in output
        assert the_lab.rescue_path.exists()
        rescued = the_lab.rescue_path.read_text()
        chaos.settle(the_lab.server)
        # every config on the server is in the database or in the rescue file
        state = the_lab.state()
        known = {e.coin_config_id for e in state.entries.values()}
        for config in the_lab.server.configs():
            assert config["coinConfigId"] in known or config["coinConfigId"] in rescued, config
        assert len(the_lab.server.configs()) < 40

        code, output = the_lab.cli("apply", "--yes")
        assert "folded" in output and "rescue file" in output, output
        assert not the_lab.rescue_path.exists()
        the_lab.converge(figures, desired)
        assert_converged_without_loss(the_lab, figures)
        rescued_ids = {c["coinConfigId"] for c in the_lab.server.configs()} & set(
            rescued.replace('"', " ").split()
        )
        assert rescued_ids <= recorded_ids(the_lab)


def test_force_unlock_mid_apply_fences_the_old_run(project: Path, pg_dsn: str) -> None:
    figures = chaos.Figures("force-unlock", rules=40)
    with pg_chaos.lab(project, pg_dsn, latency_ms=150) as the_lab:
        desired = chaos.write_rules(project / "configs", 40)
        with the_lab.spawn("apply", "--yes", "--parallelism", "4") as proc:
            assert the_lab.wait_for_journal(proc, timeout=15)
            time.sleep(0.2)
            with contextlib.chdir(project):
                unlocked = CliRunner().invoke(
                    cli, ["state", "force-unlock", "--yes"], catch_exceptions=False
                )
            assert unlocked.exit_code == 0, unlocked.output
            assert f"pid {proc.pid} " in unlocked.output
            unlocked_at = the_lab.journal_bytes()
            code = proc.wait(timeout=30)
        output = the_lab.outputs[-1]
        assert code == 1, output
        assert "lost the state lock" in output or "RESCUE" in output, output
        # the old run wrote nothing after it was unlocked
        assert the_lab.journal_bytes() == unlocked_at
        chaos.settle(the_lab.server)
        assert len(the_lab.server.configs()) < 40

        the_lab.converge(figures, desired)
        assert_converged_without_loss(the_lab, figures)


def test_sigint_mid_apply_exits_130_with_every_result_recorded(project: Path, pg_dsn: str) -> None:
    figures = chaos.Figures("SIGINT (postgres)", rules=24)
    with pg_chaos.lab(project, pg_dsn, latency_ms=150) as the_lab:
        desired = chaos.write_rules(project / "configs", 24)
        code = chaos.interrupt_apply(the_lab, random.Random(5), figures)
        output = the_lab.outputs[-1]
        assert code == 130, output
        assert "Interrupted: nothing new was sent" in output
        assert the_lab.open_operations() == 0  # requests in flight finished and were recorded
        state = the_lab.state()
        assert not state.uncertain and 0 < len(state.entries) < 24
        assert {c["coinConfigId"] for c in the_lab.server.configs()} == recorded_ids(the_lab)
        the_lab.converge(figures, desired)
        assert figures.rounds == 1
        assert_converged_without_loss(the_lab, figures)
