"""Issue 23 items 3-6: subsets, progress without a terminal, per-environment rule sets,
and the flags Terraform and octoDNS users type without thinking."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import yaml

from coins_sync.sandbox import SandboxServer
from tests.conftest import REPO, SANDBOX_TOKEN, Invoke, write

TOKEN = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}


def rules(project: Path, company: str, *events: tuple[str, int]) -> None:
    body = "".join(f"  - event: {event}\n    amount: {amount}\n" for event, amount in events)
    write(project / "configs" / f"{company.lower()}.yaml", f"companyId: {company}\nrules:\n{body}")


def three_companies(project: Path) -> None:
    rules(project, "CEKEKCARDS", ("MEAL_CARD_PAYMENT", 6), ("INVOICE_PAYMENT", 10))
    rules(project, "GLOBEX", ("MEAL_CARD_PAYMENT", 3), ("MEAL_VOUCHER", 4), ("FUEL", 2))
    rules(project, "ACME", ("GIFT", 1))


def keys_sent(server: SandboxServer) -> set[str]:
    return {f"{c['companyId']}/{c['configuration']}/{c['event']}" for c in server.configs()}


# -- 4. subsets ------------------------------------------------------------------------


def test_only_plans_and_applies_a_company_and_a_key_glob(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    three_companies(project)
    only = ("--only", "CEKEKCARDS", "--only", "GLOBEX/*/MEAL_*")
    plan = invoke("plan", *only, "--format", "json")
    assert plan.exit_code == 0, plan.output
    data = json.loads(plan.stdout)
    assert data["only"] == ["CEKEKCARDS", "GLOBEX/*/MEAL_*"]
    assert data["summary"]["create"] == 4
    text = invoke("plan", *only).output
    assert "Plan (partial: --only): 4 to create" in text
    assert "Partial plan: only CEKEKCARDS, GLOBEX/*/MEAL_*" in text
    assert "ACME" not in text and "FUEL" not in text

    applied = invoke("apply", "--api-url", sandbox.url, "--yes", *only, env=TOKEN)
    assert applied.exit_code == 0, applied.output
    assert keys_sent(sandbox) == {
        "CEKEKCARDS/DEFAULT/MEAL_CARD_PAYMENT",
        "CEKEKCARDS/DEFAULT/INVOICE_PAYMENT",
        "GLOBEX/DEFAULT/MEAL_CARD_PAYMENT",
        "GLOBEX/DEFAULT/MEAL_VOUCHER",
    }
    # the whole plan still has the rest to create
    assert "2 to create" in invoke("plan").output


def test_outside_the_subset_no_orphan_and_no_update(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    three_companies(project)
    assert invoke("apply", "--api-url", sandbox.url, "--yes", env=TOKEN).exit_code == 0
    # GLOBEX's FUEL is removed (an orphan) and ACME's amount changes (an update)
    rules(project, "GLOBEX", ("MEAL_CARD_PAYMENT", 3), ("MEAL_VOUCHER", 4))
    rules(project, "ACME", ("GIFT", 9))
    rules(project, "CEKEKCARDS", ("MEAL_CARD_PAYMENT", 7), ("INVOICE_PAYMENT", 10))
    whole = invoke("plan").output
    assert "1 orphaned" in whole and "2 to update" in whole
    partial = invoke("plan", "--only", "CEKEKCARDS")
    assert "0 orphaned" in partial.output and "1 to update" in partial.output
    assert "ACME" not in partial.output and "FUEL" not in partial.output
    applied = invoke("apply", "--api-url", sandbox.url, "--yes", "--only", "CEKEKCARDS", env=TOKEN)
    assert applied.exit_code == 0, applied.output
    amounts = {f"{c['companyId']}/{c['event']}": c["amount"] for c in sandbox.configs()}
    assert amounts["CEKEKCARDS/MEAL_CARD_PAYMENT"] == 7
    assert amounts["ACME/GIFT"] == 1  # outside the subset: left alone


def test_a_saved_partial_plan_records_and_keeps_its_subset(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    three_companies(project)
    saved = invoke("plan", "--only", "ACME", "--out", "plan.json")
    assert saved.exit_code == 0, saved.output
    data = json.loads((project / "plan.json").read_text())
    assert data["only"] == ["ACME"]
    schema = json.loads((REPO / "schemas" / "plan.schema.json").read_text())
    jsonschema.validate(data, schema)

    # widening the subset by hand is refused: the fresh plan of the whole set differs
    data["only"] = []
    write(project / "edited.json", json.dumps(data))
    edited = invoke("apply", "edited.json", "--api-url", sandbox.url, env=TOKEN)
    assert edited.exit_code == 1
    assert "edited by hand" in edited.output
    assert sandbox.configs() == []

    applied = invoke("apply", "plan.json", "--api-url", sandbox.url, env=TOKEN)
    assert applied.exit_code == 0, applied.output  # no --yes: the saved plan was the review
    assert keys_sent(sandbox) == {"ACME/DEFAULT/GIFT"}
    both = invoke("apply", "plan.json", "--only", "ACME", "--api-url", sandbox.url, env=TOKEN)
    assert both.exit_code == 1 and "--only cannot be combined with PLANFILE" in both.output


def test_only_refuses_a_pattern_that_matches_nothing_or_is_malformed(
    project: Path, invoke: Invoke
) -> None:
    three_companies(project)
    typo = invoke("plan", "--only", "CEKEKCARD")
    assert typo.exit_code == 1
    assert "--only 'CEKEKCARD' matches no rule" in typo.output
    bad = invoke("plan", "--only", "A/B")
    assert bad.exit_code == 1 and "COMPANY/CONFIGURATION/EVENT" in bad.output


# -- 3. progress without a terminal --------------------------------------------------


def test_apply_without_a_terminal_prints_progress_lines(
    project: Path, invoke: Invoke, servers: Callable[..., SandboxServer]
) -> None:
    # one at a time, 30 ms each: the run lasts more than one 0.2 s progress tick
    slow = servers(latency_ms=30)
    rules(project, "ACME", *((f"EVENT_{i:02}", i) for i in range(40)))
    result = invoke("apply", "--api-url", slow.url, "--yes", "--parallelism", "1", env=TOKEN)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("applied ")]
    assert len(lines) >= 2
    counts = [int(line.split()[1].split("/")[0]) for line in lines]
    assert counts == sorted(set(counts))  # each line reports progress
    assert all(b - a >= 4 for a, b in itertools.pairwise(counts[:-1]))  # 10% apart
    assert lines[-1] == "applied 40/40 (0 failed)"
    assert "applied" not in result.stdout


def test_refresh_and_state_import_print_progress_lines(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(project, "ACME", *((f"EVENT_{i:02}", i) for i in range(20)))
    assert invoke("apply", "--api-url", sandbox.url, "--yes", env=TOKEN).exit_code == 0
    refreshed = invoke("plan", "--refresh", "--api-url", sandbox.url, env=TOKEN)
    assert refreshed.exit_code == 0, refreshed.output
    assert "read 20/20 (0 failed)" in refreshed.stderr
    applied = invoke("apply", "--refresh", "--yes", "--api-url", sandbox.url, env=TOKEN)
    assert applied.exit_code == 0, applied.output
    assert "read 20/20 (0 failed)" in applied.stderr  # apply --refresh's reads too
    rows = ["companyId,configuration,event,coinConfigId"] + [
        f"{c['companyId']},{c['configuration']},{c['event']},{c['coinConfigId']}"
        for c in sandbox.configs()
    ]
    write(project / "existing.csv", "\n".join(rows) + "\n")
    imported = invoke(
        "state", "import", "--from", "existing.csv", "--api-url", sandbox.url,
        "--state", "state/other.json", env=TOKEN,
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output
    assert "checked 20/20 (0 failed)" in imported.stderr


def test_plain_progress_every_tenth_or_thirty_seconds() -> None:
    from coins_sync.console import Progress

    now = [0.0]
    printed: list[str] = []
    progress = Progress(enabled=False, plain=True, clock=lambda: now[0])
    import coins_sync.console as console

    original = console.err
    console.err = lambda text, nl=True: printed.append(text)  # type: ignore[assignment]
    try:
        for done in range(1, 101):
            progress(done, 400, failed=1)
        assert printed == [f"applied {n}/400 (1 failed)" for n in (40, 80)]
        now[0] = 31.0  # no 10% step, but 30 s have passed
        progress(101, 400, failed=1)
        assert printed[-1] == "applied 101/400 (1 failed)"
        small = Progress(enabled=False, plain=True, clock=lambda: now[0])
        printed.clear()
        for done in range(1, 4):
            small(done, 3)
        assert printed == []  # a run of 3 is over in seconds
    finally:
        console.err = original  # type: ignore[assignment]


# -- 5. per-environment rule sets ----------------------------------------------------

PER_ENV = """\
[tool.coins-sync]
configs = "rules/common"
default_environment = "staging"

