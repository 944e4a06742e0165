"""Pausing Python's cyclic garbage collector around large, cycle-free loads."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while many acyclic objects are built.

    Reading 100k rules or state entries makes a few hundred thousand objects and no
    reference cycles, so the collector would only rescan the growing heap again and
    again (a third of a large plan's time). Reference counting still frees everything,
    and the collector resumes afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
