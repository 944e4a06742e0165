"""The postgres test fixture: under CI=true a missing server fails the run, never skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_one_postgres_test(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["COINS_SYNC_TEST_PG_BINDIR"] = "/nonexistent/postgresql/bin"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_postgres_state.py::test_concurrent_migrations_apply_once",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_server_is_a_failure_under_ci() -> None:
    done = run_one_postgres_test("true")
    assert done.returncode != 0, done.stdout
    assert "CI must run the postgres tests" in done.stdout
    assert "1 error" in done.stdout or "1 failed" in done.stdout


def test_missing_server_is_a_skip_on_a_developer_machine() -> None:
    done = run_one_postgres_test(None)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout
