"""`make bench`'s plan CPU rows (issue 22): plan over the floor in CPU time, at 100k
and at 1M rules.

Each figure is the CPU time (user + sys) of one process alone, as the bench's launcher
reports it from ``wait4``: a ``coins_sync plan`` of rules that are all in sync with the
state, and the floor (``bench.FLOOR_CODE``: ``yaml.load`` with ``CSafeLoader`` of the
same files and ``json.loads`` of the same state, interpreter start-up included). Plan
and floor processes are interleaved; each row is the median plan over the median
floor. CPU time leaves out the time a process waits for a core another process holds,
so it is the steadier figure on a shared machine; the wall-time row stays beside it.

* **100k rules** (100 files x 1000 rules): the same runs as the wall-time plan row.
* **1M rules** (1000 files x 1000 rules): written once, a file at a time with the state
  streamed (:class:`bench.StateWriter`), so the bench never holds 1M entries; the median
  of ``min(--runs, 3)`` runs, with no untimed warm-up (the 100k runs compiled the
  bytecode). About three minutes on a quiet 2-core machine.

File backend only, as the startup and memory rows: on PostgreSQL the state is read
from the database, so the floor's ``json.loads`` of a state file is not the
unavoidable work of that plan, and the database's own CPU is in no process measured
here. ``bench.py --only plan`` measures these rows (and the wall-time and RSS rows of
100k rules) alone.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

LARGE_FILES, LARGE_RULES_PER_FILE = 1000, 1000
LARGE_RUNS = 3
TARGET_CPU_RATIO = 1.5


def write_large(bench: ModuleType, work: Path) -> tuple[Path, int]:
    """1000 rule files of 1000 rules and the state they are in sync with; returns the
    state's path and the number of rules."""
    bench.write_project(work)
    state = work / "state" / "bench.json"
    writer = bench.StateWriter(state)
    count = 0
    try:
        for f in range(LARGE_FILES):
            entries = bench.write_config_file(
                work / "configs", f, LARGE_RULES_PER_FILE, "CM", count
            )
            writer.add(sorted(entries, key=bench.state_order))  # companies come in order
            count += len(entries)
    finally:
        writer.close()
    return state, count


def measure_large(bench: ModuleType, root: Path, env: dict[str, str], runs: int) -> Any:
    """The plan of 1M rules against the floor (``bench.PlanFigures``)."""
    work = root / "plan-1m"
    state, count = write_large(bench, work)
    return bench.compare_plan(work, state, count, env, min(runs, LARGE_RUNS), warm_up=False)


def rows(bench: ModuleType, figures: Any) -> list[Any]:
    """Plan CPU, floor CPU and their ratio, for one size."""
    size = f"{figures.rules // 1000}k"
    if figures.rules >= 1_000_000:
        size = f"{figures.rules // 1_000_000}M"
    ratio = figures.plan_cpu_s / figures.floor_cpu_s
    runs = figures.runs
    return [
        bench.Row(
            f"plan CPU, {size} in-sync rules (median of {runs})", f"{figures.plan_cpu_s:.2f} s"
        ),
        bench.Row(f"floor CPU, {size} rules (median of {runs})", f"{figures.floor_cpu_s:.2f} s"),
        bench.Row(
            f"plan / floor in CPU, {size} rules",
            f"{ratio:.2f}x",
            f"<= {TARGET_CPU_RATIO:.1f}x",
            ratio <= TARGET_CPU_RATIO,
        ),
    ]
