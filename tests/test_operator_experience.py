"""Operator experience: commands behave the same from any folder of the project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from coins_sync.sandbox import SandboxServer
from tests.conftest import SAMPLE_RULES, SANDBOX_TOKEN, write

PYPROJECT = """\
[tool.coins-sync]
configs = "configs"
default_environment = "team"

[tool.coins-sync.environments.team]
api_url = "{url}"
state = "state/team.json"
"""


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")}
    env["COINS_SYNC_TOKEN"] = SANDBOX_TOKEN
    return subprocess.run(
        [sys.executable, "-m", "coins_sync", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def keys_on(server: SandboxServer) -> list[tuple[str, str, str]]:
    return sorted((c["companyId"], c["configuration"], c["event"]) for c in server.configs())


def test_apply_from_a_subfolder_uses_the_root_settings_and_creates_nothing_twice(
    project: Path, sandbox: SandboxServer
) -> None:
    write(project / "pyproject.toml", PYPROJECT.format(url=sandbox.url))
    write(project / "configs" / "cekekcards.yaml", SAMPLE_RULES)
    first = run_cli(project, "apply", "--yes")
    assert first.returncode == 0, first.stderr
    assert len(sandbox.configs()) == 2

    again = run_cli(project / "configs", "apply", "--yes", "--configs", ".")
    assert again.returncode == 0, again.stderr
    assert "Nothing to apply" in again.stdout
    assert len(sandbox.configs()) == 2  # the same state was found from the subfolder
    assert not (project / "configs" / "state").exists()


def test_verbose_names_the_project_root(project: Path, sandbox: SandboxServer) -> None:
    write(project / "pyproject.toml", PYPROJECT.format(url=sandbox.url))
    write(project / "configs" / "cekekcards.yaml", SAMPLE_RULES)
    done = run_cli(project / "configs", "-v", "plan")
    assert done.returncode == 0, done.stderr
    assert f"project root: {project.resolve()}" in done.stderr
    assert "2 to create" in done.stdout


def test_a_new_empty_state_beside_a_recorded_one_is_refused(
    project: Path, sandbox: SandboxServer
) -> None:
    # No settings at all: a .git folder marks the root, and the state is the default one.
    (project / ".git").mkdir()
    write(project / "configs" / "cekekcards.yaml", SAMPLE_RULES)
    first = run_cli(project, "apply", "--yes", "--api-url", sandbox.url)
    assert first.returncode == 0, first.stderr
    assert (project / "state" / "default.json").is_file()

    # From a subfolder, an explicit --state relative to it names a file that does not exist.
    sub = project / "configs"
    wrong = run_cli(
        sub, "apply", "--yes", "--api-url", sandbox.url, "--state", "state/default.json"
    )
    assert wrong.returncode == 1
    assert "already records rules under the same name" in wrong.stderr
    assert "state/default.json" in wrong.stderr and "Nothing was sent" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert len(sandbox.configs()) == 2 and keys_on(sandbox) == sorted(set(keys_on(sandbox)))
    assert not (sub / "state" / "default.json").exists()

    forced = run_cli(
        sub, "apply", "--yes", "--force", "--api-url", sandbox.url, "--state", "state/default.json"
    )
    assert forced.returncode == 0, forced.stderr  # deliberate: a second state, a second copy
    assert len(sandbox.configs()) == 4
