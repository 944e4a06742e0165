"""`make bench`: the speed targets of issue #6, measured in one run.

Run it as ``.venv/bin/python tests/benchmarks/bench.py``. It is not a test: pytest does
not collect it, and ``make test`` asserts no timing. It writes synthetic configs and a
matching state into a temporary folder, runs the real command line in subprocesses
against a sandbox on 127.0.0.1, prints a table and exits 1 when a target is missed.

Figures:

* **plan / floor**: the median wall time of 3 ``coins_sync plan`` processes over
  100 files x 1000 rules that are all in sync with the state, against the median of 3
  processes that do only the unavoidable work: ``yaml.load(CSafeLoader)`` of the same
  files and ``json.loads`` of the same state. Both include interpreter start-up.
* **plan / floor in CPU** (issue 22): the same comparison in CPU time (user + sys of
  each process alone), at 100k rules (the same runs) and at 1M rules (1000 files x 1000
  rules, median of ``min(--runs, 3)``); see ``plan_cpu.py``. File backend only: with
  ``--backend postgres`` the state comes from the database, so the floor's
  ``json.loads`` of a state file is not comparable (the wall-time row above is still
  measured there, as before). ``--only plan`` runs the plan rows alone (file backend).
* **peak RSS** of those plan processes: each process's own, from a small launcher's
  ``wait4`` (see :data:`LAUNCHER`; the bench itself holds the rules it wrote).
* **apply efficiency**: 2000 creates at 50 ms sandbox latency with ``--parallelism 16``,
  ideal time / wall time of the whole process, where ideal = 2000 x 0.05 / 16 s.
* **bookkeeping growth**: per-create time of 20k creates over that of 2k creates, at
  0 ms latency. A create's time is the apply's wall time less that of the same apply
  run again with nothing to do (start-up, loading, planning), over the creates.
  Linear bookkeeping keeps it near 1; per-result state rewrites do not.
* **client CPU per create** (issue 22): the CPU time of the 2k-create apply process
  less that of its no-op rerun, over the creates.
* **validate memory** (issue 22): the peak RSS of ``validate`` of 1M rules
  (``validate_memory.py``).
* **rate limit** (issue 22): apply against ``sandbox --rate 20 --burst 20``, with and
  without ``Retry-After`` (``ratelimit.py``; ``--only rate-limit`` runs it alone).
* **validate startup ratio** (issue #11): the median wall time of ``coins-sync validate``
  of the 3 example configs (the console script's own code, run by ``python -c``) over
  that of ``python -c "import yaml, click"``, interleaved, after untimed warm-up runs.
  It is what an import-pure core buys: neither loads the API client, crypto, locks or
  jsonschema. ``bench.py --only startup`` measures it alone in a few seconds (the
  pre-commit hook runs that).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import plan_cpu  # the plan CPU rows (issue 22), beside this file
import ratelimit  # the rate-limit rows (issue 22)
import validate_memory  # the validate-memory row (issue 22)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TOKEN = "bench-token-not-a-secret"
TIMEOUT = 300.0  # seconds; no single process may take longer

FILES, RULES_PER_FILE = 100, 1000
APPLY_CREATES, APPLY_LATENCY_MS, APPLY_PARALLELISM = 2000, 50, 16
GROWTH_SMALL, GROWTH_LARGE = 2_000, 20_000

TARGET_PLAN_RATIO = 2.0
TARGET_RSS_MB = 300.0
TARGET_APPLY_EFFICIENCY = 0.85  # issue 22
TARGET_GROWTH = 1.3
TARGET_STARTUP_RATIO = 1.5
TARGET_CPU_PER_CREATE_MS = 1.2
STARTUP_RUNS = 21

#: Exactly what the ``coins-sync`` console script runs.
STARTUP_CODE = "import sys; from coins_sync.cli import main; sys.argv[0] = 'coins-sync'; main()"
STARTUP_FLOOR_CODE = "import yaml, click"

FLOOR_CODE = """\
import json, sys, yaml
for name in sys.argv[2:]:
    with open(name, "rb") as handle:
        yaml.load(handle, Loader=yaml.CSafeLoader)
with open(sys.argv[1], "rb") as handle:
    json.loads(handle.read())
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_mb: float
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0
    code: int = 0


