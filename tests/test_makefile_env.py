"""The Makefile: the demo token is set for the demos only (issue 19, case 4).

`make plan` and `make apply` talk to the real API with the operator's environment as it
is: a COINS_SYNC_TOKEN set by the Makefile would beat the operator's
COINS_SYNC_CLIENT_* credentials (a 401) and send the demo token to the real API.
Each target runs with ``CS`` pointing at a stand-in that records what it was given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

DEMO_TOKEN = "demo-token-not-a-secret"
OPERATOR = {
    "COINS_SYNC_CLIENT_ID": "real-client-id",
    "COINS_SYNC_CLIENT_SECRET": "real-client-secret",
    "COINS_SYNC_USERNAME": "operator",
    "COINS_SYNC_PASSWORD": "operator-password",
}

# Records argv and the COINS_SYNC_* environment of every call; as `sandbox` it says
# where it listens (as the real one does) and waits to be stopped by the demo's trap.
FAKE = """\
import json, os, sys, time
with open(os.environ["FAKE_LOG"], "a") as log:
    seen = {k: v for k, v in os.environ.items() if k.startswith("COINS_SYNC_")}
    log.write(json.dumps({"argv": sys.argv[1:], "env": seen}) + "\\n")
if sys.argv[1:2] == ["sandbox"]:
    print("coins-sync sandbox listening on http://127.0.0.1:9 (fake)", flush=True)
    time.sleep(30)
"""


def run_make(tmp_path: Path, target: str, environ: dict[str, str]) -> list[dict[str, object]]:
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    cs = tmp_path / "coins-sync"
    cs.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n')
    cs.chmod(0o755)
    stamp = tmp_path / "installed"  # newer than pyproject.toml: nothing is installed
    stamp.touch()
    log = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINS_SYNC_", "MAKE"))}
    env.update(environ, FAKE_LOG=str(log))
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(REPO),
            target,
            f"CS={cs}",
            f"STAMP={stamp}",
            # not the repository's .demo: another test runs the real demo there meanwhile
            f"DEMO_DIR={tmp_path / 'demo'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("target", ["plan", "apply"])
def test_plan_and_apply_use_the_operators_credentials_as_they_are(
    tmp_path: Path, target: str
) -> None:
    calls = run_make(tmp_path, target, OPERATOR)
    assert [call["argv"][0] for call in calls] == [target]  # type: ignore[index]
    env = calls[0]["env"]
    assert "COINS_SYNC_TOKEN" not in env  # type: ignore[operator]
    assert env == OPERATOR


def test_apply_keeps_an_operators_own_token(tmp_path: Path) -> None:
    calls = run_make(tmp_path, "apply", {"COINS_SYNC_TOKEN": "operator-token"})
    assert calls[0]["env"] == {"COINS_SYNC_TOKEN": "operator-token"}


def test_the_demo_uses_the_demo_token_for_the_sandbox(tmp_path: Path) -> None:
    calls = run_make(tmp_path, "demo", OPERATOR)
    commands = [call["argv"][0] for call in calls]  # type: ignore[index]
    assert commands == ["sandbox", "validate", "plan", "apply", "plan"]
    for call in calls:
        assert call["env"]["COINS_SYNC_TOKEN"] == DEMO_TOKEN  # type: ignore[index]
