"""Injected faults, decided by one seeded generator, and the counters that report them."""

from __future__ import annotations

import enum
import random
import threading
from collections import Counter

from coins_sync.sandbox.options import SandboxOptions

__all__ = ["STAT_KEYS", "Fault", "Faults", "Stats"]

#: ``429`` counts every 429 answer; ``rate_limited`` those of the rate limit (``rate``).
STAT_KEYS = (
    "fail_before",
    "fail_after",
    "drop",
    "429",
    "rate_limited",
    "creates",
    "patches",
    "gets",
)


class Fault(enum.Enum):
    """What, if anything, goes wrong with one mutating call."""

    NONE = "none"
    TOO_MANY = "429"
    FAIL_BEFORE = "fail_before"
    FAIL_AFTER = "fail_after"
    DROP = "drop"


class Faults:
    """Decides faults from one seeded generator; each call consumes the same draws."""

    def __init__(self, options: SandboxOptions) -> None:
        self._rng = random.Random(options.seed)
        self._lock = threading.Lock()
        self._p429 = options.rate_429
        self._before = options.fail_before_rate + options.fail_rate / 2
        self._after = options.fail_after_rate + options.fail_rate / 2

    def draw(self) -> Fault:
        with self._lock:
            r429, rfault, rdrop = self._rng.random(), self._rng.random(), self._rng.random()
        if r429 < self._p429:
            return Fault.TOO_MANY
        if rfault < self._before:
            return Fault.FAIL_BEFORE
        if rfault < self._before + self._after:
            return Fault.DROP if rdrop < 0.5 else Fault.FAIL_AFTER
        return Fault.NONE


class Stats:
    """Thread-safe counters by kind (see :data:`STAT_KEYS`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(STAT_KEYS, 0))

    def bump(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
