"""`make bench`'s rate-limit rows (issue 22): apply against the sandbox's token bucket.

600 creates at ``--parallelism 32`` against ``coins-sync sandbox --rate 20 --burst 20``,
once with ``Retry-After`` on the 429s and once without. Figures, per run:

* whether one run created everything and exited 0;
* **goodput**: creates a second over the limit, where the time is the apply's wall time
  less that of the same apply run again with nothing to do (start-up, loading, plan);
* **429s per create**: the sandbox's count of rate-limit refusals over the creates;
* **log lines about rate limiting**: lines of the apply's output that mention 429,
  rate or pacing;
* **duplicates**: configs the sandbox holds twice for one key.

It uses the helpers of ``bench.py`` (passed in as its module), so it shares the
launcher, the sandbox wrapper and the project layout.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

RATE, BURST = 20, 20
CREATES, PARALLELISM = 600, 32

TARGET_GOODPUT = 0.90
TARGET_REFUSED_PER_CREATE = 0.2
TARGET_LOG_LINES = 30


@dataclass(frozen=True)
class Figures:
    retry_after: bool
    exit_code: int
    created: int
    seconds: float
    refused: int
    log_lines: int
    duplicates: int

    @property
    def label(self) -> str:
        return "with Retry-After" if self.retry_after else "without Retry-After"

    @property
    def goodput(self) -> float:
        return self.created / self.seconds / RATE if self.seconds > 0 else 0.0


def about_rate_limiting(text: str) -> list[str]:
    words = ("429", "rate", "pacing", "paced")
    return [line for line in text.splitlines() if any(w in line.lower() for w in words)]


def measure(bench: ModuleType, root: Path, env: dict[str, str], retry_after: bool) -> Figures:
    """One apply of CREATES new rules against a rate-limited sandbox, and its no-op rerun."""
    name = f"rate-limit-{'ra' if retry_after else 'no-ra'}"
    work = root / name
    bench.write_project(work)
    files = max(1, CREATES // 100)
    bench.write_configs(
        work / "configs", files, CREATES // files, "LIMA" if retry_after else "LIMB"
    )
    extra = ["--rate", str(RATE), "--burst", str(BURST)]
    if not retry_after:
        extra.append("--no-retry-after")
    sandbox = bench.Sandbox(work, 0, env, extra)
    try:
        args = [bench.PYTHON, "-m", "coins_sync", "apply", "--configs", "configs"]
        args += ["--state", "state/bench.json", "--env", "bench", "--api-url", sandbox.url]
        args += ["--yes", "--parallelism", str(PARALLELISM)]
        result = bench.run_timed(args, work, env, check=False)
        again = bench.run_timed(args, work, env, check=False)
        stats = sandbox.stats()
        configs: Any = sandbox.read("/_sandbox/configs")
    finally:
        sandbox.stop()
    keys = Counter((c["companyId"], c["configuration"], c["event"]) for c in configs)
    created = stats["creates"]
    everything = f"Apply: {CREATES} created, 0 updated, 0 failed" in result.stdout
    return Figures(
        retry_after=retry_after,
        exit_code=result.code if everything or result.code else 1,
        created=created,
        seconds=result.seconds - again.seconds,
        refused=stats.get("rate_limited", 0),
        log_lines=len(about_rate_limiting(result.stdout + result.stderr)),
        duplicates=sum(n - 1 for n in keys.values()),
    )


def rows(bench: ModuleType, f: Figures) -> list[Any]:
    Row = bench.Row
    per_create = f.refused / max(1, f.created)
    where = f"rate limit {RATE}/s, {CREATES} creates, -p {PARALLELISM}, {f.label}"
    return [
        Row(
            f"{where}: one run, exit 0",
            f"exit {f.exit_code}, {f.created} created",
            f"exit 0, {CREATES} created",
            f.exit_code == 0 and f.created == CREATES,
        ),
        Row(
            f"{where}: goodput / limit",
            f"{f.goodput:.0%}",
            f">= {TARGET_GOODPUT:.0%}",
            f.goodput >= TARGET_GOODPUT,
        ),
        Row(
            f"{where}: 429s per create",
            f"{per_create:.3f} ({f.refused})",
            f"<= {TARGET_REFUSED_PER_CREATE}",
            per_create <= TARGET_REFUSED_PER_CREATE,
        ),
        Row(
            f"{where}: log lines about rate limiting",
            str(f.log_lines),
            f"<= {TARGET_LOG_LINES}",
            f.log_lines <= TARGET_LOG_LINES,
        ),
        Row(f"{where}: duplicates", str(f.duplicates), "0", f.duplicates == 0),
    ]


def only(bench: ModuleType) -> int:
    """The rate-limit rows alone (``bench.py --only rate-limit``)."""
    root = Path(tempfile.mkdtemp(prefix="coins-sync-bench-rate-"))
    started = time.perf_counter()
    try:
        env = bench.child_env(root)
        bench.timed_apply(root, env, "warm-up", 16, 0, PARALLELISM)  # fills the bytecode cache
        figures = [measure(bench, root, env, r) for r in (True, False)]
    except bench.BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = [row for f in figures for row in rows(bench, f)]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"coins-sync bench --only rate-limit, {now}: {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, {time.perf_counter() - started:.0f} s in all"
    )
    print(bench.render(table, header))
    return 0 if all(r.ok is not False for r in table) else 1
