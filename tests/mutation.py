"""`make mutants`: mutation testing of the modules that hold coins-sync's guarantees.

Runs mutmut (configured in pyproject.toml, [tool.mutmut]) over apply, the saved plan
(plan.saved), state, the client's retry policy and the output scrubber; then prints every
surviving mutant, the survival rate per module, and the diff of each surviving mutant of
a guarantee that must never go untested (GUARDS below). Exits 1 when such a mutant
survives or when a guard matches no mutant (a function was renamed: update GUARDS).

Every mutant's diff is written to mutants/survivors.txt. Never part of `make test`: it
takes about 25 minutes on 2 cores.

    python tests/mutation.py [--max-children N]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MUTMUT = Path(sys.executable).with_name("mutmut")

#: Which mutants run: every function of apply, plan.saved and state (group commit
#: included) and of the create transport (enkash.fresh), and of the enkash client and
#: cli.py the functions of the retry policy and of secret scrubbing (all of
#: redact.py).
SELECTED = (
    "coins_sync.apply.*",
    "coins_sync.plan.saved.*",
    "coins_sync.state.*",
    "coins_sync.enkash.fresh.*",
    "coins_sync.enkash.retry.x_classify__mutmut_*",
    "coins_sync.enkash.retry.x_transport_failure__mutmut_*",
    "coins_sync.enkash.retry.*ǁretrying__mutmut_*",
    "coins_sync.enkash.client.*ǁ_call__mutmut_*",
    "coins_sync.enkash.retry.*ǁwait__mutmut_*",
    "coins_sync.enkash.retry.*ǁtoo_long_to_wait__mutmut_*",
    "coins_sync.enkash.wire.x_parse_retry_after__mutmut_*",
    "coins_sync.enkash.wire.*ǁscrub__mutmut_*",
    "coins_sync.redact.*",
    "coins_sync.console.*ScrubFilter*",
)


@dataclass(frozen=True)
class Guard:
    """Mutants that must all be killed: those named by ``names`` whose diff holds ``mark``."""

    what: str
    names: tuple[str, ...]
    mark: str = ""


#: The guarantees that issue 10 found could be replaced by a no-op unnoticed.
GUARDS = (
    Guard(
        "the output scrubber",
        (
            "coins_sync.redact.*ǁRedactorǁ__call____mutmut_*",
            "coins_sync.redact.x_redact__mutmut_*",
            "coins_sync.console.*ScrubFilter*",
            "coins_sync.enkash.wire.*ǁscrub__mutmut_*",
        ),
    ),
    Guard("the mid-run fold", ("coins_sync.apply.*ǁLedgerǁmaybe_fold__mutmut_*",)),
    Guard(
        "booking a confirmed create on failure",
        (
            "coins_sync.apply.*ǁLedgerǁ_result__mutmut_*",
            "coins_sync.state.*ǁFileJournalǁappend__mutmut_*",
        ),
    ),
    # issue 20: C3 (the check before journaling the next create's intent) and C5 (an
    # import sent without the send-time check)
    Guard(
        "the send-time check, also before an intent is journaled ahead",
        (
            "coins_sync.apply.*ǁSenderǁ_refusal__mutmut_*",
            "coins_sync.apply.*ǁSenderǁ_refused__mutmut_*",
            "coins_sync.apply.*ǁSenderǁ_then__mutmut_*",
        ),
    ),
    Guard(
        "the import's send-time check",
        ("coins_sync.apply.*ǁSenderǁ_import__mutmut_*",),
        "self._refused(",
    ),
    # issue 20: F5, F6, F7 (the fold of a journal replayed after a crash)
    Guard("the fold of a replayed journal", ("coins_sync.state.journal.x_fold__mutmut_*",)),
    Guard(
        "the saved plan's read-back check", ("coins_sync.plan.saved.x_check_read_back__mutmut_*",)
    ),
    # also S7 (issue 20): the serial, not only the lineage
    Guard("the saved plan's freshness check", ("coins_sync.plan.saved.x_check_fresh__mutmut_*",)),
    Guard(
        "the saved plan's consistency checks",
        ("coins_sync.plan.saved.x_check_consistent__mutmut_*",),
    ),
    Guard(
        "the 408 retry for GET and PATCH",
        ("coins_sync.enkash.retry.x_classify__mutmut_*",),
        "408",
    ),
)

KILLED = {"killed", "timeout", "caught by type check"}
SURVIVED = {"survived", "no tests"}


@dataclass
class Module:
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def checked(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in KILLED | SURVIVED)

    @property
    def survived(self) -> int:
        return sum(self.statuses[s] for s in SURVIVED)


def selected(name: str, patterns: tuple[str, ...] = SELECTED) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def function_of(name: str) -> str:
    return (
        re.sub(r"__mutmut_\d+$", "", name).replace("ǁ", ".").replace(".x.", ".").replace(".x_", ".")
    )


def message_only(diff: str) -> bool:
    """True when the mutant changes only the wording or case of a string."""
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and line[1:2] != "-"]
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and line[1:2] != "+"]
    if not removed or len(removed) != len(added):
        return False
    return all(
        a.replace("XX", "").lower() == r.lower() for r, a in zip(removed, added, strict=True)
    )


def run_mutmut(max_children: int, patterns: tuple[str, ...] = SELECTED) -> None:
    shutil.rmtree(REPO / "mutants", ignore_errors=True)
    (REPO / "mutants").mkdir()
    log = REPO / "mutants" / "run.log"
    command = [str(MUTMUT), "run", "--max-children", str(max_children), *patterns]
    print(f"mutmut: {len(patterns)} patterns, {max_children} workers; progress in {log}")
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    minutes = (time.monotonic() - started) / 60
    if done.returncode != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
        print("\n".join(tail))
        sys.exit(f"mutmut failed (exit {done.returncode}) after {minutes:.1f} min; see {log}")
    print(f"mutmut finished in {minutes:.1f} min")


def results() -> dict[str, tuple[Path, str]]:
    """Selected mutant name -> (source path, status)."""
    from mutmut.stats import status_by_exit_code

    found: dict[str, tuple[Path, str]] = {}
    mutants = REPO / "mutants"
    for meta in sorted((mutants / "coins_sync").rglob("*.py.meta")):  # sub-packages too
        source = meta.relative_to(mutants).with_name(meta.name.removesuffix(".meta"))
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            if selected(name):
                found[name] = (source, status_by_exit_code[code])
    return found


def report(found: dict[str, tuple[Path, str]]) -> int:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    modules: dict[str, Module] = defaultdict(Module)
    survivors: dict[str, list[tuple[int, str]]] = defaultdict(list)
    diffs: dict[str, str] = {}
    for name, (path, status) in sorted(found.items()):
        modules[str(path)].statuses[status] += 1
        if status not in KILLED:
            number = int(name.rpartition("__mutmut_")[2])
            mark = "" if status == "survived" else f" ({status})"
            survivors[function_of(name)].append((number, f"{number}{mark}"))
            diffs[name] = get_diff_for_mutant(name, path=path)

    print("\nSurviving mutants, by function: how many, then their numbers")
    for function, numbered in sorted(survivors.items()):
        numbers = ", ".join(text for _, text in sorted(numbered))
        print(f"  {function}: {len(numbered)}: {numbers}")
    with (REPO / "mutants" / "survivors.txt").open("w") as out:
        for name, diff in diffs.items():
            out.write(f"# {name}: {found[name][1]}\n{diff}\n\n")

    print(f"\n{'module':28} {'mutants':>8} {'killed':>7} {'survived':>9} {'rate':>6}")
    total = Module()
    for path, module in sorted(modules.items()):
        total.statuses.update(module.statuses)
        line(path, module)
    line("all", total)
    other = {s: n for s, n in total.statuses.items() if s not in KILLED | SURVIVED}
    if other:
        print(f"not counted: {other}")
    print("('survived' includes mutants that no test reaches; timeouts count as killed)")

    failed = 0
    print("\nGuarantees that must kill every mutant:")
    for guard in GUARDS:
        names = [n for n in found if selected(n, guard.names)]
        if guard.mark:
            names = [n for n in names if guard.mark in changed(n, found[n][0])]
        bad = [n for n in names if n in diffs and not message_only(diffs[n])]
        if not names:
            failed += 1
            print(f"  FAIL {guard.what}: no mutant matches {guard.names}; update GUARDS")
        elif bad:
            failed += 1
            print(f"  FAIL {guard.what}: {len(bad)} of {len(names)} mutants survive")
            for name in bad:
                print("\n".join("       " + row for row in diffs[name].splitlines()[2:]))
        else:
            print(f"  ok   {guard.what}: all {len(names)} mutants killed")
    print(f"\nDiffs of all {len(diffs)} surviving mutants: mutants/survivors.txt")
    return 1 if failed else 0


def changed(name: str, path: Path) -> str:
    """The lines a mutant removes and adds, without the diff's context."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    rows = get_diff_for_mutant(name, path=path).splitlines()[2:]
    return "\n".join(row for row in rows if row[:1] in "+-")


def line(path: str, module: Module) -> None:
    checked, survived = module.checked, module.survived
    rate = f"{100 * survived / checked:5.1f}%" if checked else "    -"
    print(f"{path:28} {checked:8} {checked - survived:7} {survived:9} {rate:>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="reuse the last run")
    parser.add_argument(
        "--guards-only",
        action="store_true",
        help="mutate only the functions of the listed guarantees (minutes, not half an hour)",
    )
    args = parser.parse_args()
    os.chdir(REPO)  # mutmut reads pyproject.toml and mutants/ from here
    if not args.report_only:
        guards = tuple(name for guard in GUARDS for name in guard.names)
        run_mutmut(args.max_children, guards if args.guards_only else SELECTED)
    return report(results())


if __name__ == "__main__":
    sys.exit(main())
