"""State: what was pushed to EnKash, its journal of in-flight work, and its lock.

The API has no list endpoint, so the state is the only memory of which configs exist.

* :mod:`~coins_sync.state.model`: the values (entries, uncertain creates) and their
  deterministic, versioned JSON; pure.
* :mod:`~coins_sync.state.journal`: intent and result records and the pure, idempotent
  fold that replays them.
* :mod:`~coins_sync.state.store`: the :class:`StateStore` protocol every backend meets.
* :mod:`~coins_sync.state.files`: the one atomic write and the one append-and-fsync log.
* :mod:`~coins_sync.state.file`: the file backend (the embedded default).
* :mod:`~coins_sync.state.postgres`: the team backend on PostgreSQL.
* :mod:`~coins_sync.state.audit`: the audit log, behind a backend-neutral sink.

What is promised:

* The state is versioned JSON (``version``, ``lineage``, ``serial``, sorted ``entries``)
  written as deterministic bytes, atomically (temporary file, fsync, rename), with the
  previous version kept as ``<state>.backup``. ``serial`` grows on every write that
  changes content, and a write never replaces a newer state than the one it read.
* A corrupt, truncated or unknown-version state is a :class:`StateError`; the file is
  never touched.
* Apply records each result in an append-only journal (one fsynced JSON line each)
  instead of rewriting the state per call. ``recover`` folds a leftover journal into
  the state: a confirmed result becomes an entry, an intent with no result becomes
  *uncertain*, and a torn last line is dropped and reported.
* One state-changing command runs per state at a time, under a lock that a killed
  holder releases; a refused caller is told who holds it.

Callers use a :class:`~coins_sync.state.store.StateStore`; the backend of an environment
(its ``backend`` setting) is chosen in one place, :func:`coins_sync.workspace.open_backend`.
Only what is about a state *file* uses the file backend directly: ``state push --from``,
``git-lease`` and the guard that keeps a saved plan off the state's files.
"""
