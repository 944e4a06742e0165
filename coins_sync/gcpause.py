"""Pausing Python's cyclic garbage collector around large, cycle-free loads."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Objects built (net of those freed) under a pause, from which it freezes them.
FREEZE_AT = 50_000


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while many acyclic objects are built.

    Reading 100k rules or state entries makes a few hundred thousand objects and no
    reference cycles, so the collector would only rescan the growing heap again and
    again (a third of a large plan's time). Reference counting still frees everything,
    and the collector resumes afterwards.

    When the pause built many objects (at least :data:`FREEZE_AT`), every object alive
    is moved out of the collector's reach on the way out (``gc.freeze``) instead of
    being scanned: resumed as it was, the collector would scan all of them at its next
    young collection, and again at each older one, for nothing (a sixth of the CPU of a
    plan of 100k rules). Frozen objects are still freed by reference counting; only a
    reference cycle that is already garbage at that moment stays in memory until the
    process ends, which is why a small load (a test, a small project) does not freeze.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:  # the outermost pause
            if gc.get_count()[0] >= FREEZE_AT:
                gc.freeze()
            gc.enable()


@contextlib.contextmanager
def built_for_good() -> Iterator[None]:
    """Build objects that live until the process ends (a command line's modules) with
    the cyclic collector paused, then freeze them (:func:`gc.freeze`).

    Every collection after that, the full one Python makes before it exits included,
    skips them instead of walking the whole heap again: a few milliseconds of each
    start-up. Reference counting still frees whatever of them is dropped; only a
    garbage cycle that exists when they are frozen (anywhere in the process) stays until
    the process ends. For a process that runs one command and ends (the console
    script), not for a library caller.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()  # before the collector resumes: it would walk them all at once
    finally:
        if enabled:
            gc.enable()
