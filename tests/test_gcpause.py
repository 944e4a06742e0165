"""The cyclic collector's pause around large loads (coins_sync/gcpause.py)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from coins_sync.gcpause import FREEZE_AT, cyclic_gc_paused


class Item:
    """A small object the collector tracks."""

    def __init__(self, n: int) -> None:
        self.n = n


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()


def test_the_collector_is_paused_inside_and_resumed_after() -> None:
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
        with cyclic_gc_paused():  # nested: only the outermost resumes it
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with cyclic_gc_paused():
        built = [Item(n) for n in range(1000)]
    assert not gc.isenabled()
    assert len(built) == 1000


def test_a_library_caller_never_freezes_a_large_load() -> None:
    """In a test suite (or any caller that goes on living), a garbage cycle frozen
    would never be collected and its finalizers would never run."""
    frozen = gc.get_freeze_count()
    with cyclic_gc_paused():
        built = [Item(n) for n in range(FREEZE_AT + 1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
    assert len(built) == FREEZE_AT + 1000


ONE_COMMAND = """
import gc, json, sys, weakref
from coins_sync.gcpause import FREEZE_AT, built_for_good, cyclic_gc_paused

class Item:
    def __init__(self, n):
        self.n = n

with built_for_good():  # what the console script does first
    pass
before = gc.get_freeze_count()
with cyclic_gc_paused():
    small = [Item(n) for n in range(100)]
after_small = gc.get_freeze_count()
with cyclic_gc_paused():
    built = [Item(n) for n in range(FREEZE_AT + 1000)]
after_large = gc.get_freeze_count()
scanned = any(o is built for generation in range(3) for o in gc.get_objects(generation))
watcher = weakref.ref(built[0])
del built
json.dump({
    "small": after_small - before,
    "large": after_large - after_small,
    "scanned": scanned,
    "freed": watcher() is None,
    "enabled": gc.isenabled(),
}, sys.stdout)
"""


def test_a_one_command_process_freezes_a_large_load_and_still_frees_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ONE_COMMAND], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["small"] == 0  # a small load is left to the collector
    assert seen["large"] >= FREEZE_AT + 1000  # out of the collector's generations
    assert not seen["scanned"]
    assert seen["freed"]  # reference counting still frees it
    assert seen["enabled"]
