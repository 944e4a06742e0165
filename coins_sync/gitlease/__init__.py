"""State kept in git without losing it (split follows)."""

from __future__ import annotations

from coins_sync.gitlease.lease import GitLease

__all__ = ["GitLease"]
