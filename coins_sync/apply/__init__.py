"""Apply: the only step that sends changes to EnKash and writes their results.

* :mod:`~coins_sync.apply.executor`: :func:`run_apply` and the :class:`Executor` that
  sends a plan's creates, imports and updates, journaling every result.
* :mod:`~coins_sync.apply.adopt`: ``state import --from FILE``, adopting many existing
  configs at once.

Importing this package pulls in the API client; ``validate`` and an offline ``plan``
never do.
"""

from __future__ import annotations

from coins_sync.apply.executor import (
    ApplyReport,
    ApplyRequest,
    ApplyStoppedError,
    Executor,
    run_apply,
    to_send,
    wait,
)

__all__ = [
    "ApplyReport",
    "ApplyRequest",
    "ApplyStoppedError",
    "Executor",
    "run_apply",
    "to_send",
    "wait",
]
