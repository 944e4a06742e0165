"""Chaos campaigns: prove, with figures, that apply neither duplicates nor loses a config.

    python tests/chaos.py            # full campaigns (`make chaos`), under 3 minutes
    python tests/chaos.py --quick    # reduced campaigns, under ~20 seconds

Each campaign starts an in-process sandbox on 127.0.0.1 and runs coins-sync against it.
An apply that is to be killed (``kill -9``) or interrupted (SIGINT) runs as a real
subprocess, ``python -m coins_sync apply --yes``; every other command runs in-process
through click's CliRunner, for speed. Between rounds, uncertain creates are resolved the
way an operator would: look the key up in the sandbox's ``GET /_sandbox/configs``
listing; exactly one config -> ``state import KEY ID``; none -> ``apply --retry-uncertain``.

Figures, per campaign:

* **duplicates**: server configs beyond the first for one key. Must be 0.
* **lost**: server configs that the state does not account for, neither recorded by
  ``coinConfigId`` nor marked uncertain (so the next apply would create them again).
  Checked after every round, every kill and every interrupt. Must be 0.
* **wrong records**: state entries whose id is missing on the server or holds another
  key. Must be 0.
* **secrets leaked**: the token or any other secret found in a CLI output or in any file
  under the project folder. Must be 0.

Exit status 1 when any campaign has a non-zero must-be-0 figure or did not converge.
The functions are also imported by ``tests/test_crash.py``, whose single-scenario crash
tests run in ``make test``; the campaigns run only here (``make chaos``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the package importable
    sys.path.insert(0, str(REPO))

from click.testing import CliRunner  # noqa: E402

from coins_sync.cli import cli  # noqa: E402
from coins_sync.configs.model import RuleKey  # noqa: E402
from coins_sync.sandbox import SandboxOptions, SandboxServer  # noqa: E402
from coins_sync.sandbox.messages import SandboxRequest, SandboxResponse  # noqa: E402
from coins_sync.state.file import FileStateStore  # noqa: E402
from coins_sync.state.model import State  # noqa: E402

TOKEN = "chaos-bearer-t0ken-never-printed"
SECRET_VARIABLES = ("COINS_SYNC_TOKEN", "COINS_SYNC_CLIENT_SECRET", "COINS_SYNC_PASSWORD")
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: (args, env) -> (exit code, combined output). None in env unsets a variable.
Runner = Callable[[Sequence[str], Mapping[str, str | None]], tuple[int, str]]


class CampaignError(AssertionError):
    """A campaign broke a promise in a way that makes going on meaningless."""


# --- rules ------------------------------------------------------------------------


def rule_key(index: int) -> RuleKey:
    return RuleKey(f"CO{index // 10:03d}", "DEFAULT", f"EVENT_{index % 10:02d}")


def write_rules(configs: Path, count: int, bump: int = 0) -> dict[RuleKey, int]:
    """Write ``count`` rules, ten per company file; ``bump`` changes every amount."""
    configs.mkdir(parents=True, exist_ok=True)
    for old in configs.glob("*.yaml"):
        old.unlink()
    desired: dict[RuleKey, int] = {}
    files: dict[str, list[str]] = {}
    for index in range(count):
        key = rule_key(index)
        amount = 1 + (index * 7 + bump * 13) % 500
        desired[key] = amount
        files.setdefault(key.company_id, []).append(
            f"  - event: {key.event}\n    amount: {amount}\n"
        )
    for company, rules in files.items():
        text = f"companyId: {company}\nrules:\n" + "".join(rules)
        (configs / f"{company.lower()}.yaml").write_text(text, encoding="utf-8")
    return desired


def write_lifecycle_rules(configs: Path, count: int, phase: int) -> dict[RuleKey, int]:
    """The rules of ``write_rules(count)`` after renames and retirements: every fifth
    rule moves (``movedFrom``; its event gets a suffix, or every other one its
    configuration becomes CUSTOM, and some amounts change), the next is retired, the
    next gets a new amount. Phase 2 moves the moved rules once more (a chain over two
    applies) and brings the retired ones back. Returns the target: key -> amount (0 for
    a retired rule)."""
    configs.mkdir(parents=True, exist_ok=True)
    for old in configs.glob("*.yaml"):
        old.unlink()
    desired: dict[RuleKey, int] = {}
    files: dict[str, list[str]] = {}
    for index in range(count):
        key = rule_key(index)
        amount = 1 + (index * 7) % 500
        text = ""
        if index % 5 == 0:
            custom = index % 10 == 5
            moved = RuleKey(key.company_id, "CUSTOM" if custom else "DEFAULT", key.event + "_R")
            if phase == 2:
                key, moved = moved, RuleKey(moved.company_id, moved.configuration, key.event + "_S")
            amount += 1 if index % 3 == 0 else 0
            text = f"    configuration: {moved.configuration}\n    movedFrom: {key}\n"
            key = moved
        elif index % 5 == 1 and phase == 1:
            desired[key] = 0
            files.setdefault(key.company_id, []).append(
                f"  - event: {key.event}\n    retired: true\n"
            )
            continue
        elif index % 5 == 2:
            amount += 1
        desired[key] = amount
        files.setdefault(key.company_id, []).append(
            f"  - event: {key.event}\n    amount: {amount}\n{text}"
        )
    for company, rules in files.items():
        text = f"companyId: {company}\nrules:\n" + "".join(rules)
        (configs / f"{company.lower()}.yaml").write_text(text, encoding="utf-8")
    return desired


def key_of(config: Mapping[str, Any]) -> RuleKey:
    return RuleKey(str(config["companyId"]), str(config["configuration"]), str(config["event"]))


# --- the server against the state ---------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """The server's configs held against what the state knows."""

    duplicates: int
    lost: int
    wrong: int
    uncertain: int


