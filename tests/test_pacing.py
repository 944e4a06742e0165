"""Pacing to a rate-limited server: apply against the sandbox's token bucket (``--rate``).

Behaviour only, never timing: every create is made in one run, none twice, the log says
once that pacing started and once how it went (no line per 429), and when the budget
for waiting (``--max-wait``) is spent what is left fails with one message.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from coins_sync.sandbox import SandboxServer
from tests import chaos
from tests.conftest import SANDBOX_TOKEN, Invoke

ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}


def rate_lines(output: str) -> list[str]:
    """The lines of a run's output about rate limiting."""
    words = ("429", "rate", "pacing", "paced")
    return [line for line in output.splitlines() if any(w in line.lower() for w in words)]


def duplicates(server: SandboxServer) -> int:
    keys = Counter(chaos.key_of(config) for config in server.configs())
    return sum(n - 1 for n in keys.values())


def state_keys(project: Path) -> set[str]:
    state = json.loads((project / "state" / "default.json").read_text("utf-8"))
    return {f"{e['companyId']}/{e['configuration']}/{e['event']}" for e in state["entries"]}


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
def test_a_rate_limited_apply_creates_everything_in_one_run(
    project: Path,
    invoke: Invoke,
    servers: Callable[..., SandboxServer],
    retry_after: bool,
) -> None:
    rules = 60
    chaos.write_rules(project / "configs", rules)
    server = servers(rate=25.0, burst=5, retry_after=retry_after)
    result = invoke(
        "apply",
        "--yes",
        "--api-url",
        server.url,
        "--parallelism",
        "16",
        "--max-wait",
        "120",
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert f"Apply: {rules} created, 0 updated, 0 failed, 0 uncertain." in result.output
    assert server.stats["rate_limited"] > 0  # the limit was hit: pacing was needed
    assert server.stats["creates"] == rules and duplicates(server) == 0
    assert len(state_keys(project)) == rules
    lines = rate_lines(result.output)
    # one line when pacing starts (if it settled before the end) and one summary line
    summary = [line for line in lines if "requests were refused (429) and retried" in line]
    assert len(summary) == 1, lines
    refused = server.stats["rate_limited"]
    assert f"{refused} requests were refused (429) and retried" in summary[0]
    started = [line for line in lines if "pacing to about" in line]
    assert len(started) <= 1, lines
    assert len(lines) == len(summary) + len(started), lines  # no line per 429
    again = invoke("apply", "--yes", "--api-url", server.url, env=ENV)
    assert "Nothing to apply." in again.output


def test_the_start_of_pacing_is_said_once_with_the_rate_settled_on(
    project: Path, invoke: Invoke, servers: Callable[..., SandboxServer]
) -> None:
    chaos.write_rules(project / "configs", 40)
    server = servers(rate=20.0, burst=2, retry_after=False)
    result = invoke("apply", "--yes", "--api-url", server.url, "--parallelism", "8", env=ENV)
    assert result.exit_code == 0, result.output
    started = [line for line in result.output.splitlines() if "pacing to about" in line]
    assert len(started) == 1, result.output
    assert "the server limits the request rate (HTTP 429)" in started[0]
    assert duplicates(server) == 0 and server.stats["creates"] == 40


def test_a_spent_budget_fails_what_is_left_with_one_message(
    project: Path, invoke: Invoke, servers: Callable[..., SandboxServer]
) -> None:
    rules = 12
    chaos.write_rules(project / "configs", rules)
    # two requests get through, then the bucket refills one every 10 s: any pause is
    # longer than a budget of 0 s
    server = servers(rate=0.1, burst=2)
    result = invoke(
        "apply",
        "--yes",
        "--api-url",
        server.url,
        "--parallelism",
        "4",
        "--max-wait",
        "0",
        env=ENV,
    )
    assert result.exit_code == 1, result.output
    message = "this run's budget for waiting on it (max_wait, 0s) is spent"
    assert result.output.count(message) == 1, result.output  # said once, not per create
    created = server.stats["creates"]
    assert created >= 2 and duplicates(server) == 0
    assert len(state_keys(project)) == created  # every create made is recorded
    assert "uncertain" not in result.output.replace("0 uncertain", "")  # nothing in doubt
    assert f"Apply: {created} created" in result.output

    # what was left is sent by the next run, to a server that lets it through
    free = servers()
    retry = invoke("apply", "--yes", "--api-url", free.url, env=ENV)
    assert retry.exit_code == 0, retry.output
    assert f"Apply: {rules - created} created" in retry.output
    assert len(state_keys(project)) == rules
