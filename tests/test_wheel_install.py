"""The built wheel, installed into a clean venv outside the repository, starts a rules
repository and applies it to the sandbox: init, validate, plan, apply.

A clean install means: the wheel built from this tree (`pip wheel`), its dependencies
from the package index (pip's cache makes a repeat faster), a venv without system site
packages, run from a folder outside the repository with no PYTHONPATH, so nothing can be
read from the source tree (the schemas included). It takes a minute or two, mostly pip,
so `make wheel-check` runs it (and `.ci/run` runs that); `make test` skips it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    not os.environ.get("WHEEL_CHECK"),
    reason="a pip install from the index (1-2 minutes): `make wheel-check` runs it",
)


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed() -> Iterator[tuple[Path, dict[str, str]]]:
    """A venv outside the repository with the wheel of this tree installed."""
    outside = Path(tempfile.mkdtemp(prefix="coins-sync-wheel-"))
    assert not outside.resolve().is_relative_to(REPO)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINS_SYNC_", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        dist = outside / "dist"
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
            outside,
            env,
        )
        (wheel,) = dist.glob("coins_sync-*.whl")
        venv = outside / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], outside, env)
        _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)], outside, env)
        yield venv, env
    finally:
        import shutil

        shutil.rmtree(outside, ignore_errors=True)


def test_the_installed_wheel_inits_validates_plans_and_applies(
    installed: tuple[Path, dict[str, str]],
) -> None:
    venv, env = installed
    project = Path(tempfile.mkdtemp(prefix="coins-sync-rules-"))
    cs = str(venv / "bin/coins-sync")
    where = _run(
        [str(venv / "bin/python"), "-c", "import coins_sync; print(coins_sync.__file__)"],
        project,
        env,
    )
    assert str(venv) in where and str(REPO) not in where  # not the source tree
    env = {**env, "COINS_SYNC_TOKEN": "wheel-check-token"}
    assert "Wrote pyproject.toml (new)" in _run([cs, "init"], project, env)
    schema = project / "schemas/rules.schema.json"
    assert schema.read_bytes() == (REPO / "schemas/rules.schema.json").read_bytes()
    assert "valid: 1 rule in 1 file" in _run([cs, "validate"], project, env)
    assert _run([cs, "schema", "plan"], project, env).startswith("{")

    sandbox = subprocess.Popen(
        [cs, "sandbox", "--port", "0"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert sandbox.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = sandbox.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on (http://\S+)", line)
            url = match[1] if match else None
        assert url, "the installed sandbox did not start"
        plan = _run([cs, "plan", "--api-url", url], project, env)
        assert "+ EXAMPLECO/DEFAULT/MEAL_CARD_PAYMENT" in plan
        applied = _run([cs, "apply", "--yes", "--api-url", url], project, env)
        assert "Apply: 1 created, 0 updated, 0 failed, 0 uncertain." in applied
        again = _run([cs, "plan", "--api-url", url, "--detailed-exitcode"], project, env)
        assert "(no changes)" in again
    finally:
        sandbox.terminate()
        sandbox.wait(10)
        if sandbox.stdout is not None:
            sandbox.stdout.close()
        import shutil

        shutil.rmtree(project, ignore_errors=True)