def audit(configs: Sequence[Mapping[str, Any]], state: State) -> Audit:
    per_key = Counter(key_of(config) for config in configs)
    duplicates = sum(count - 1 for count in per_key.values() if count > 1)
    recorded = {entry.coin_config_id for entry in state.entries.values()}
    lost = sum(
        1
        for config in configs
        if config["coinConfigId"] not in recorded and key_of(config) not in state.uncertain
    )
    on_server = {str(config["coinConfigId"]): key_of(config) for config in configs}
    # an entry marked pending (a PATCH whose outcome is unknown, a move among them) says
    # itself that the server may differ; the next plan reads it back, and a campaign
    # converges only once no mark is left
    wrong = sum(
        1
        for entry in state.entries.values()
        if entry.pending is None and on_server.get(entry.coin_config_id) != entry.key
    )
    return Audit(duplicates, lost, wrong, len(state.uncertain))


def settle(server: SandboxServer, quiet: float = 0.2, timeout: float = 15.0) -> None:
    """Wait until the sandbox has served every request that a dead client left behind.

    A killed client's create can still be stored after the kill: it may sit in the
    sandbox's latency sleep or in the listen backlog. An operator who looks for it too
    early concludes "not created" and re-sends it, a duplicate made by the operator, not
    by coins-sync. So wait for no open connection during ``quiet`` seconds.
    """
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        busy = server.open_connections > 0
        now = time.monotonic()
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= quiet:
            return
        time.sleep(0.01)
    raise CampaignError(f"the sandbox still had requests in flight after {timeout:g}s")


# --- a project folder, a sandbox and the CLI --------------------------------------


def in_process_runner(workdir: Path) -> Runner:
    """Run the CLI in this process, in ``workdir``, through click's CliRunner."""

    def run(args: Sequence[str], env: Mapping[str, str | None]) -> tuple[int, str]:
        with contextlib.chdir(workdir):
            result = CliRunner().invoke(cli, list(args), env=dict(env), catch_exceptions=False)
        return result.exit_code, result.output

    return run


