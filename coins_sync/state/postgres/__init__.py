"""Team state on PostgreSQL: many runners, one truth.

:class:`PostgresStateStore` implements :class:`coins_sync.state.store.StateStore` (and
:class:`PostgresJournal` the :class:`coins_sync.state.journal.Journal`) on a PostgreSQL
server. The modules depend on each other in one direction only, and none uses another's
private names: connection <- migrations <- lock <- journal, audit <- store.

* :mod:`~coins_sync.state.postgres.connection`: the driver (imported only when used,
  ``coins-sync[postgres]``), the DSN from ``COINS_SYNC_PG_DSN`` or libpq's defaults
  (one libpq cannot parse is refused without echoing it), its redaction, the SQL
  composition (``psycopg.sql``, the schema name quoted) and text made storable.
* :mod:`~coins_sync.state.postgres.migrations`: the append-only, checksummed schema
  migrations, applied in one transaction under a lock; ``state schema-sql``.
* :mod:`~coins_sync.state.postgres.lock`: one holder from any machine (a session
  advisory lock, the holder named to a refused caller, released by the server when
  the holder dies), the lock epoch that fences every write, why a run lost its lock,
  ``state force-unlock``.
* :mod:`~coins_sync.state.postgres.journal`: durability per call by group commit: a
  create's intent is committed before it is sent; its result, the entry and the audit
  row are one statement; a result the database did not take goes to the rescue file,
  and the checkpoint names it (:class:`~coins_sync.errors.CheckpointError`).
* :mod:`~coins_sync.state.postgres.audit`: the audit log as rows of a table, fenced.
* :mod:`~coins_sync.state.postgres.store`: read (one REPEATABLE READ, READ ONLY
  snapshot, without the lock), write, ``state push``, recovery of a run that died and
  the fold of the local rescue file; it wires the journal and the audit log together.
"""

from __future__ import annotations

from coins_sync.errors import FencedError
from coins_sync.state.postgres.audit import PostgresAudit
from coins_sync.state.postgres.journal import PostgresJournal
from coins_sync.state.postgres.store import PostgresStateStore

__all__ = ["FencedError", "PostgresAudit", "PostgresJournal", "PostgresStateStore"]
