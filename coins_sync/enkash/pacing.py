"""Pacing to the server: adaptive concurrency, one shared pause, and a waiting budget.

Production APIs have rate limits, and EnKash does not publish its own. One
:class:`Pacer` per client decides when each request may go out, from what the answers
say:

* **Adaptive concurrency (AIMD).** ``--parallelism`` is the ceiling of requests in
  flight, not the rate. The limit grows by about one request per round trip while
  requests succeed and is cut in half on a 429, and by a fifth when the latency rises
  to more than twice (and 50 ms above) the lowest seen, as a server that queues instead
  of refusing does.
* **A learned rate.** After a 429, requests are also spaced to a rate: what got through
  over the last two seconds less a tenth, or a fifth less than the rate before,
  whichever is higher; it then grows by about 5% a second until the next 429. This is
  what keeps refusals rare when the server answers fast: a concurrency limit alone
  would send into an empty bucket over and over.
* **One shared pause.** A ``Retry-After``, or the back-off after a 429 without one
  (one slot of the rate, at most ``backoff_initial``, doubling while nothing gets
  through, up to ``backoff_max``),
  pauses every request of the client until then, not only the one refused.
* **A budget, not a count.** A 429 means the request was not processed, so waiting for
  it is safe. The pauses of a run may add up to ``max_wait`` seconds; a refusal whose
  pause would go beyond it ends the budget: that request and every one waiting fails
  with :class:`~coins_sync.errors.RateLimitError`, all with the same message, and no
  new request is sent.
* **A short log.** One warning when pacing starts, with the rate settled on, and one
  summary (:meth:`Pacer.summary`) at the end, instead of a line per 429.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from coins_sync.errors import ApiError, RateLimitError

__all__ = ["Answer", "Pacer"]

log = logging.getLogger(__name__)

#: Cuts on a 429: the concurrency limit halves; the rate becomes the rate that got
#: through over the last _WINDOW seconds less a tenth, or a fifth less than it was
#: (half, until a rate that got through was settled on), whichever is higher: what got
#: through is low while the run paused.
_LIMIT_CUT = 0.5
_RATE_CUT = 0.9
_RATE_BACKOFF = 0.8
_WINDOW = 2.0
_WINDOW_MAX = 10_000
#: Cut of the concurrency limit when the latency rises (never of the rate).
_LATENCY_CUT = 0.8
#: The latency counts as risen above this multiple of, and this far above, the lowest.
_LATENCY_RISE = 2.0
_LATENCY_SLACK = 0.05
#: The learned rate grows by this share a second (at least _RATE_STEP_MIN requests/s).
_RATE_GROWTH = 0.05
_RATE_STEP_MIN = 0.5
#: Never paced slower than this (requests/s): a server that refuses is retried anyway.
_RATE_FLOOR = 0.2
#: A rate measured over less than this (seconds) is a burst, not a rate: not logged.
_SETTLED_AFTER = 0.5
#: The lowest latency seen is forgotten after this many seconds, so it follows a change.
_LATENCY_WINDOW = 30.0


class Answer(enum.Enum):
    """What became of one request, as pacing sees it."""

    OK = "ok"  # answered (any status but 429): the server took it
    REFUSED = "refused"  # 429: not processed; send it again after the pause
    FAILED = "failed"  # no answer (a transport error): no signal about the rate


class Pacer:
    """When each request of one client may go out. Safe for many threads."""

    def __init__(
        self,
        ceiling: int,
        *,
        max_wait: float,
        backoff_initial: float,
        backoff_max: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ceiling = max(1, ceiling)
        self.max_wait = max_wait
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._sleep = sleep
        self._cond = threading.Condition()
        self._limit = float(self.ceiling)
        self._in_flight = 0
        self._pause_until = 0.0
        self._rate: float | None = None  # requests/s once a 429 came; None: unpaced
        self._next_slot = 0.0
        self._last_cut = -1.0  # a 429 of a request sent before this cuts nothing
        self._generation = 0  # bumped by each cut and pause: slots taken before are void
        self._latency_cut = -1.0
        self._first_send: float | None = None
        self._paced_since: float | None = None  # the first 429; then, what got through:
        self._paced_ok = 0
        self._last_ok = 0.0
        self._successes: deque[float] = deque()  # when answers came, over the last _WINDOW
        self._since_success = 0  # cuts in a row with nothing through: the back-off's power
        self._waited = 0.0  # pause seconds counted against max_wait
        self._refused = 0
        self._lowest: float | None = None
        self._lowest_at = 0.0
        self._smooth: float | None = None
        self._announced = False
        self._cancelled = False
        self._spent: str | None = None  # the budget's end, said once for every request

    # -- the two calls around each request -----------------------------------------

    def acquire(self, what: str) -> float:
        """Wait until a request may go out; its start time (for :meth:`done`).

        Raises :class:`RateLimitError` once the waiting budget is spent, and
        :class:`ApiError` when the client was cancelled while this request had to wait.
        """
        slept_to = 0.0  # a finished sleep counts as time passed (also on a test's clock)
        slot: float | None = None  # this request's place in the paced rate, once taken
        generation = -1  # the slot's; a cut or a pause since then voids it
        while True:
            with self._cond:
                if self._spent is not None:
                    raise RateLimitError(self._spent)
                now = max(self._clock(), slept_to)
                if generation != self._generation:
                    slot, generation = None, self._generation
                if self._pause_until > now:
                    target, slot = self._pause_until, None
                elif self._in_flight >= int(self._limit):
                    if self._cancelled:
                        raise ApiError(f"{what}: not sent, the run is stopping", status=429)
                    self._cond.wait(0.25)  # until one in flight is done
                    continue
                elif self._rate is not None and slot is None:
                    slot = max(self._next_slot, now)
                    self._next_slot = slot + 1.0 / self._rate
                    target = slot
                else:
                    target = slot if slot is not None else now
                if target <= now:
                    self._in_flight += 1
                    if self._first_send is None:
                        self._first_send = now
                    return now
                if self._cancelled:
                    raise ApiError(f"{what}: not sent, the run is stopping", status=429)
            self._sleep(target - now)
            slept_to = target

    def done(self, started: float, answer: Answer, retry_after: float | None = None) -> None:
        """Book one request's answer. After a 429 raises :class:`RateLimitError` when the
        pause it calls for would spend more than the budget; else the caller sends again."""
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()
            now = self._clock()
            if answer is Answer.OK:
                self._succeeded(started, now)
            elif answer is Answer.REFUSED:
                self._refused += 1
                self._refusal(started, now, retry_after)

    def cancel(self) -> None:
        """The run is stopping: a request that has to wait is not sent (a request that
        may go at once still goes, as without pacing). The sleep handed in should end
        early on a cancel too (the client's does)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    # -- what the answers teach ---------------------------------------------------------

    def _succeeded(self, started: float, now: float) -> None:
        self._successes.append(now)
        if self._paced_since is not None:
            self._paced_ok += 1
            self._last_ok = now
        if len(self._successes) > _WINDOW_MAX:
            self._successes.popleft()
        self._since_success = 0
        if self._limit < self.ceiling:
            self._limit = min(float(self.ceiling), self._limit + 1.0 / self._limit)
        if self._rate is not None:  # about _RATE_GROWTH a second, at this rate
            self._rate += max(_RATE_STEP_MIN, _RATE_GROWTH * self._rate) / self._rate
        self._watch_latency(now - started, now)

    def _watch_latency(self, latency: float, now: float) -> None:
        old = now - self._lowest_at > _LATENCY_WINDOW
        if self._lowest is None or latency < self._lowest or old:
            self._lowest, self._lowest_at = latency, now
        self._smooth = latency if self._smooth is None else 0.8 * self._smooth + 0.2 * latency
        risen = (
            self._smooth > _LATENCY_RISE * self._lowest
            and self._smooth - self._lowest > _LATENCY_SLACK
        )
        if risen and self._limit > 1 and now - self._latency_cut > self._smooth:
            self._limit = max(1.0, self._limit * _LATENCY_CUT)
            self._latency_cut = now
            log.debug(
                "latency %.3fs (lowest %.3fs): at most %d in flight",
                self._smooth,
                self._lowest,
                self._limit,
            )

    def _refusal(self, started: float, now: float, retry_after: float | None) -> None:
        pause = retry_after
        if started >= self._last_cut:  # the first 429 of a round: cut once for it
            self._cut(now)
            if pause is None:  # a slot of the new rate, doubling while nothing gets through
                first = 1.0 / self._rate if self._rate else self._backoff_initial
                first = min(first, self._backoff_initial)
                pause = min(self._backoff_max, first * 2 ** (self._since_success - 1))
        log.debug(
            "HTTP 429 (%d so far); pausing %s",
            self._refused,
            "-" if pause is None else f"{pause:.2f}s",
        )
        if pause is None:
            return
        until = now + pause
        extra = until - max(self._pause_until, now)
        if extra <= 0:
            return
        if self._waited + extra > self.max_wait:
            self._spent = (
                f"the server kept refusing requests (HTTP 429, rate limit) and this run's "
                f"budget for waiting on it (max_wait, {self.max_wait:g}s) is spent; "
                "what was not sent is left for the next run"
            )
            raise RateLimitError(self._spent)
        self._waited += extra
        self._pause_until = until
        self._next_slot = max(self._next_slot, until)
        self._generation += 1

    def _cut(self, now: float) -> None:
        self._since_success += 1
        if self._paced_since is None:
            self._paced_since = now
        while self._successes and self._successes[0] < now - _WINDOW:
            self._successes.popleft()
        first = self._first_send if self._first_send is not None else now
        span = min(_WINDOW, now - first)
        through = len(self._successes) / span if span > 0 else None
        measured = None if through is None else through * _RATE_CUT
        # until a rate that got through was settled on, the rate is far too high: halve it
        backoff = _RATE_BACKOFF if self._announced else _LIMIT_CUT
        halved = None if self._rate is None else self._rate * backoff
        candidates = [r for r in (measured, halved) if r is not None]
        if candidates:
            self._rate = max(_RATE_FLOOR, max(candidates))
            self._next_slot = now
        self._limit = max(1.0, self._limit * _LIMIT_CUT)
        self._last_cut = now
        self._generation += 1
        settled = bool(measured) and self._rate == measured
        if not self._announced and settled and span >= _SETTLED_AFTER:
            self._announced = True
            log.warning(
                "the server limits the request rate (HTTP 429): pacing to about %s "
                "requests/s (at most %d in flight)",
                _about(self._rate),
                int(self._limit),
            )

    # -- the end ----------------------------------------------------------------------

    @property
    def limit(self) -> int:
        """The most requests in flight now (the ceiling until a 429 or a latency rise)."""
        with self._cond:
            return int(self._limit)

    @property
    def rate(self) -> float | None:
        """The paced rate (requests/s); None until the server refused a request."""
        with self._cond:
            return self._rate

    @property
    def refused(self) -> int:
        """429 answers so far."""
        with self._cond:
            return self._refused

    def summary(self) -> str | None:
        """One line about the pacing of the run; None when the server refused nothing."""
        with self._cond:
            if not self._refused:
                return None
            paced = ""
            span = self._last_ok - (self._paced_since or 0.0)
            if self._paced_ok > 1 and span > 0:  # what got through since the first 429
                paced = f"paced to about {_about(self._paced_ok / span)} requests/s; "
            refused = f"{self._refused} request{'s were' if self._refused != 1 else ' was'}"
            end = "retried" if self._spent is None else "retried until the budget was spent"
            return f"{paced}{refused} refused (429) and {end}"


def _about(rate: float | None) -> str:
    """A rate as people say it: whole numbers above 10, one decimal below."""
    if rate is None:
        return "?"
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}"