@dataclass(frozen=True)
class Row:
    name: str
    measured: str
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else "PASS" if self.ok else "FAIL"


class BenchError(Exception):
    """A run did not do what it was asked; its figures would mean nothing."""


# --- inputs -----------------------------------------------------------------------


def write_configs(
    folder: Path, files: int, rules_per_file: int, prefix: str
) -> list[dict[str, object]]:
    """Write ``files`` rule files; return the state entries that match them exactly."""
    entries: list[dict[str, object]] = []
    for f in range(files):
        entries += write_config_file(folder, f, rules_per_file, prefix, len(entries))
    return entries


def write_config_file(
    folder: Path, f: int, rules_per_file: int, prefix: str, first: int
) -> list[dict[str, object]]:
    """Write rule file number ``f``; return the state entries that match it exactly
    (their ids count on from ``first``, the number of rules of the files before it)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, object]] = []
    company = f"{prefix}{f:04d}"
    lines = [
        "# yaml-language-server: $schema=../schemas/rules.schema.json",
        f"companyId: {company}",
        "rules:",
    ]
    for r in range(rules_per_file):
        event = f"EVENT_{r:05d}_PAYMENT"
        amount = (f * 7919 + r * 104729) % 10_001
        lines.append(f"  - event: {event}")
        lines.append(f"    amount: {amount}")
        configuration = "DEFAULT"
        if r % 10 == 0:  # some per-rule overrides, as real files have
            configuration = "CUSTOM"
            lines.append(f"    configuration: {configuration}")
        entries.append(
            {
                "companyId": company,
                "configuration": configuration,
                "event": event,
                "amount": amount,
                "coinConfigId": f"WCC{first + len(entries) + 100001:07d}",
            }
        )
    (folder / f"{company.lower()}.yaml").write_text("\n".join(lines) + "\n", "utf-8")
    return entries


LINEAGE = "00000000-0000-4000-8000-000000000bec"


class StateWriter:
    """A state file as coins-sync writes it (version 1, sorted entries, indent 2: the
    bytes of ``json.dumps(..., indent=2, sort_keys=True, ensure_ascii=False)``), written
    a chunk of entries at a time, so that 1M entries need not be held at once. The
    chunks must come in key order; entries hold scalars only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._handle.write('{\n  "entries": [')
        self._count = 0

    def add(self, entries: Sequence[dict[str, object]]) -> None:
        parts: list[str] = []
        for entry in entries:
            fields = ",\n".join(
                f"      {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
                for k, v in sorted(entry.items())
            )
            parts.append(("\n" if self._count == 0 else ",\n") + "    {\n" + fields + "\n    }")
            self._count += 1
        self._handle.write("".join(parts))

    def close(self) -> None:
        tail = "\n  ]" if self._count else "]"
        self._handle.write(
            f'{tail},\n  "lineage": "{LINEAGE}",\n  "serial": 1,\n  "version": 1\n}}\n'
        )
        self._handle.close()


def state_order(entry: dict[str, object]) -> tuple[str, str, str]:
    return (str(entry["companyId"]), str(entry["configuration"]), str(entry["event"]))


def write_state(path: Path, entries: list[dict[str, object]]) -> None:
    """A state file as coins-sync writes it (see :class:`StateWriter`)."""
    writer = StateWriter(path)
    writer.add(sorted(entries, key=state_order))
    writer.close()


#: "file" or "postgres" (``--backend``); with postgres, each figure gets its own schema.
BACKEND = "file"


def write_project(workdir: Path) -> None:
    """A pyproject.toml with a ``bench`` environment; paths are passed on the command line."""
    workdir.mkdir(parents=True, exist_ok=True)
    backend = ""
    if BACKEND == "postgres":
        backend = f'backend = "postgres"\npg_schema = "bench_{workdir.name.replace("-", "_")}"\n'
    (workdir / "pyproject.toml").write_text(
        "[tool.coins-sync]\n"
        'configs = "configs"\n'
        'default_environment = "bench"\n\n'
        "[tool.coins-sync.environments.bench]\n"
        'api_url = "http://127.0.0.1:9"\n'
        'state = "state/bench.json"\n' + backend,
        "utf-8",
    )


