"""The shipped workflows' Plan step never pastes a failed plan's stderr into the PR
comment: a file name with a newline and backticks there could close a fence and turn
live. When plan fails with nothing on stdout, the comment says where to look (the job's
log) and quotes nothing. The step's own script runs here with a stand-in coins-sync."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from tests.conftest import REPO

WORKFLOWS = sorted(
    [*(REPO / ".github/workflows").glob("*.yml"), *(REPO / "docs/workflows").glob("*.yml")]
)
HOSTILE_ERR = (
    "configs/a\n```\n@someone <img src=x> [a](http://e.com) ``````` *em*\n````.yaml:1:1: bad\n"
    "Error: 1 problem"  # no final newline
)


def plan_step(path: Path) -> str:
    workflow = yaml.safe_load(path.read_text("utf-8"))
    steps = [s for job in workflow["jobs"].values() for s in job.get("steps", [])]
    return next(s["run"] for s in steps if s.get("id") == "plan")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_failed_plan_stderr_never_reaches_the_comment(path: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "err.txt").write_text(HOSTILE_ERR, "utf-8")
    fake = bin_dir / "coins-sync"
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'err.txt'} >&2\nexit 1\n", "utf-8")
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_OUTPUT": str(tmp_path / "output.txt"),
    }
    subprocess.run(
        ["bash", "-e", "-c", plan_step(path)], cwd=tmp_path, env=env, check=True, timeout=30
    )
    assert (tmp_path / "output.txt").read_text("utf-8") == "exitcode=1\n"
    shown = (tmp_path / "plan.md").read_text("utf-8")
    assert "coins-sync plan failed" in shown
    for hostile in ("@someone", "<img", "http://e.com", "```", "configs/a"):
        assert hostile not in shown
    html = MarkdownIt("gfm-like").render(shown)
    assert "<img" not in html and "<a " not in html
