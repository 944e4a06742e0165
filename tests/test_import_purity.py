"""The import-pure core: `validate` and an offline `plan` load no network, crypto or lock code.

Each command runs in a fresh interpreter (through ``coins_sync.cli.main`` with
``sys.argv``, as the console script does), which then lists ``sys.modules``. That list
is the proof: a module-level import anywhere on the path of these commands shows up in
it, however deep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SAMPLE_RULES

#: Never needed to read YAML, check it and compare it with a state file.
HEAVY = ("httpx", "cryptography", "tenacity", "filelock", "psycopg")
#: coins-sync's own modules of the network, apply, lock and backend paths.
HEAVY_OWN = (
    "coins_sync.enkash",
    "coins_sync.crypto",
    "coins_sync.apply",
    "coins_sync.state.postgres",
    "coins_sync.gitlease",
    "coins_sync.sandbox",
)

RUN = """\
import gc, json, sys
out, args = sys.argv[1], sys.argv[2:]
sys.argv = ["coins-sync", *args]
from coins_sync.cli import main
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code
# a module whose namespace the collector no longer walks (gc.get_objects lists only the
# objects it walks; a module's namespace always holds some)
walked = {id(o) for o in gc.get_objects()}
frozen = [n for n, m in list(sys.modules.items()) if m is not None and id(vars(m)) not in walked]
with open(out, "w", encoding="utf-8") as handle:
    json.dump({"code": code, "modules": sorted(sys.modules), "frozen": frozen}, handle)
"""


def run_cli(cwd: Path, *args: str) -> dict[str, Any]:
    """Run ``coins-sync ARGS`` in a fresh interpreter, as the console script does; its exit
    code, its modules, the modules frozen out of the collector's walks, its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = cwd / ".modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(out), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.exists(), proc.stderr
    data: dict[str, Any] = json.loads(out.read_text("utf-8"))
    out.unlink()
    data["output"] = proc.stdout + proc.stderr
    return data


def loaded_modules(cwd: Path, *args: str) -> tuple[int, set[str], str]:
    """Run ``coins-sync ARGS`` in a fresh interpreter; its exit code, modules and output."""
    data = run_cli(cwd, *args)
    return data["code"], set(data["modules"]), data["output"]


def offenders(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A project holding the repository's example configs (and no state yet)."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ("validate",),
        ("validate", "--format", "json"),
        ("plan",),
        ("plan", "--format", "json"),
        ("plan", "--format", "markdown", "--detailed-exitcode"),
    ],
    ids=" ".join,
)
def test_validate_and_offline_plan_import_no_heavy_module(
    examples: Path, args: tuple[str, ...]
) -> None:
    code, modules, output = loaded_modules(examples, *args)
    assert code in (0, 2), output
    assert offenders(modules, HEAVY) == []
    assert offenders(modules, HEAVY_OWN) == []
    # The compiled checker decides validity; jsonschema only words errors.
    assert offenders(modules, ("jsonschema",)) == []


def test_offline_plan_over_an_existing_state_stays_pure(examples: Path) -> None:
    # A state written by an apply; reading it for a plan needs no lock.
    state = {
        "version": 1,
        "lineage": "00000000-0000-4000-8000-000000000000",
        "serial": 1,
        "entries": [],
    }
    (examples / "state").mkdir()
    (examples / "state" / "default.json").write_text(json.dumps(state), "utf-8")
    code, modules, output = loaded_modules(examples, "plan", "--detailed-exitcode")
    assert code == 2, output  # read, not ignored: the rules are all to create
    assert offenders(modules, HEAVY + HEAVY_OWN + ("jsonschema",)) == []


def test_an_invalid_file_is_worded_by_jsonschema(tmp_path: Path) -> None:
    # The control: the probe does see a lazily imported module once it is needed.
    (tmp_path / "configs").mkdir()
    bad = SAMPLE_RULES.replace(b"amount: 6", b"amount: six")
    (tmp_path / "configs" / "bad.yaml").write_bytes(bad)
    code, modules, output = loaded_modules(tmp_path, "validate")
    assert code == 1
    assert "amount: must be a whole number" in output
    assert "jsonschema" in modules
    assert offenders(modules, HEAVY) == []


def test_report_on_a_file_backend_loads_no_postgres_module(examples: Path) -> None:
    code, modules, output = loaded_modules(examples, "report")
    assert code == 0, output
    assert offenders(modules, ("coins_sync.state.postgres", "psycopg")) == []


#: What validate never needs: it reads settings and rule files, nothing of a state or plan.
VALIDATE_NEVER = (
    "coins_sync.workspace",
    "coins_sync.state",
    "coins_sync.plan",
    "coins_sync.report",
    "coins_sync.cli.plan",
    "coins_sync.cli.apply",
    "coins_sync.cli.state",
    "coins_sync.cli.git_lease",
    "coins_sync.cli.sandbox",
)


@pytest.mark.parametrize("args", [("validate",), ("validate", "--format", "json")], ids=" ".join)
def test_validate_loads_only_its_own_command(examples: Path, args: tuple[str, ...]) -> None:
    # The lazy group: a command's module is imported only when that command runs.
    code, modules, output = loaded_modules(examples, *args)
    assert code == 0, output
    assert "coins_sync.cli.validate" in modules  # the probe sees the command it ran
    assert offenders(modules, VALIDATE_NEVER) == []


