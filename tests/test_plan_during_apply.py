"""A plan made while an apply holds the lock (issue 19, case 7).

It says that an apply holds the lock and who, shows that apply's creates as in flight
(not uncertain), and never suggests `--retry-uncertain` for them. The apply runs as a
real process against a slow sandbox, so its creates are in flight while the plan runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coins_sync.sandbox import SandboxOptions, SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write

ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
RULES = "companyId: ACME\nrules:\n" + "".join(
    f"  - event: E{i}\n    amount: {i + 1}\n" for i in range(4)
)


@pytest.fixture
def slow() -> Iterator[SandboxServer]:
    """Every request takes 4 s: the apply's creates stay in flight while we plan."""
    with SandboxServer(SandboxOptions(port=0, token=SANDBOX_TOKEN, latency_ms=4000)) as server:
        yield server


def wait_for(predicate: object, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def open_intents(journal: Path) -> int:
    if not journal.exists():
        return 0
    lines = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    intents = {(x["event"]) for x in lines if x["kind"] == "intent"}
    return len(intents - {x["event"] for x in lines if x["kind"] == "result"})


def test_a_plan_during_an_apply_says_who_holds_the_lock_and_what_is_in_flight(
    project: Path, invoke: Invoke, slow: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    journal = project / "state/default.journal.jsonl"
    apply = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coins_sync",
            "apply",
            "--yes",
            "--api-url",
            slow.url,
            "--parallelism",
            "4",
        ],
        cwd=project,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # the first create probes the API alone; the others follow once it answered
        wait_for(lambda: open_intents(journal) >= 1, "a create in flight")
        planned = invoke("plan", env=ENV)
        still_running = apply.poll() is None
    finally:
        output, _ = apply.communicate(timeout=120)
    assert still_running, output
    assert planned.exit_code == 0, planned.output
    assert "An apply holds the state lock: pid" in planned.output
    assert "running 'apply" in planned.output
    assert " in flight" in planned.output and "0 uncertain" in planned.output
    assert "in flight: the apply holding the lock is creating it" in planned.output
    assert "retry-uncertain" not in planned.output
    assert apply.returncode == 0, output
    after = invoke("plan", env=ENV)
    assert "holds the state lock" not in after.output and "(no changes)" in after.output


def test_uncertain_creates_of_a_killed_apply_are_still_uncertain(
    project: Path, invoke: Invoke
) -> None:
    """No live holder: the open intents of a dead run are unknown outcomes, as before."""
    write(project / "configs/acme.yaml", RULES)
    write(
        project / "state/default.json",
        json.dumps({"version": 1, "lineage": "L", "serial": 1, "entries": []}),
    )
    intent = {
        "kind": "intent",
        "lineage": "L",
        "companyId": "ACME",
        "configuration": "DEFAULT",
        "event": "E0",
        "amount": 1,
        "at": "t",
        "serial": 1,
    }
    write(project / "state/default.journal.jsonl", json.dumps(intent) + "\n")
    holder = {
        "pid": 2**22 + 12345,
        "host": os.uname().nodename,
        "user": "x",
        "command": "apply",
        "since": "t",
    }
    write(project / "state/default.json.lock", "")
    write(project / "state/default.json.lock.json", json.dumps(holder))
    planned = invoke("plan", env=ENV)
    assert "holds the state lock" not in planned.output
    assert "1 uncertain" in planned.output and "retry-uncertain" in planned.output
