"""The chaos lab of ``tests/chaos.py`` on the postgres backend.

:class:`PgLab` is a :class:`chaos.Lab` whose project keeps its state in PostgreSQL
(``COINS_SYNC_PG_DSN``): the state it checks is the database's, and "a journal was
started" means the run committed its first intent row.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from coins_sync.pgstate import PostgresStateStore
from coins_sync.sandbox import SandboxOptions, SandboxServer
from coins_sync.state import State
from tests import chaos

PYPROJECT = """\
[tool.coins-sync.environments.default]
backend = "postgres"
"""


class PgLab(chaos.Lab):
    def __init__(self, workdir: Path, server: SandboxServer, dsn: str) -> None:
        super().__init__(workdir, server, {"COINS_SYNC_TOKEN": chaos.TOKEN})
        self.dsn = dsn
        self.pg = PostgresStateStore("default", "coins_sync", dsn=dsn)
        self.rescue_path = workdir / "state" / "default.pg-rescue.jsonl"

    def state(self) -> State:
        return self.pg.read()

    def _max_operation(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            if conn.execute("SELECT to_regclass('coins_sync.operation')").fetchone() == (None,):
                return 0
            row = conn.execute("SELECT coalesce(max(id), 0) FROM coins_sync.operation").fetchone()
        return int(row[0]) if row else 0

    def journal_bytes(self) -> bytes:
        return str(self._max_operation()).encode()

    def wait_for_journal(
        self, proc: subprocess.Popen[bytes], timeout: float, old: bytes = b""
    ) -> bool:
        """Until ``proc`` has committed an intent newer than ``old`` (True) or exited."""
        floor = int(old or b"0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._max_operation() > floor:
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.01)
        return False

    def open_operations(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM coins_sync.operation WHERE outcome IS NULL"
            ).fetchone()
        return int(row[0]) if row else 0

    def terminate(self, application_prefix: str) -> int:
        """pg_terminate_backend of every coins-sync session whose name starts so."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (application_prefix + "%",),
            ).fetchall()
        return len(rows)


@contextlib.contextmanager
def lab(workdir: Path, dsn: str, **faults: Any) -> Iterator[PgLab]:
    (workdir / "configs").mkdir(parents=True, exist_ok=True)
    (workdir / "pyproject.toml").write_text(PYPROJECT, encoding="utf-8")
    with SandboxServer(SandboxOptions(port=0, token=chaos.TOKEN, **faults)) as server:
        yield PgLab(workdir, server, dsn)