# --- processes --------------------------------------------------------------------


def child_env(root: Path) -> dict[str, str]:
    """The environment of every process the bench starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")}
    env["COINS_SYNC_TOKEN"] = TOKEN
    if BACKEND == "postgres":
        env["COINS_SYNC_PG_DSN"] = os.environ["COINS_SYNC_PG_DSN"]
    env["NO_COLOR"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Bytecode is cached as for any installed tool (the untimed first runs fill the
    # cache), outside the repository.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    for name in ("NO_PROXY", "no_proxy"):  # the sandbox is on loopback, never via a proxy
        env[name] = ",".join(filter(None, [env.get(name), "127.0.0.1", "localhost"]))
    return env


#: Each timed process is started by this small launcher, which reports the process's
#: wall time, its own peak RSS and its CPU time. Linux folds the peak RSS of the process
#: that forks (or vforks) a child into the child's ``ru_maxrss`` at exec, so a child
#: started by the bench itself (which holds the rules it wrote) would report the bench's
#: peak; the launcher's peak is about 10 MB, below any figure measured here.
LAUNCHER = """\
import json, os, sys, time
report, args = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawn(args[0], args, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(report, "w", encoding="utf-8") as handle:
    json.dump({
        "code": os.waitstatus_to_exitcode(status),
        "seconds": seconds,
        "max_rss_kib": usage.ru_maxrss,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }, handle)
"""


def run_timed(args: Sequence[str], cwd: Path, env: dict[str, str], check: bool = True) -> Run:
    """Run one process to completion (through :data:`LAUNCHER`): its wall time, its own
    peak RSS and its CPU time. With ``check``, a non-zero exit is a :class:`BenchError`."""
    out_path, err_path = cwd / ".bench.out", cwd / ".bench.err"
    report_path = cwd / ".bench.json"
    report_path.unlink(missing_ok=True)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [PYTHON, "-I", "-S", "-c", LAUNCHER, str(report_path), *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # a timeout ends the launcher and its child together
        )
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise BenchError(f"{' '.join(args[:5])}... took over {TIMEOUT:.0f}s") from None
    stdout, stderr = out_path.read_text("utf-8", "replace"), err_path.read_text("utf-8", "replace")
    if not report_path.exists():
        raise BenchError(f"the launcher of {' '.join(args[2:5])} failed:\n{stderr[-2000:]}")
    report = json.loads(report_path.read_text("utf-8"))
    if check and report["code"] != 0:
        tail = (stderr or stdout)[-2000:]
        raise BenchError(f"{' '.join(args[2:5])} exited {report['code']}:\n{tail}")
    return Run(
        report["seconds"],
        report["max_rss_kib"] / 1024,
        stdout,
        stderr,
        report["cpu_seconds"],
        report["code"],
    )


class Sandbox:
    """``coins_sync sandbox`` in a subprocess on 127.0.0.1, on a port the OS picks."""

    def __init__(
        self, workdir: Path, latency_ms: int, env: dict[str, str], extra: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.log = workdir / f"sandbox-{latency_ms}ms.log"
        args = [PYTHON, "-m", "coins_sync", "sandbox", "--host", "127.0.0.1", "--port", "0"]
        args += ["--latency-ms", str(latency_ms), *extra]
        self._log_handle = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, cwd=workdir, env=env, stdout=self._log_handle, stderr=self._log_handle
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        for _ in range(200):  # 10 s
            text = self.log.read_text("utf-8", "replace")
            marker = "listening on "
            if marker in text:
                return text.split(marker, 1)[1].split()[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"the sandbox did not start:\n{self.log.read_text('utf-8', 'replace')}")

    def read(self, path: str) -> object:
        """A debug route of the sandbox (``/_sandbox/stats`` or ``/_sandbox/configs``)."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with direct.open(request, timeout=10) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, int]:
        stats = self.read("/_sandbox/stats")
        assert isinstance(stats, dict)
        return {str(k): int(v) for k, v in stats.items()}

    def creates(self) -> int:
        return self.stats()["creates"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_handle.close()


# --- figures ----------------------------------------------------------------------


@dataclass(frozen=True)
class PlanFigures:
    """Medians of interleaved plan and floor processes over the same rules and state."""

    rules: int
    runs: int
    plan_s: float
    floor_s: float
    plan_cpu_s: float
    floor_cpu_s: float
    rss_mb: float  # the highest peak RSS of the plan processes


def plan_args(state: Path, work: Path) -> list[str]:
    args = [PYTHON, "-m", "coins_sync", "plan", "--configs", "configs"]
    return [*args, "--state", str(state.relative_to(work)), "--env", "bench"]


def compare_plan(
    work: Path, state: Path, rules: int, env: dict[str, str], runs: int, warm_up: bool
) -> PlanFigures:
    """``runs`` plan processes over ``work`` (all in sync with ``state``), interleaved
    with as many floor processes; the first plan's output is checked. ``warm_up`` adds
    one untimed run of each first (compiles bytecode, warms the page cache)."""
    files = sorted(str(p) for p in (work / "configs").glob("*.yaml"))
    plan = plan_args(state, work)
    floor = [PYTHON, "-c", FLOOR_CODE, str(state), *files]
    expected = f"{rules} unchanged (no changes)"
    if warm_up:
        run_timed(floor, work, env)
        run_timed(plan, work, env)
    plans: list[Run] = []
    floors: list[Run] = []
    for _ in range(runs):  # interleaved, so drift hits both alike
        plans.append(run_timed(plan, work, env))
        if expected not in plans[0].stdout:
            raise BenchError(f"plan is not all in sync:\n{plans[0].stdout[-1000:]}")
        floors.append(run_timed(floor, work, env))
    return PlanFigures(
        rules=rules,
        runs=runs,
        plan_s=statistics.median(r.seconds for r in plans),
        floor_s=statistics.median(r.seconds for r in floors),
        plan_cpu_s=statistics.median(r.cpu_seconds for r in plans),
        floor_cpu_s=statistics.median(r.cpu_seconds for r in floors),
        rss_mb=max(r.max_rss_mb for r in plans),
    )


def measure_plan(root: Path, env: dict[str, str], runs: int) -> PlanFigures:
    """Plan of 100 files x 1000 rules against the floor (see :class:`PlanFigures`)."""
    work = root / "plan"
    write_project(work)
    entries = write_configs(work / "configs", FILES, RULES_PER_FILE, "CO")
    state = work / "state" / "bench.json"
    write_state(state, entries)
    if BACKEND == "postgres":  # the same state, moved into the database (untimed)
        push = [PYTHON, "-m", "coins_sync", "state", "push", "--env", "bench"]
        run_timed([*push, "--from", str(state), "--yes"], work, env)
    return compare_plan(work, state, len(entries), env, runs, warm_up=True)


def plan_rows(figures: PlanFigures) -> list[Row]:
    """The wall-time and peak-RSS rows of the plan of 100k rules."""
    ratio = figures.plan_s / figures.floor_s
    runs = figures.runs
    return [
        Row(
            f"plan, {figures.rules // 1000}k in-sync rules (median of {runs})",
            f"{figures.plan_s:.2f} s",
        ),
        Row(f"floor: CSafeLoader + json.loads (median of {runs})", f"{figures.floor_s:.2f} s"),
        Row(
            "plan / floor",
            f"{ratio:.2f}x",
            f"<= {TARGET_PLAN_RATIO:.1f}x",
            ratio <= TARGET_PLAN_RATIO,
        ),
        Row(
            "peak RSS of plan",
            f"{figures.rss_mb:.0f} MB",
            f"<= {TARGET_RSS_MB:.0f} MB",
            figures.rss_mb <= TARGET_RSS_MB,
        ),
    ]


def measure_startup(root: Path, env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median seconds of ``coins-sync validate`` of the examples, and of the floor."""
    work = root / "startup"
    work.mkdir(parents=True, exist_ok=True)
    validate_args = [PYTHON, "-c", STARTUP_CODE, "validate", str(REPO / "configs")]
    floor_args = [PYTHON, "-c", STARTUP_FLOOR_CODE]
    for _ in range(2):  # untimed: compiles bytecode and warms the page cache
        first = run_timed(validate_args, work, env)
        run_timed(floor_args, work, env)
    if not first.stdout.startswith("valid: "):
        raise BenchError(f"validate of the examples did not pass:\n{first.stdout[-1000:]}")
    validates: list[float] = []
    floors: list[float] = []
    for _ in range(runs):  # interleaved, so drift hits both alike
        validates.append(run_timed(validate_args, work, env).seconds)
        floors.append(run_timed(floor_args, work, env).seconds)
    return statistics.median(validates), statistics.median(floors)


def startup_rows(validate_s: float, floor_s: float, runs: int) -> list[Row]:
    ratio = validate_s / floor_s
    return [
        Row(f"validate, 3 example configs (median of {runs})", f"{validate_s * 1e3:.0f} ms"),
        Row(f"floor: import yaml, click (median of {runs})", f"{floor_s * 1e3:.0f} ms"),
        Row(
            "validate startup ratio",
            f"{ratio:.2f}x",
            f"<= {TARGET_STARTUP_RATIO:.1f}x",
            ratio <= TARGET_STARTUP_RATIO,
        ),
    ]


def timed_apply(
    root: Path, env: dict[str, str], name: str, creates: int, latency_ms: int, parallelism: int
) -> tuple[Run, Run]:
    """One ``apply --yes`` process that makes ``creates`` new configs, and the same
    command run again, when it has nothing left to do.

    The second run costs what the first did besides creating: start-up, loading and
    planning the same rules. The difference is the cost of the creates themselves.
    """
    work = root / name
    write_project(work)
    files = max(1, creates // RULES_PER_FILE)
    write_configs(work / "configs", files, creates // files, name.upper().replace("-", ""))
    sandbox = Sandbox(work, latency_ms, env)
    try:
        args = [PYTHON, "-m", "coins_sync", "apply", "--configs", "configs"]
        args += ["--state", "state/bench.json", "--env", "bench", "--api-url", sandbox.url]
        args += ["--yes", "--parallelism", str(parallelism)]
        result = run_timed(args, work, env)
        if f"Apply: {creates} created, 0 updated, 0 failed" not in result.stdout:
            raise BenchError(f"apply did not create {creates}:\n{result.stdout[-1000:]}")
        if sandbox.creates() != creates:
            raise BenchError(f"the sandbox saw {sandbox.creates()} creates, not {creates}")
        again = run_timed(args, work, env)
        if "Nothing to apply." not in again.stdout or sandbox.creates() != creates:
            raise BenchError(f"a second apply was not a no-op:\n{again.stdout[-1000:]}")
    finally:
        sandbox.stop()
    return result, again


# --- report -----------------------------------------------------------------------


def render(rows: list[Row], header: str) -> str:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("name", "measured", "target")]
    titles = ("figure", "measured", "target")
    lines = [header, ""]
    head = "  ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True)) + "  result"
    lines += [head, "-" * len(head)]
    for r in rows:
        cells = (r.name.ljust(widths[0]), r.measured.rjust(widths[1]), r.target.ljust(widths[2]))
        lines.append("  ".join(cells) + "  " + r.verdict)
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="timed plan runs (median)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--backend",
        choices=["file", "postgres"],
        default="file",
        help="state backend; postgres starts a throw-away local cluster",
    )
    parser.add_argument(
        "--no-rate-limit", action="store_true", help="leave out the rate-limit rows (about 70 s)"
    )
    parser.add_argument(
        "--only",
        choices=["startup", "plan", "apply", "rate-limit"],
        help="measure only this figure (startup: the validate startup ratio, a few seconds; "
        "plan: plan over the floor of 100k and 1M rules, in wall and CPU time, on the file "
        "backend, a few minutes; apply: the apply efficiency, --runs times, on --backend)",
    )
    options = parser.parse_args(argv)
    runs = max(1, min(options.runs, 15))
    this = sys.modules[__name__]
    if options.only == "startup":
        return only_startup()
    if options.only == "plan":
        if options.backend != "file":
            parser.error("--only plan measures the file backend only (see plan_cpu.py)")
        return only_plan(runs, options.keep)
    if options.only == "rate-limit":
        return ratelimit.only(this)
    if options.backend == "postgres":
        return on_postgres(sys.argv[1:] if argv is None else argv)
    if options.only == "apply":
        return only_apply(runs)

    root = Path(tempfile.mkdtemp(prefix="coins-sync-bench-"))
    started = time.perf_counter()
    try:
        env = child_env(root)
        startup = measure_startup(root, env, STARTUP_RUNS) if BACKEND == "file" else None
        plan = measure_plan(root, env, runs)
        # CPU rows: the file backend only (see plan_cpu.py)
        plan_1m = plan_cpu.measure_large(this, root, env, runs) if BACKEND == "file" else None
        p = APPLY_PARALLELISM
        # untimed, as in --only apply: compiles the apply path's bytecode (an installed
        # tool has it compiled; the plan runs above compiled only theirs)
        timed_apply(root, env, "warm-up", 16, 0, p)
        # the median of several runs, as for plan: one run on a shared machine is noise
        apply_s = statistics.median(
            timed_apply(root, env, f"apply-{n}", APPLY_CREATES, APPLY_LATENCY_MS, p)[0].seconds
            for n in range(runs)
        )
        small, small_noop = timed_apply(root, env, "grow-small", GROWTH_SMALL, 0, p)
        large, large_noop = timed_apply(root, env, "grow-large", GROWTH_LARGE, 0, p)
        small_s, small_noop_s = small.seconds, small_noop.seconds
        large_s, large_noop_s = large.seconds, large_noop.seconds
        cpu_per_create = (small.cpu_seconds - small_noop.cpu_seconds) / GROWTH_SMALL
        memory = validate_memory.measure(this, root, env) if BACKEND == "file" else None
        limited = (
            [ratelimit.measure(this, root, env, r) for r in (True, False)]
            if BACKEND == "file" and not options.no_rate_limit
            else []
        )
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        if options.keep:
            print(f"bench: inputs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    ideal = APPLY_CREATES * APPLY_LATENCY_MS / 1000 / APPLY_PARALLELISM
    efficiency = ideal / apply_s
    per_small = (small_s - small_noop_s) / GROWTH_SMALL
    per_large = (large_s - large_noop_s) / GROWTH_LARGE
    if per_small <= 0 or per_large <= 0:
        print("bench: a no-op apply took longer than the creates; rerun", file=sys.stderr)
        return 1
    growth = per_large / per_small
    rows = plan_rows(plan)
    if plan_1m is not None:
        rows += plan_cpu.rows(this, plan) + plan_cpu.rows(this, plan_1m)
    rows += [
        Row(
            f"apply {APPLY_CREATES} creates, {APPLY_LATENCY_MS} ms, -p {APPLY_PARALLELISM} "
            f"(median of {runs})",
            f"{apply_s:.2f} s",
            f"ideal {ideal:.2f} s",
        ),
        Row(
            "apply: ideal / actual",
            f"{efficiency:.0%}",
            f">= {TARGET_APPLY_EFFICIENCY:.0%}",
            efficiency >= TARGET_APPLY_EFFICIENCY,
        ),
        Row(f"per create, {GROWTH_SMALL // 1000}k creates at 0 ms", f"{per_small * 1e3:.2f} ms"),
        Row(f"per create, {GROWTH_LARGE // 1000}k creates at 0 ms", f"{per_large * 1e3:.2f} ms"),
        Row(
            "bookkeeping growth (20k / 2k)",
            f"{growth:.2f}x",
            f"<= {TARGET_GROWTH:.1f}x",
            growth <= TARGET_GROWTH,
        ),
        Row(
            f"client CPU per create ({GROWTH_SMALL // 1000}k creates at 0 ms)",
            f"{cpu_per_create * 1e3:.2f} ms",
            f"<= {TARGET_CPU_PER_CREATE_MS:.1f} ms",
            cpu_per_create * 1e3 <= TARGET_CPU_PER_CREATE_MS,
        ),
    ]
    if memory is not None:
        rows += validate_memory.rows(this, *memory)
    for figures in limited:
        rows += ratelimit.rows(this, figures)
    if startup is not None:  # the same on either backend: measured in the file run only
        rows += startup_rows(*startup, STARTUP_RUNS)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"coins-sync bench, {now}: {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, {time.perf_counter() - started:.0f} s in all"
    )
    print(render(rows, header))
    return 0 if all(r.ok is not False for r in rows) else 1


def only_startup() -> int:
    """The validate startup ratio alone (``--only startup``; the pre-commit hook)."""
    root = Path(tempfile.mkdtemp(prefix="coins-sync-bench-startup-"))
    started = time.perf_counter()
    try:
        validate_s, floor_s = measure_startup(root, child_env(root), STARTUP_RUNS)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = startup_rows(validate_s, floor_s, STARTUP_RUNS)
    header = (
        f"coins-sync bench --only startup: {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, {time.perf_counter() - started:.1f} s in all"
    )
    print(render(rows, header))
    return 0 if all(r.ok is not False for r in rows) else 1


def only_plan(runs: int, keep: bool) -> int:
    """The plan rows alone (``--only plan``): 100k rules in wall time, CPU time and peak
    RSS, and 1M rules in CPU time."""
    root = Path(tempfile.mkdtemp(prefix="coins-sync-bench-plan-"))
    started = time.perf_counter()
    this = sys.modules[__name__]
    try:
        env = child_env(root)
        plan = measure_plan(root, env, runs)
        plan_1m = plan_cpu.measure_large(this, root, env, runs)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        if keep:
            print(f"bench: inputs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = plan_rows(plan) + plan_cpu.rows(this, plan) + plan_cpu.rows(this, plan_1m)
    header = (
        f"coins-sync bench --only plan: {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, {time.perf_counter() - started:.0f} s in all"
    )
    print(render(rows, header))
    return 0 if all(r.ok is not False for r in rows) else 1


def only_apply(runs: int) -> int:
    """The apply efficiency alone (``--only apply``), ``runs`` times: each figure and the
    median, so that a change can be measured against another on a noisy machine."""
    root = Path(tempfile.mkdtemp(prefix="coins-sync-bench-apply-"))
    started = time.perf_counter()
    ideal = APPLY_CREATES * APPLY_LATENCY_MS / 1000 / APPLY_PARALLELISM
    efficiencies: list[float] = []
    try:
        env = child_env(root)
        timed_apply(root, env, "warm-up", 16, 0, APPLY_PARALLELISM)  # fills the bytecode cache
        for n in range(runs):
            apply_run, _ = timed_apply(
                root, env, f"apply-{n}", APPLY_CREATES, APPLY_LATENCY_MS, APPLY_PARALLELISM
            )
            efficiencies.append(ideal / apply_run.seconds)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = statistics.median(efficiencies)
    rows = [
        Row(
            f"apply {APPLY_CREATES} creates, {APPLY_LATENCY_MS} ms, -p {APPLY_PARALLELISM}",
            ", ".join(f"{e:.0%}" for e in efficiencies),
            f"ideal {ideal:.2f} s",
        ),
        Row(
            f"apply: ideal / actual (median of {runs})",
            f"{median:.0%}",
            f">= {TARGET_APPLY_EFFICIENCY:.0%}",
            median >= TARGET_APPLY_EFFICIENCY,
        ),
    ]
    header = (
        f"coins-sync bench --only apply ({BACKEND}): {os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, {time.perf_counter() - started:.0f} s in all"
    )
    print(render(rows, header))
    return 0 if all(r.ok is not False for r in rows) else 1


def on_postgres(argv: Sequence[str]) -> int:
    """The same figures with the state in a throw-away local PostgreSQL cluster."""
    global BACKEND
    sys.path.insert(0, str(REPO))
    from tests.pg_fixture import find_bin, start_cluster

    if find_bin() is None:
        print("bench: the PostgreSQL server binaries are not installed", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="coins-sync-bench-pg-"))
    cluster = start_cluster(root)
    previous = os.environ.get("COINS_SYNC_PG_DSN")
    try:
        BACKEND = "postgres"
        print("== state backend: postgres (local cluster, unix socket, fsync off)")
        rest = [a for a in argv if a not in ("--backend", "postgres")]
        os.environ["COINS_SYNC_PG_DSN"] = cluster.dsn()
        return main([*rest, "--backend", "file"])
    finally:
        BACKEND = "file"
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        if previous is not None:
            os.environ["COINS_SYNC_PG_DSN"] = previous


if __name__ == "__main__":
    sys.exit(main())
