"""A throw-away PostgreSQL cluster for the tests, on a unix socket in a temporary folder.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(``runuser``); as anyone else it runs as that user. ``fsync=off``: test data only.
Used by the fixtures in ``tests/conftest.py``, by ``make demo-postgres`` and by the
benchmarks (``python tests/pg_fixture.py start DIR`` / ``stop DIR``).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def find_bin() -> Path | None:
    """The folder of ``pg_ctl``: ``COINS_SYNC_TEST_PG_BINDIR`` if set, else on PATH, else
    Debian's versioned folders (newest)."""
    forced = os.environ.get("COINS_SYNC_TEST_PG_BINDIR")
    if forced is not None:
        return Path(forced) if (Path(forced) / "pg_ctl").exists() else None
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(candidates[-1]).parent if candidates else None


class Cluster:
    """initdb + pg_ctl start in ``root``; ``dsn(dbname)`` connects over the socket."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.bindir = bindir
        self.data = root / "data"
        self.socket_dir = root / "socket"
        self.log = root / "server.log"
        self._names = itertools.count(1)
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        done = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text("utf-8", "replace") if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}\n{log}")

    def start(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.root, 0o777)
        os.chmod(self.socket_dir, 0o777)
        if self.as_root:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-c listen_addresses= -k {self.socket_dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} user=postgres dbname={dbname}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


def start_cluster(root: Path | None = None) -> Cluster:
    bindir = find_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (pg_ctl) not found")
    root = root or Path(tempfile.mkdtemp(prefix="coins-sync-pg-"))
    return Cluster(root, bindir).start()


def main(argv: list[str]) -> int:
    """``start DIR`` prints the DSN of a new cluster in DIR; ``stop DIR`` stops it."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: pg_fixture.py start|stop DIR", file=sys.stderr)
        return 1
    root = Path(argv[1]).resolve()
    if argv[0] == "start":
        try:
            cluster = start_cluster(root)
        except (FileNotFoundError, RuntimeError) as e:
            print(f"cannot start PostgreSQL: {e}", file=sys.stderr)
            return 1
        print(cluster.dsn())
        return 0
    bindir = find_bin()
    if bindir is not None:
        Cluster(root, bindir).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