@dataclass
class Figures:
    """What one campaign did and found."""

    name: str
    rules: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    kills_mid_flight: int = 0
    interrupts: int = 0
    interrupt_codes: list[int] = field(default_factory=list)
    expected_codes: list[int] = field(default_factory=list)  # 130 after SIGINT, 143 SIGTERM
    journals_left: int = 0
    rounds: int = 0
    imported: int = 0
    resent: int = 0
    duplicates: int = 0
    lost: int = 0
    wrong: int = 0
    leaks: int = 0
    mismatched: int = 0
    converged: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.converged
            and not self.duplicates
            and not self.lost
            and not self.wrong
            and not self.leaks
            and not self.mismatched
            and not self.journals_left
            and self.interrupt_codes == self.expected_codes
        )

    def report(self) -> str:
        f = self.faults
        lines = [
            f"== {self.name}: {self.rules} rules, {self.seconds:.1f}s",
            "   faults injected:    "
            f"fail_before {f.get('fail_before', 0)}, fail_after {f.get('fail_after', 0)}, "
            f"drop {f.get('drop', 0)}, 429 {f.get('429', 0)} "
            f"(server stored {f.get('creates', 0)} creates, {f.get('patches', 0)} patches)",
        ]
        if self.kills:
            lines.append(
                f"   kill -9:            {self.kills} ({self.kills_mid_flight} with a journal open)"
            )
        if self.interrupts:
            codes = ", ".join(str(code) for code in self.interrupt_codes)
            lines.append(
                f"   signals:            {self.interrupts} (exit codes {codes}; "
                f"journals left {self.journals_left})"
            )
        lines += [
            f"   apply rounds:       {self.rounds} to converge"
            + ("" if self.converged else " (DID NOT CONVERGE)"),
            f"   uncertain resolved: {self.imported + self.resent} "
            f"({self.imported} by state import, {self.resent} re-sent)",
            f"   duplicates:         {self.duplicates}",
            f"   records lost:       {self.lost}",
            f"   wrong records:      {self.wrong}",
            f"   off-target configs: {self.mismatched}",
            f"   secrets leaked:     {self.leaks}",
            f"   => {'OK' if self.ok else 'FAILED'}",
        ]
        return "\n".join(lines)


