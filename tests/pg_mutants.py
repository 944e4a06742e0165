"""`make mutants`, the PostgreSQL part: hand-written mutants of the write fence.

mutmut mutates Python; the postgres fence is SQL inside strings, where a mutmut string
mutant breaks the query outright (every test notices). The fence has two halves, the
run's lock epoch and its lock session, and ``state force-unlock`` breaks both at once,
so a test built on it passes with either half gone. Each mutant here drops the epoch
half at one site (or quiets the checkpoint of a fenced run) and must be killed by
``tests/test_postgres_fence.py``. Each runs in a copy of the repository; an unmutated
copy must pass first. Exits 1 when a mutant survives.

    python tests/pg_mutants.py [--workers N] [--only P5,L5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = "tests/test_postgres_fence.py"
COPIED = ("coins_sync", "tests", "configs", "schemas", "pyproject.toml", "README.md")

#: The lock session half of the fence alone (HELD without ``lock_epoch = %(epoch)s``).
SESSION_ONLY = """
    WHERE name = %(env)s
      AND EXISTS (
          SELECT 1 FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid = %(lock_pid)s
            AND classid = %(classid)s::bigint::oid AND objid = %(objid)s::bigint::oid
            AND objsubid = 1)"""


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str
    old: str
    new: str


MUTANTS = (
    Mutant(
        "P5",
        "journal writes on a dirty row (the shared fence) check the session, not the epoch",
        "coins_sync/state/postgres/lock.py",
        "SELECT name, dirty FROM {s}.environment{held}",
        "SELECT name, dirty FROM {s}.environment" + SESSION_ONLY,
    ),
    Mutant(
        "P6",
        "the journal's first write after a bump checks the session, not the epoch",
        "coins_sync/state/postgres/lock.py",
        "SET serial = serial + 1, dirty = true{held}",
        "SET serial = serial + 1, dirty = true" + SESSION_ONLY,
    ),
    Mutant(
        "P7",
        "the checkpoint checks the session, not the epoch",
        "coins_sync/state/postgres/journal.py",
        "dirty = false{held} ",
        "dirty = false" + SESSION_ONLY + " ",
    ),
    Mutant(
        "L5",
        "writes on the lock session (write, push, recover) check the session, not the epoch",
        "coins_sync/state/postgres/lock.py",
        'LOCK_CHECK = """\n    WHERE name = %(env)s AND lock_epoch = %(epoch)s',
        'LOCK_CHECK = """\n    WHERE name = %(env)s',
    ),
    Mutant(
        "A5",
        "an audit row of its own checks the session, not the epoch",
        "coins_sync/state/postgres/audit.py",
        "FROM {s}.environment{held}",
        "FROM {s}.environment" + SESSION_ONLY,
    ),
    Mutant(
        "R3",
        "the checkpoint of a run whose results went to the rescue file returns quietly",
        "coins_sync/state/postgres/journal.py",
        "        if not kept:\n            return",
        "        if True:\n            return",
    ),
)


def copy_repo(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=ignore)
        else:
            shutil.copy2(source, into / name)


def run_tests(root: Path, workers: int) -> tuple[int, str]:
    """pytest on the copy at ``root`` (``python -m`` puts the copy first on sys.path):
    its exit code, and the tail of its output."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS]
    if workers > 1:
        command[4:4] = ["-n", str(workers)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    return done.returncode, "\n".join((done.stdout + done.stderr).splitlines()[-40:])


def mutate(root: Path, mutant: Mutant) -> None:
    path = root / mutant.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        sys.exit(f"mutant {mutant.name}: its site is gone from {mutant.path}; update MUTANTS")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coins-sync-pg-mutants-") as tmp:
        clean = Path(tmp) / "clean"
        copy_repo(clean)
        code, output = run_tests(clean, args.workers)
        if code != 0:
            print(f"{output}\nthe unmutated copy fails {TESTS}; fix the tests first")
            return 1
        survived = 0
        print(f"PostgreSQL fence mutants, against {TESTS}:")
        for mutant in chosen:
            root = Path(tmp) / mutant.name
            copy_repo(root)
            mutate(root, mutant)
            code, _ = run_tests(root, args.workers)
            status = "killed" if code == 1 else "SURVIVED" if code == 0 else f"error {code}"
            # pytest: 1 is "some tests failed"; anything else is not a kill
            survived += status != "killed"
            print(f"  {mutant.name:3} {status:9} {mutant.what}")
            shutil.rmtree(root, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    print(f"{len(chosen) - survived} of {len(chosen)} killed in {minutes:.1f} min")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
