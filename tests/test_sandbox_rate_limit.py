"""The sandbox's rate limit (``--rate R --burst B``): a token bucket that answers 429."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from coins_sync.cli import cli
from coins_sync.errors import SettingsError
from coins_sync.sandbox import SandboxApp, SandboxOptions, SandboxRequest

TOKEN = "rate-token-1234"
CREATE = "/api/v0/enkash-coins/create-coins-config"
AUTH = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def create(app: SandboxApp, n: int) -> tuple[int, dict[str, str]]:
    body = {"companyId": f"CO{n:04d}", "configuration": "DEFAULT", "event": "E", "amount": 5}
    answer = app.handle(SandboxRequest("POST", CREATE, AUTH, json.dumps(body).encode()))
    return answer.status, dict(answer.headers)


def test_the_bucket_lets_a_burst_through_then_refuses_until_it_refills() -> None:
    clock = FakeClock()
    app = SandboxApp(SandboxOptions(token=TOKEN, rate=2.0, burst=3, clock=clock))
    assert [create(app, n)[0] for n in range(3)] == [200, 200, 200]
    status, headers = create(app, 3)
    assert status == 429
    assert headers["Retry-After"] == "1"  # 0.5 s to the next token, in whole seconds
    clock.now += 0.5  # one token back
    assert [create(app, n)[0] for n in (4, 5)] == [200, 429]
    clock.now += 10  # the bucket holds no more than the burst
    assert [create(app, n)[0] for n in range(6, 10)] == [200, 200, 200, 429]
    stats = app.stats
    assert stats["creates"] == 7 and len(app.configs()) == 7  # a 429 stores nothing
    assert stats["rate_limited"] == stats["429"] == 3


def test_reads_count_against_the_limit_too() -> None:
    clock = FakeClock()
    app = SandboxApp(SandboxOptions(token=TOKEN, rate=1.0, burst=1, clock=clock))
    read = SandboxRequest("GET", "/api/v0/enkash-coins/WCC1", AUTH, b"")
    assert app.handle(read).status == 404  # through the limit: not found
    assert app.handle(read).status == 429


def test_without_retry_after_the_429_carries_no_header() -> None:
    clock = FakeClock()
    app = SandboxApp(SandboxOptions(token=TOKEN, rate=5.0, burst=1, retry_after=False, clock=clock))
    assert create(app, 0)[0] == 200
    status, headers = create(app, 1)
    assert status == 429 and "Retry-After" not in headers


def test_the_burst_defaults_to_one_second_of_requests() -> None:
    clock = FakeClock()
    app = SandboxApp(SandboxOptions(token=TOKEN, rate=4.0, clock=clock))
    assert [create(app, n)[0] for n in range(5)] == [200, 200, 200, 200, 429]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0.0}, "rate must be a positive number"),
        ({"rate": float("inf")}, "rate must be a positive number"),
        ({"rate": 1.0, "burst": 0}, "burst must be 1 or more"),
        ({"burst": 5}, "burst needs a rate"),
    ],
)
def test_bad_limits_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        SandboxOptions(token=TOKEN, **options)  # type: ignore[arg-type]


def test_the_command_line_offers_the_limit() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--help"])
    assert result.exit_code == 0
    for flag in ("--rate R", "--burst B", "--retry-after / --no-retry-after"):
        assert flag in result.output
    refused = CliRunner().invoke(cli, ["sandbox", "--burst", "3"])
    assert refused.exit_code == 1
    assert "--burst needs --rate" in refused.output