class Lab:
    """One project folder and one sandbox; runs coins-sync against them and checks."""

    def __init__(
        self,
        workdir: Path,
        server: SandboxServer,
        env: Mapping[str, str],
        runner: Runner | None = None,
    ) -> None:
        self.workdir = workdir
        self.server = server
        self.env: dict[str, str | None] = {name: None for name in _COINS_VARIABLES}
        self.env.update(env)
        self.secrets = [value for name, value in env.items() if name in SECRET_VARIABLES]
        self.runner = runner or in_process_runner(workdir)
        self.outputs: list[str] = []
        self.output_of: dict[int, str] = {}  # subprocess output by pid
        self.store = FileStateStore(workdir / "state" / "default.json")

    # running the CLI -------------------------------------------------------------

    def cli(self, *args: str) -> tuple[int, str]:
        """Run a command in-process, against the sandbox."""
        code, output = self.runner([*args, "--api-url", self.server.url], self.env)
        self.outputs.append(output)
        return code, output

    @contextlib.contextmanager
    def spawn(self, *args: str) -> Iterator[subprocess.Popen[bytes]]:
        """``python -m coins_sync ARGS`` in the project folder; killed and reaped on exit.

        Output goes to a temporary file, so a full pipe can never stall the child.
        """
        env = {k: v for k, v in os.environ.items() if k not in _COINS_VARIABLES}
        env.update({k: v for k, v in self.env.items() if v is not None})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "coins_sync", *args, "--api-url", self.server.url]
        # A child inherits an ignored SIGINT (e.g. under `nohup` or `cmd &`); restore it.
        inherited_ignore = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_sigint if inherited_ignore else None,
            )
            try:
                yield proc
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
                out.seek(0)
                output = out.read().decode("utf-8", "replace")
                self.outputs.append(output)
                self.output_of[proc.pid] = output

    # looking ---------------------------------------------------------------------

    def state(self) -> State:
        """The state as the next command would see it (journal folded in memory)."""
        return self.store.read()

    def check(self, figures: Figures) -> Audit:
        """Hold the server against the state; the worst figures so far are kept."""
        found = audit(self.server.configs(), self.state())
        figures.duplicates = max(figures.duplicates, found.duplicates)
        figures.lost = max(figures.lost, found.lost)
        figures.wrong = max(figures.wrong, found.wrong)
        return found

    def journal_bytes(self) -> bytes:
        try:
            return self.store.journal_path.read_bytes()
        except FileNotFoundError:
            return b""

    def wait_for_journal(
        self, proc: subprocess.Popen[bytes], timeout: float, old: bytes = b""
    ) -> bool:
        """Until ``proc`` has journaled its first intent (True) or exited (False).

        ``old`` is the journal a killed run left before ``proc`` started: ``proc``
        recovers (removes) it first and starts a new one with other records, so only a
        journal that does not begin with ``old`` is this run's.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.journal_bytes()
            if now and not (old and now.startswith(old)):
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.005)
        return False

    def leaks(self) -> int:
        """Secrets found in any output so far or any file under the project folder."""
        found = 0
        for secret in self.secrets:
            needle = secret.encode("utf-8")
            found += sum(secret in output for output in self.outputs)
            for path in self.workdir.rglob("*"):
                if path.is_file() and needle in path.read_bytes():
                    found += 1
        return found

    # resolving and converging ----------------------------------------------------

    def resolve_uncertain(self, figures: Figures) -> bool:
        """Resolve uncertain keys as an operator would; True when some must be re-sent."""
        settle(self.server)
        state = self.state()
        configs = self.server.configs()
        resend = False
        for key in sorted(state.uncertain):
            matches = [c for c in configs if key_of(c) == key]
            if len(matches) > 1:
                raise CampaignError(f"{key} has {len(matches)} configs on the server")
            if matches:
                code, output = self.cli("state", "import", str(key), matches[0]["coinConfigId"])
                if code != 0:
                    raise CampaignError(f"state import {key} failed:\n{output}")
                figures.imported += 1
            else:
                figures.resent += 1
                resend = True
        return resend

    def converge(
        self,
        figures: Figures,
        desired: Mapping[RuleKey, int],
        *,
        extra: Sequence[str] = (),
        max_rounds: int = 15,
        timeout: float = 90.0,
    ) -> None:
        """Apply, resolve and re-apply until the plan is empty; bounded in rounds and time."""
        deadline = time.monotonic() + timeout
        for _ in range(max_rounds):
            if time.monotonic() > deadline:
                break
            self.check(figures)
            resend = self.resolve_uncertain(figures)
            args = ["apply", "--yes", *extra]
            if resend:
                args.append("--retry-uncertain")
            self.cli(*args)
            figures.rounds += 1
            self.check(figures)
            code, _ = self.cli("plan", "--detailed-exitcode", *extra)
            # an update whose outcome was unknown may already match once read back; the
            # next apply records it, so the state is settled only when no mark is left
            settled = not any(e.pending is not None for e in self.state().entries.values())
            if code == 0 and settled:
                figures.converged = True
                break
        self.finish(figures, desired)

    def finish(self, figures: Figures, desired: Mapping[RuleKey, int]) -> None:
        """Final figures: every server config recorded by id and matching the rules."""
        configs = self.server.configs()
        state = self.state()
        found = self.check(figures)
        recorded = {entry.coin_config_id for entry in state.entries.values()}
        figures.lost = max(figures.lost, sum(c["coinConfigId"] not in recorded for c in configs))
        recorded_amounts = {key: entry.amount for key, entry in state.entries.items()}
        figures.mismatched = sum(
            1
            for config in configs
            if not desired.get(key_of(config))
            == recorded_amounts.get(key_of(config))
            == config["amount"]
        ) + abs(len(desired) - len(configs))
        if found.uncertain:
            figures.converged = False
        figures.faults = self.server.stats
        figures.leaks = self.leaks()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_COINS_VARIABLES = (
    "COINS_SYNC_TOKEN",
    "COINS_SYNC_CLIENT_ID",
    "COINS_SYNC_CLIENT_SECRET",
    "COINS_SYNC_USERNAME",
    "COINS_SYNC_PASSWORD",
    "COINS_SYNC_COOKIE",
    "COINS_SYNC_ENV",
)


@contextlib.contextmanager
def creates_held(server: SandboxServer, timeout: float = 20.0) -> Iterator[threading.Event]:
    """Hold every create at the sandbox until the yielded event is set (or ``timeout``).

    Stages a race without betting on latency: an apply stays mid-flight, its lock held,
    for as long as the test needs, however slowly a loaded machine starts the next one.
    """
    release = threading.Event()
    app = server.app
    original = app.handle

    def handle(request: SandboxRequest) -> SandboxResponse:
        if request.method.upper() == "POST" and request.target.endswith("/create-coins-config"):
            release.wait(timeout)
        return original(request)

    app.handle = handle  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()
        del app.handle  # the class's method again


@contextlib.contextmanager
def lab(workdir: Path, runner: Runner | None = None, **faults: Any) -> Iterator[Lab]:
    """A sandbox with ``faults`` (SandboxOptions fields) and a lab on ``workdir``."""
    (workdir / "configs").mkdir(parents=True, exist_ok=True)
    with SandboxServer(SandboxOptions(port=0, token=TOKEN, **faults)) as server:
        yield Lab(workdir, server, {"COINS_SYNC_TOKEN": TOKEN}, runner)


# --- campaigns ----------------------------------------------------------------------


def fault_campaign(
    workdir: Path, *, rules: int, seed: int, runner: Runner | None = None
) -> Figures:
    """Faults of every kind on creates, then on updates; converge after each phase."""
    figures = Figures(f"faults (seed {seed})", rules=rules)
    started = time.monotonic()
    options = {
        "latency_ms": 2,
        "fail_before_rate": 0.1,
        "fail_after_rate": 0.15,
        "rate_429": 0.15,
        "seed": seed,
    }
    with lab(workdir, runner, **options) as the_lab:
        desired = write_rules(workdir / "configs", rules)
        the_lab.converge(figures, desired)
        desired = write_rules(workdir / "configs", rules, bump=1)
        the_lab.converge(figures, desired, extra=["--force"])
    figures.seconds = time.monotonic() - started
    return figures


def kill_apply(
    the_lab: Lab,
    rng: random.Random,
    figures: Figures,
    extra: Sequence[str] = (),
    window: float = 0.5,
) -> Audit:
    """Start an apply and ``kill -9`` it at a random instant, mostly mid-flight (within
    ``window`` seconds of its first journaled intent), sometimes during start-up.

    Returns the audit taken right after the kill, before any recovery: the state file
    and the journal left behind must already account for every config on the server.
    """
    left = the_lab.journal_bytes()  # by the previous kill; the next apply recovers it
    with the_lab.spawn("apply", "--yes", "--parallelism", "4", *extra) as proc:
        sending = False
        if rng.random() < 0.2:  # early: start-up, planning or locking
            time.sleep(rng.uniform(0.0, 0.6))
        elif the_lab.wait_for_journal(proc, timeout=15, old=left):
            sending = True
            time.sleep(rng.uniform(0.0, window))
        figures.kills_mid_flight += sending and proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    figures.kills += 1
    settle(the_lab.server)
    return the_lab.check(figures)


def kill_campaign(
    workdir: Path, *, rules: int, kills: int, seed: int, runner: Runner | None = None
) -> Figures:
    """``kill -9`` of apply at random instants, during creates and then during updates."""
    figures = Figures(f"kill -9 (seed {seed})", rules=rules)
    started = time.monotonic()
    rng = random.Random(seed)
    options = {"latency_ms": 40, "fail_after_rate": 0.03, "rate_429": 0.03, "seed": seed}
    with lab(workdir, runner, **options) as the_lab:
        desired = write_rules(workdir / "configs", rules)
        for _ in range(kills):
            kill_apply(the_lab, rng, figures, ())
        the_lab.converge(figures, desired)
        desired = write_rules(workdir / "configs", rules, bump=1)
        for _ in range(max(1, kills // 2)):
            kill_apply(the_lab, rng, figures, ("--force",))
        the_lab.converge(figures, desired, extra=["--force"])
    figures.seconds = time.monotonic() - started
    return figures


def lifecycle_campaign(
    workdir: Path, *, rules: int, kills: int, seed: int, runner: Runner | None = None
) -> Figures:
    """Renames (``movedFrom``) and retirements mixed with updates, with ``kill -9`` of
    apply at random instants; then a second round of moves (a chain) and un-retirements.
    Every key must end at its target under its first id: no config created twice."""
    figures = Figures(f"lifecycle kill -9 (seed {seed})", rules=rules)
    started = time.monotonic()
    rng = random.Random(seed)
    options = {"latency_ms": 40, "fail_after_rate": 0.03, "rate_429": 0.03, "seed": seed}
    with lab(workdir, runner, **options) as the_lab:
        the_lab.converge(figures, write_rules(workdir / "configs", rules))
        for phase in (1, 2):
            desired = write_lifecycle_rules(workdir / "configs", rules, phase)
            for _ in range(max(1, kills // 2)):
                kill_apply(the_lab, rng, figures, ("--force",))
            the_lab.converge(figures, desired, extra=["--force"])
    figures.seconds = time.monotonic() - started
    return figures


def interrupt_apply(
    the_lab: Lab,
    rng: random.Random,
    figures: Figures,
    signals: Sequence[int] = (signal.SIGINT,),
) -> int:
    """Signal an apply mid-flight (SIGINT by default; several signals are sent a moment
    apart, as CI sends SIGINT then SIGTERM); returns its exit code. In-flight requests
    must finish, the state must be folded and the journal gone."""
    if the_lab.store.journal_path.exists():
        raise CampaignError("a journal was left behind by an earlier run")
    with the_lab.spawn("apply", "--yes", "--parallelism", "4") as proc:
        if not the_lab.wait_for_journal(proc, timeout=15):
            raise CampaignError("apply finished before it could be interrupted")
        time.sleep(rng.uniform(0.02, 0.3))
        for index, signum in enumerate(signals):
            if index:
                time.sleep(rng.uniform(0.0, 0.05))  # while the first is draining
            proc.send_signal(signum)
        code = proc.wait(timeout=30)
    figures.interrupts += 1
    figures.interrupt_codes.append(code)
    figures.expected_codes.append(
        EXIT_TERMINATED if signals[0] == signal.SIGTERM else EXIT_INTERRUPTED
    )
    figures.journals_left += the_lab.store.journal_path.exists()
    the_lab.check(figures)
    return code


def sigint_campaign(
    workdir: Path, *, rules: int, interrupts: int, seed: int, runner: Runner | None = None
) -> Figures:
    """Ctrl-C in the middle of an apply against a slow API, several times, then converge."""
    figures = Figures(f"SIGINT (seed {seed})", rules=rules)
    started = time.monotonic()
    rng = random.Random(seed)
    options = {"latency_ms": 150, "fail_after_rate": 0.03, "seed": seed}
    with lab(workdir, runner, **options) as the_lab:
        desired = write_rules(workdir / "configs", rules)
        for _ in range(interrupts):
            interrupt_apply(the_lab, rng, figures)
        the_lab.converge(figures, desired)
    figures.seconds = time.monotonic() - started
    return figures


def sigterm_campaign(
    workdir: Path, *, rules: int, interrupts: int, seed: int, runner: Runner | None = None
) -> Figures:
    """CI cancellation: SIGTERM alone, or SIGINT then SIGTERM while draining, in the middle
    of an apply against a slow API, several times, then converge. Exit 143 after a
    SIGTERM first, 130 after a SIGINT first; nothing lost, nothing duplicated."""
    figures = Figures(f"SIGTERM (seed {seed})", rules=rules)
    started = time.monotonic()
    rng = random.Random(seed)
    options = {"latency_ms": 150, "fail_after_rate": 0.03, "seed": seed}
    plans = [(signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)]
    with lab(workdir, runner, **options) as the_lab:
        desired = write_rules(workdir / "configs", rules)
        for index in range(interrupts):
            interrupt_apply(the_lab, rng, figures, plans[index % len(plans)])
        the_lab.converge(figures, desired)
    figures.seconds = time.monotonic() - started
    return figures


@dataclass(frozen=True)
class Scale:
    fault_rules: int
    kill_rules: int
    kills: int
    sigint_rules: int
    interrupts: int


FULL = Scale(fault_rules=1000, kill_rules=300, kills=24, sigint_rules=200, interrupts=5)
QUICK = Scale(fault_rules=60, kill_rules=60, kills=4, sigint_rules=30, interrupts=2)


def run_campaigns(root: Path, scale: Scale, seed: int) -> list[Figures]:
    return [
        fault_campaign(root / "faults", rules=scale.fault_rules, seed=seed),
        kill_campaign(root / "kill", rules=scale.kill_rules, kills=scale.kills, seed=seed),
        lifecycle_campaign(
            root / "lifecycle", rules=scale.kill_rules, kills=scale.kills, seed=seed
        ),
        sigint_campaign(
            root / "sigint", rules=scale.sigint_rules, interrupts=scale.interrupts, seed=seed
        ),
        sigterm_campaign(
            root / "sigterm", rules=scale.sigint_rules, interrupts=scale.interrupts, seed=seed
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="reduced campaigns (~20 s)")
    parser.add_argument("--seed", type=int, default=7, help="seed for faults and kill instants")
    options = parser.parse_args(argv)
    scale = QUICK if options.quick else FULL
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coins-sync-chaos-") as tmp:
        results = run_campaigns(Path(tmp), scale, options.seed)
    for figures in results:
        print(figures.report())
    ok = all(figures.ok for figures in results)
    total = time.monotonic() - started
    verdict = "all promises held" if ok else "PROMISES BROKEN"
    print(f"chaos: {len(results)} campaigns in {total:.1f}s: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