[tool.coins-sync.environments.staging]
configs = "rules/staging"

[tool.coins-sync.environments.prod]
configs = "rules/prod"

[tool.coins-sync.environments.dev]
"""


def test_configs_is_set_per_environment(project: Path, invoke: Invoke) -> None:
    write(project / "pyproject.toml", PER_ENV)
    write(project / "rules/staging/a.yaml", "companyId: A\nrules:\n  - event: E\n    amount: 1\n")
    write(
        project / "rules/prod/a.yaml",
        "companyId: A\nrules:\n  - event: E\n    amount: 1\n  - event: F\n    amount: 2\n",
    )
    write(project / "rules/common/a.yaml", "companyId: C\nrules: []\n")
    assert invoke("validate").output == "valid: 1 rule in 1 file\n"
    assert invoke("validate", "--env", "prod").output == "valid: 2 rules in 1 file\n"
    assert invoke("validate", env={"COINS_SYNC_ENV": "prod"}).output.startswith("valid: 2 rules")
    assert invoke("validate", "--env", "dev").output == "valid: 0 rules in 1 file\n"
    assert "2 to create" in invoke("plan", "--env", "prod").output
    assert "1 to create" in invoke("plan").output


def test_the_pre_commit_hook_runs_for_a_configured_folder() -> None:
    import re

    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    pattern = re.compile(hook["files"])
    for changed in ("rules/acme.yaml", "configs/a.yml", "pyproject.toml", "x/y/rules.yaml"):
        assert pattern.search(changed), changed
    assert not pattern.search("README.md")
    assert hook["pass_filenames"] is False  # validate reads the configured folder itself


def test_the_hook_command_validates_every_environment_folder(project: Path, invoke: Invoke) -> None:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    args = hook["entry"].split()[1:]
    write(project / "pyproject.toml", PER_ENV)
    write(project / "rules/staging/a.yaml", "companyId: A\nrules:\n  - event: E\n    amount: 1\n")
    write(project / "rules/prod/a.yaml", "companyId: A\nrules:\n  - event: E\n    amount: 1.5\n")
    write(project / "rules/common/a.yaml", "companyId: C\nrules: []\n")
    result = invoke(*args)
    assert result.exit_code == 1
    assert "rules/prod/a.yaml:4:13" in result.output  # not the default environment's folder
    write(project / "rules/prod/a.yaml", "companyId: A\nrules:\n  - event: E\n    amount: 2\n")
    assert invoke(*args).output == "valid: 2 rules in 3 files\n"


# -- 6. familiar flags ---------------------------------------------------------------


@pytest.mark.parametrize(("given", "seconds"), [("10s", 10.0), ("2m", 120.0), ("7", 7.0)])
def test_lock_timeout_takes_durations(
    project: Path, invoke: Invoke, given: str, seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coins_sync.state.file import FileStateStore

    waited: list[float] = []
    real = FileStateStore.lock

    def lock(self: FileStateStore, command: str, timeout: float = 0.0):  # type: ignore[no-untyped-def]
        waited.append(timeout)
        return real(self, command, timeout)

    monkeypatch.setattr(FileStateStore, "lock", lock)
    rules(project, "ACME", ("GIFT", 1))
    result = invoke("state", "rm", "ACME/DEFAULT/GIFT", "--yes", "--lock-timeout", given)
    assert "is not in" in result.output  # it got as far as the lock
    assert waited == [seconds]


def test_lock_timeout_refuses_nonsense(project: Path, invoke: Invoke) -> None:
    result = invoke("state", "rm", "A/B/C", "--yes", "--lock-timeout", "soon")
    assert result.exit_code == 1
    assert "'soon' is not a duration such as 30, 10s, 2m or 1h" in result.output


def test_no_color_and_term_dumb_turn_colour_off(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from coins_sync.cli import cli

    rules(project, "ACME", ("GIFT", 1))
    monkeypatch.setattr("coins_sync.console.on_terminal", lambda: True)
    monkeypatch.delenv("TERM", raising=False)

    def plan(*args: str) -> str:
        return CliRunner().invoke(cli, list(args), color=True).stdout

    assert "\x1b[" in plan("plan")  # a terminal gets colour
    assert "\x1b[" not in plan("--no-color", "plan")
    assert "\x1b[" not in plan("plan", "--no-color")  # after the command too
    assert "\x1b[" in plan("plan")  # one run's flag does not stick
    monkeypatch.setenv("TERM", "dumb")
    assert "\x1b[" not in plan("plan")


def test_apply_format_json_prints_one_report_that_fits_its_schema(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    rules(project, "ACME", ("GIFT", 1), ("MEAL", 2))
    result = invoke("apply", "--api-url", sandbox.url, "--yes", "--format", "json", env=TOKEN)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    schema = json.loads((REPO / "schemas" / "apply-report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert report["ok"] is True
    assert report["summary"]["created"] == 2
    assert {k["event"] for k in report["created"]} == {"GIFT", "MEAL"}
    assert "+ ACME/DEFAULT/GIFT" in result.stderr  # the plan, for the person in the log
    again = invoke("apply", "--api-url", sandbox.url, "--yes", "--format", "json", env=TOKEN)
    nothing = json.loads(again.stdout)
    jsonschema.validate(nothing, schema)
    assert nothing["summary"]["created"] == 0 and nothing["ok"] is True


def test_validate_honours_verbose(project: Path, invoke: Invoke) -> None:
    rules(project, "ACME", ("GIFT", 1))
    quiet = invoke("validate")
    loud = invoke("validate", "-v")
    assert "project root" not in quiet.output
    assert "INFO: project root:" in loud.stderr
    assert loud.stdout == quiet.stdout


def _run_in_a_terminal(
    args: list[str], cwd: Path, env: dict[str, str], answer: bytes
) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal; at the [y/N] prompt type ``answer`` (b"\\x03"
    is Ctrl-C, which the terminal turns into SIGINT). Bounded: 60 s in all."""
    import fcntl
    import os
    import pty
    import select
    import subprocess
    import sys
    import termios
    import time

    main, child = pty.openpty()

    def own_terminal() -> None:
        # a new session whose controlling terminal is the pty: Ctrl-C typed there is
        # turned into SIGINT by the line discipline, as from a keyboard
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [sys.executable, "-m", "coins_sync", *args],
        cwd=cwd, env=env, stdin=child, stdout=child, stderr=child, preexec_fn=own_terminal,
    )  # fmt: skip
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    answered = 0.0  # when the answer was last typed
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            if b"[y/N]" in seen and (
                not answered
                # Ctrl-C typed while the prompt is printed but not yet read can be lost
                # under load; a person presses it again, and so does this (once a second)
                or (answer == b"\x03" and time.monotonic() - answered > 1.0)
            ):
                os.write(main, answer)
                answered = time.monotonic()
            if process.poll() is not None and not ready:
                break
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)
    return code, seen.decode("utf-8", "replace")


