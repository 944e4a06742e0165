"""`make bench`'s validate-memory row (issue 22): peak RSS of ``validate`` of 1M rules.

100 files x 10,000 rules, all valid; the process's own peak RSS (through the bench's
launcher). The target is half of the 364 MB measured before validate stopped keeping
every rule.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

FILES, RULES_PER_FILE = 100, 10_000
TARGET_MB = 364 / 2


def measure(bench: ModuleType, root: Path, env: dict[str, str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of one ``validate`` of 1M rules."""
    work = root / "validate-1m"
    bench.write_project(work)
    bench.write_configs(work / "configs", FILES, RULES_PER_FILE, "VM")
    args = [bench.PYTHON, "-m", "coins_sync", "validate", "--configs", "configs"]
    run = bench.run_timed(args, work, env)
    expected = f"valid: {FILES * RULES_PER_FILE} rules"
    if not run.stdout.startswith(expected):
        raise bench.BenchError(f"validate of 1M rules did not pass:\n{run.stdout[-500:]}")
    return run.max_rss_mb, run.seconds


def rows(bench: ModuleType, rss_mb: float, seconds: float) -> list[Any]:
    return [
        bench.Row(
            f"validate, {FILES * RULES_PER_FILE // 1_000_000}M rules: peak RSS ({seconds:.0f} s)",
            f"{rss_mb:.0f} MB",
            f"<= {TARGET_MB:.0f} MB",
            rss_mb <= TARGET_MB,
        )
    ]
