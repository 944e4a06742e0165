"""What zizmor and actionlint check in .github/workflows, kept offline in the suite.

Every shipped workflow pins each action by a full commit SHA, says for every job which
permissions it needs, and keeps the checkout's token out of .git unless a step pushes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

ACTIVE = sorted((REPO / ".github/workflows").glob("*.y*ml"))
TEMPLATES = sorted((REPO / "docs/workflows").glob("*.y*ml"))
WORKFLOWS = ACTIVE + TEMPLATES
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def _steps(path: Path) -> list[tuple[str, dict[str, Any]]]:
    workflow = yaml.safe_load(path.read_text())
    return [(name, step) for name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def test_one_workflow_is_active_and_the_postgres_one_is_a_template() -> None:
    # two active workflows would both apply on the same push (issue 19)
    assert [p.name for p in ACTIVE] == ["coins-sync.yml"]
    assert [p.name for p in TEMPLATES] == ["coins-sync-postgres.yml"]
    for path in WORKFLOWS:
        assert "never keep" in path.read_text().lower() or "keep exactly one" in (
            path.read_text().lower()
        ), path.name


def test_the_postgres_template_refuses_an_environment_of_another_backend() -> None:
    workflow = yaml.safe_load(TEMPLATES[0].read_text())
    runs = [str(step.get("run", "")) for step in workflow["jobs"]["apply"]["steps"]]
    guard = next(i for i, run in enumerate(runs) if 'backend != "postgres"' in run)
    assert guard < next(i for i, run in enumerate(runs) if "coins-sync apply" in run)
    assert "sys.exit(" in runs[guard]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_sha(path: Path) -> None:
    unpinned = [
        f"{job}: {step['uses']}"
        for job, step in _steps(path)
        if "uses" in step and not PINNED.match(step["uses"])
    ]
    assert unpinned == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_job_declares_its_permissions(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkout_keeps_no_token_unless_the_job_pushes(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    for name, job in workflow["jobs"].items():
        pushes = job.get("permissions", {}).get("contents") == "write"
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                persist = step.get("with", {}).get("persist-credentials")
                assert persist is pushes, f"{path.name} job {name}"