def test_each_command_loads_only_its_own_module(examples: Path) -> None:
    code, modules, output = loaded_modules(examples, "state", "list")
    assert code == 0, output
    assert "coins_sync.cli.state" in modules
    others = ("coins_sync.cli.apply", "coins_sync.cli.git_lease", "coins_sync.cli.sandbox")
    assert offenders(modules, (*others, "coins_sync.cli.validate")) == []


def test_every_registered_command_loads_and_is_listed() -> None:
    from click.testing import CliRunner

    from coins_sync.cli import cli
    from coins_sync.cli.app import COMMANDS

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert f"\n  {name} " in listed, name
        sub = CliRunner().invoke(cli, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert f"Usage: cli {name}" in sub.output, sub.output


def test_an_unknown_command_is_a_usage_error(examples: Path) -> None:
    code, modules, output = loaded_modules(examples, "no-such-command")
    assert code == 1
    assert "No such command 'no-such-command'" in output
    assert offenders(modules, ("coins_sync.cli.apply", "coins_sync.cli.plan")) == []


def test_the_console_script_keeps_its_modules_out_of_the_collectors_walks(
    tmp_path: Path,
) -> None:
    # Start-up: click, the group and the command's modules live until the process ends,
    # so they are frozen (gc.freeze) and no collection walks them again, the one Python
    # makes before it exits included. A module first imported later is not: the control.
    (tmp_path / "configs").mkdir()
    bad = SAMPLE_RULES.replace(b"amount: 6", b"amount: six")
    (tmp_path / "configs" / "bad.yaml").write_bytes(bad)
    data = run_cli(tmp_path, "validate")
    assert data["code"] == 1, data["output"]
    frozen = set(data["frozen"])
    for name in ("click.core", "coins_sync.cli.app", "yaml", "coins_sync.cli.validate"):
        assert name in frozen, name
    assert "coins_sync.configs.loader" in frozen
    assert "jsonschema" in data["modules"]  # imported to word the problem, after start-up
    assert "jsonschema" not in frozen


def test_the_apply_path_imported_by_the_apply_command_is_frozen_too(tmp_path: Path) -> None:
    # apply imports the apply package, the API client and httpx only once it runs; in
    # the console script they live until the process ends, so they are frozen as well.
    (tmp_path / "configs").mkdir()
    data = run_cli(tmp_path, "apply", "--yes", "--api-url", "http://127.0.0.1:9")
    assert data["code"] == 1, data["output"]  # no credentials: refused before sending
    assert "COINS_SYNC_TOKEN" in data["output"]
    frozen = set(data["frozen"])
    for name in ("coins_sync.apply.run", "coins_sync.enkash.client", "httpx", "h11"):
        assert name in data["modules"], name
        assert name in frozen, name


def test_a_library_caller_keeps_every_module_in_the_collectors_walks() -> None:
    # Only the console script, which runs one command and ends, freezes anything.
    code = (
        "import gc\n"
        "from click.testing import CliRunner\n"
        "from coins_sync.cli import cli\n"
        "result = CliRunner().invoke(cli, ['validate', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(gc.get_freeze_count())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


#: How each of app.SILENT_COMMANDS is run here.
SILENT_RUNS = {
    "validate": [("validate",), ("validate", "--format", "json")],
    "init": [("init", "new")],
    "schema": [("schema", "plan")],
}


def test_every_silent_command_is_held_to_it() -> None:
    from coins_sync.cli.app import SILENT_COMMANDS

    assert set(SILENT_RUNS) == SILENT_COMMANDS


@pytest.mark.parametrize(
    "args", [args for runs in SILENT_RUNS.values() for args in runs], ids=" ".join
)
def test_commands_that_never_log_import_no_logging(examples: Path, args: tuple[str, ...]) -> None:
    # Without -v, console.setup_logging sets nothing up (nor imports logging) for a
    # silent command; so none of its modules may log, however late they are imported.
    code, modules, output = loaded_modules(examples, *args)
    assert code == 0, output
    assert "logging" not in modules


@pytest.mark.parametrize("args", [("sandbox", "--help"), ("git-lease", "--help")], ids=" ".join)
def test_other_commands_get_logging_set_up_before_they_run(
    examples: Path, args: tuple[str, ...]
) -> None:
    # Their modules import what logs only once they run; the scrubbing handler must be
    # in place by then, so it is set up whatever they imported so far.
    code, modules, output = loaded_modules(examples, *args)
    assert code == 0, output
    assert "logging" in modules


def test_a_refused_file_is_worded_without_logging(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    bad = SAMPLE_RULES.replace(b"amount: 6", b"amount: six")
    (tmp_path / "configs" / "bad.yaml").write_bytes(bad)
    code, modules, output = loaded_modules(tmp_path, "validate")
    assert code == 1 and "amount: must be a whole number" in output
    assert "logging" not in modules


def test_validate_logs_where_it_reads_with_v_and_vv(examples: Path) -> None:
    # A fresh interpreter, where nothing has imported logging before -v asks for it.
    code, modules, output = loaded_modules(examples, "validate", "-v")
    assert code == 0, output
    assert f"INFO: project root: {examples.resolve()}" in output
    assert "DEBUG:" not in output
    code, modules, output = loaded_modules(examples, "validate", "-vv")
    assert code == 0, output
    assert "INFO: project root:" in output
    assert "DEBUG: environment default: configs configs" in output
    assert "logging" in modules
