"""Team state on PostgreSQL (placeholder, split follows)."""

from __future__ import annotations

from coins_sync.state.postgres.store import PostgresAudit, PostgresJournal, PostgresStateStore

__all__ = ["PostgresAudit", "PostgresJournal", "PostgresStateStore"]
