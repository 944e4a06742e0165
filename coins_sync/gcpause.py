"""Pausing Python's cyclic garbage collector around large, cycle-free loads."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Objects built (net of those freed) under a pause, from which it freezes them.
FREEZE_AT = 50_000
#: Set by :func:`built_for_good`: this process runs one command and ends.
_one_command = False


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while many acyclic objects are built.

    Reading 100k rules or state entries makes a few hundred thousand objects and no
    reference cycles, so the collector would only rescan the growing heap again and
    again (a third of a large plan's time). Reference counting still frees everything,
    and the collector resumes afterwards.

    In a process that runs one command and ends (the console script: see
    :func:`built_for_good`), a pause that built many objects (at least
    :data:`FREEZE_AT`) moves every object alive out of the collector's reach on the way
    out (``gc.freeze``) instead of letting it scan them: resumed as it was, the
    collector would scan all of them at its next young collection, and again at each
    older one, for nothing (a sixth of the CPU of a plan of 100k rules). Frozen objects
    are still freed by reference counting; only a reference cycle that is already
    garbage at that moment is never collected, and its finalizers never run, so a
    library caller (a test suite) and a small load never freeze.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:  # the outermost pause
            if _one_command and gc.get_count()[0] >= FREEZE_AT:
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
    script), not for a library caller: from then on, :func:`cyclic_gc_paused` freezes
    what a large pause built, too.
    """
    global _one_command
    _one_command = True
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()  # before the collector resumes: it would walk them all at once
    finally:
        if enabled:
            gc.enable()
