"""State kept in git without losing it: a lease on a dedicated state branch.

* :mod:`~coins_sync.gitlease.lease`: the lease protocol (:class:`GitLease`: acquire,
  push on top of the own lease, restore, release), with ``git push`` as the
  compare-and-swap.
* :mod:`~coins_sync.gitlease.git`: ``git`` as a subprocess (timeout, no prompts, a fixed
  identity, credentials scrubbed from its messages) and the commit trailers the lease
  writes and reads.
"""

from __future__ import annotations

from coins_sync.gitlease.lease import GitLease

__all__ = ["GitLease"]
