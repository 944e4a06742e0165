"""Apply: the only step that sends changes to EnKash and writes their results.

* :mod:`~coins_sync.apply.run`: :func:`run_apply`, one run under the state lock (plan or
  saved plan, confirm, execute), and the signal handling around it.
* :mod:`~coins_sync.apply.executor`: the :class:`Executor`, which sends a plan's
  creates, imports and updates with bounded parallelism, probe first, and stops, halts
  and finishes the run.
* :mod:`~coins_sync.apply.send`: one change: the send-time check against the configs,
  the request, and its result.
* :mod:`~coins_sync.apply.ledger`: the bookkeeping of each result into the journal and
  the audit log, and the folds into the state.
* :mod:`~coins_sync.apply.report`: :class:`ApplyReport`, what a run did, and
  :class:`ApplyStoppedError`.
* :mod:`~coins_sync.apply.adopt`: ``state import --from FILE``, adopting many existing
  configs at once.

Importing this package pulls in the API client; ``validate`` and an offline ``plan``
never do.
"""

from __future__ import annotations

from coins_sync.apply.executor import Executor, to_send
from coins_sync.apply.report import ApplyReport
from coins_sync.apply.run import ApplyRequest, run_apply, wait
from coins_sync.errors import ApplyStoppedError

__all__ = [
    "ApplyReport",
    "ApplyRequest",
    "ApplyStoppedError",
    "Executor",
    "run_apply",
    "to_send",
    "wait",
]
