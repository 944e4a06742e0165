"""The chaos lab of ``tests/chaos.py`` on the postgres backend.

:class:`PgLab` is a :class:`chaos.Lab` whose project keeps its state in PostgreSQL
(``COINS_SYNC_PG_DSN``): the state it checks is the database's, and "a journal was
started" means the run committed its first intent row.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the package importable
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from coins_sync.sandbox import SandboxOptions, SandboxServer  # noqa: E402
from coins_sync.state.model import State  # noqa: E402
from coins_sync.state.postgres import PostgresStateStore  # noqa: E402
from tests import chaos  # noqa: E402

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
        self._floor = 0

    def state(self) -> State:
        return self.pg.read()

    @contextlib.contextmanager
    def spawn(self, *args: str) -> Iterator[subprocess.Popen[bytes]]:
        """As chaos.Lab.spawn; intents already in the database are not this run's."""
        self._floor = self._max_operation()
        with super().spawn(*args) as proc:
            yield proc

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
        floor = max(int(old or b"0"), self._floor)
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


@contextlib.contextmanager
def campaigns_on_postgres(cluster: Any) -> Iterator[None]:
    """While inside, ``chaos``'s campaigns run on the postgres backend, each on a fresh
    database of ``cluster`` (a :class:`tests.pg_fixture.Cluster`)."""

    @contextlib.contextmanager
    def pg_lab(workdir: Path, runner: Any = None, **faults: Any) -> Iterator[chaos.Lab]:
        dsn = cluster.new_database()
        previous = os.environ.get("COINS_SYNC_PG_DSN")
        os.environ["COINS_SYNC_PG_DSN"] = dsn
        try:
            with lab(workdir, dsn, **faults) as the_lab:
                yield the_lab
        finally:
            if previous is None:
                os.environ.pop("COINS_SYNC_PG_DSN", None)
            else:
                os.environ["COINS_SYNC_PG_DSN"] = previous

    original = chaos.lab
    chaos.lab = pg_lab  # type: ignore[assignment]
    try:
        yield
    finally:
        chaos.lab = original


def main(argv: list[str]) -> int:
    """``make chaos`` on the postgres backend: the same campaigns, a throw-away cluster."""
    import argparse
    import shutil
    import tempfile

    from tests.pg_fixture import find_bin, start_cluster

    parser = argparse.ArgumentParser(description="chaos campaigns on the postgres backend")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    options = parser.parse_args(argv)
    if find_bin() is None:
        print("chaos (postgres): PostgreSQL server binaries not found", file=sys.stderr)
        return 1
    scale = chaos.QUICK if options.quick else chaos.FULL
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="coins-sync-pg-chaos-"))
    root.chmod(0o755)  # the server runs as the postgres user
    cluster = start_cluster(root / "cluster")
    try:
        with campaigns_on_postgres(cluster):
            results = chaos.run_campaigns(root / "work", scale, options.seed)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    for figures in results:
        figures.name += " [postgres]"
        print(figures.report())
    ok = all(figures.ok for figures in results)
    verdict = "all promises held" if ok else "PROMISES BROKEN"
    print(
        f"chaos (postgres): {len(results)} campaigns in {time.monotonic() - started:.1f}s: "
        f"{verdict}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
