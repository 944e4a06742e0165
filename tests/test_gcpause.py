"""The cyclic collector's pause around large loads (coins_sync/gcpause.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from coins_sync.gcpause import FREEZE_AT, cyclic_gc_paused


class Item:
    """A small object the collector tracks, that a weak reference can watch."""

    def __init__(self, n: int) -> None:
        self.n = n


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.unfreeze()
    yield
    gc.unfreeze()
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


def test_a_collector_that_was_off_stays_off_and_freezes_nothing() -> None:
    gc.disable()
    with cyclic_gc_paused():
        built = [Item(n) for n in range(FREEZE_AT + 1000)]
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert len(built) == FREEZE_AT + 1000


def test_a_large_load_is_frozen_not_scanned_and_still_freed_by_reference_counting() -> None:
    with cyclic_gc_paused():
        built = [Item(n) for n in range(FREEZE_AT + 1000)]
    assert gc.isenabled()
    # every object built is out of the collector's generations: never scanned again
    assert gc.get_freeze_count() >= FREEZE_AT + 1000
    assert not any(o is built for generation in range(3) for o in gc.get_objects(generation))
    watcher = weakref.ref(built[0])
    del built
    assert watcher() is None  # freed the moment the last reference went


def test_a_small_load_is_left_to_the_collector() -> None:
    with cyclic_gc_paused():
        built = [Item(n) for n in range(100)]
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert len(built) == 100