def test_ctrl_c_at_the_prompt_exits_130_and_sends_nothing(
    project: Path, sandbox: SandboxServer
) -> None:
    import os

    rules(project, "ACME", ("GIFT", 1))
    env = {**os.environ, **TOKEN, "PYTHONPATH": str(REPO)}
    code, seen = _run_in_a_terminal(
        ["apply", "--api-url", sandbox.url], project, env, answer=b"\x03"
    )
    assert "Apply these changes? [y/N]" in seen
    assert code == 130, seen
    assert "Traceback" not in seen
    assert sandbox.configs() == []
    code, seen = _run_in_a_terminal(
        ["apply", "--api-url", sandbox.url], project, env, answer=b"n\r"
    )
    assert code == 1, seen  # a plain "no" is still exit 1


# -- 2. plan comments that never go stale --------------------------------------------


def test_plan_markdown_on_invalid_configs_prints_inert_problems_and_exits_1(
    project: Path, invoke: Invoke
) -> None:
    from markdown_it import MarkdownIt

    write(
        project / "configs/acme.yaml",
        "companyId: ACME\nrules:\n  - event: '@org/team <b>x</b> | y'\n    amount: 6.0\n",
    )
    result = invoke("plan", "--format", "markdown")
    assert result.exit_code == 1
    body = result.stdout
    assert body.startswith("### coins-sync plan for `default`: the configs are invalid")
    assert "| file | line | col | problem |" in body
    assert "`configs/acme.yaml` | 4 |" in body
    html = MarkdownIt("gfm-like").render(body)
    assert "<b>" not in html  # shown as text, inside code spans
    assert "configs/acme.yaml:4:" in result.stderr  # the log keeps the usual lines
    text = invoke("plan")  # other formats are unchanged: nothing on stdout
    assert text.exit_code == 1 and text.stdout == ""


def test_plan_markdown_names_any_other_failure(project: Path, invoke: Invoke) -> None:
    from coins_sync.configs.model import RuleKey
    from coins_sync.state.model import State, StateEntry, serialize

    key = RuleKey("ACME", "DEFAULT", "GIFT")
    write(
        project / "state/default.json", serialize(State("l", 1, {key: StateEntry(key, 1, "WCC1")}))
    )
    write(
        project / "configs/acme.yaml",
        "companyId: ACME\nrules:\n  - event: GIFT\n    amount: 1\n    coinConfigId: WCC2\n",
    )
    result = invoke("plan", "--format", "markdown")
    assert result.exit_code == 1
    assert result.stdout.startswith("### coins-sync plan for `default` failed")
    assert "WCC2" in result.stdout and "```" not in result.stdout
