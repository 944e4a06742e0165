"""The pacer's decisions on a fake clock: the shared pause, the budget, AIMD, the rate.

Single-threaded and deterministic: a wait shows up as a recorded sleep, never as time.
"""

from __future__ import annotations

import pytest

from coins_sync.enkash.pacing import Answer, Pacer
from coins_sync.errors import ApiError, RateLimitError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def pacer(clock: Clock, ceiling: int = 8, max_wait: float = 60.0) -> Pacer:
    return Pacer(
        ceiling,
        max_wait=max_wait,
        backoff_initial=0.2,
        backoff_max=5.0,
        clock=clock,
        sleep=clock.sleep,
    )


def test_a_retry_after_pauses_every_request_not_only_the_refused_one() -> None:
    clock = Clock()
    p = pacer(clock)
    first, other = p.acquire("A"), p.acquire("B")  # both in flight
    p.done(first, Answer.REFUSED, retry_after=3.0)
    p.done(other, Answer.OK)
    assert clock.sleeps == []
    p.acquire("C")  # a request that was never refused waits out the pause too
    assert clock.sleeps == [3.0]


def test_a_late_429_of_the_same_round_does_not_cut_or_pause_again() -> None:
    clock = Clock()
    p = pacer(clock)
    a, b = p.acquire("A"), p.acquire("B")
    clock.now += 0.01
    p.done(a, Answer.REFUSED)  # no Retry-After: the client's own back-off
    limit = p.limit
    p.done(b, Answer.REFUSED)  # sent before the cut: counted, not cut again
    assert p.limit == limit == 4 and p.refused == 2
    p.acquire("C")
    assert len(clock.sleeps) == 1 and 0 < clock.sleeps[0] <= 0.2


def test_the_back_off_doubles_while_nothing_gets_through() -> None:
    clock = Clock()
    p = pacer(clock, ceiling=1)
    for _ in range(4):
        p.done(p.acquire("A"), Answer.REFUSED)  # no Retry-After
    assert clock.sleeps == [0.2, 0.4, 0.8]
    p.done(p.acquire("A"), Answer.OK)  # something got through: the back-off starts over
    p.done(p.acquire("A"), Answer.REFUSED)
    clock.sleeps.clear()
    p.acquire("A")
    assert len(clock.sleeps) == 1 and clock.sleeps[0] <= 0.2


def test_the_budget_ends_with_one_message_for_every_request() -> None:
    clock = Clock()
    p = pacer(clock, max_wait=5.0)
    p.done(p.acquire("A"), Answer.REFUSED, retry_after=3.0)  # 3 of 5 s
    started = p.acquire("A")
    assert clock.sleeps == [3.0]
    with pytest.raises(RateLimitError) as spent:
        p.done(started, Answer.REFUSED, retry_after=3.0)  # 6 s would be over budget
    assert spent.value.status == 429
    assert "budget for waiting on it (max_wait, 5s) is spent" in str(spent.value)
    with pytest.raises(RateLimitError) as again:
        p.acquire("B")  # no new request goes out, and the message is the same
    assert str(again.value) == str(spent.value)
    assert "retried until the budget was spent" in (p.summary() or "")


def test_a_zero_budget_refuses_any_pause() -> None:
    clock = Clock()
    p = pacer(clock, max_wait=0.0)
    with pytest.raises(RateLimitError):
        p.done(p.acquire("A"), Answer.REFUSED, retry_after=1.0)


def test_concurrency_halves_on_a_429_and_grows_back_while_requests_succeed() -> None:
    clock = Clock()
    p = pacer(clock, ceiling=8)
    assert p.limit == 8
    p.done(p.acquire("A"), Answer.REFUSED, retry_after=0.0)
    assert p.limit == 4
    for _ in range(40):
        clock.now += 0.01
        p.done(p.acquire("A"), Answer.OK)
    assert p.limit == 8  # back at the ceiling, never above it


def test_rising_latency_cuts_concurrency() -> None:
    clock = Clock()
    p = pacer(clock, ceiling=16)
    for _ in range(5):
        started = p.acquire("A")
        clock.now += 0.02
        p.done(started, Answer.OK)
    assert p.limit == 16
    for _ in range(10):
        started = p.acquire("A")
        clock.now += 0.5  # the server queues instead of refusing
        p.done(started, Answer.OK)
    assert p.limit < 16


def test_after_a_429_requests_are_spaced_to_the_rate_that_got_through() -> None:
    clock = Clock()
    p = pacer(clock, ceiling=4)
    for _ in range(40):  # 20 requests/s get through for two seconds
        started = p.acquire("A")
        clock.now += 0.05
        p.done(started, Answer.OK)
    p.done(p.acquire("A"), Answer.REFUSED, retry_after=1.0)
    assert p.rate == pytest.approx(18.0, rel=0.05)  # what got through, less a tenth
    clock.sleeps.clear()
    for _ in range(3):
        p.done(p.acquire("A"), Answer.OK)
    assert clock.sleeps[0] == 1.0  # the pause
    assert all(s == pytest.approx(1 / 18, rel=0.1) for s in clock.sleeps[1:])
    # the summary says what got through since the first 429: 3 in 1 + 2/18 s
    summary = p.summary()
    assert summary == "paced to about 2.7 requests/s; 1 request was refused (429) and retried"


def test_no_429_no_pacing_and_no_summary() -> None:
    clock = Clock()
    p = pacer(clock)
    for _ in range(20):
        p.done(p.acquire("A"), Answer.OK)
    assert clock.sleeps == [] and p.rate is None and p.summary() is None


def test_a_cancelled_run_sends_nothing_that_has_to_wait() -> None:
    clock = Clock()
    p = pacer(clock)
    p.done(p.acquire("A"), Answer.REFUSED, retry_after=2.0)
    p.cancel()
    with pytest.raises(ApiError, match="not sent, the run is stopping"):
        p.acquire("B")
