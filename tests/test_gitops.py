"""Audit log, drift refresh, the auditor's report and the GitOps files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import pytest
import yaml

from coins_sync.sandbox import SandboxServer
from tests.conftest import REPO, SANDBOX_TOKEN, Invoke, write

RULES = """\
companyId: ACME
rules:
  - event: MEAL
    amount: 6
  - event: FUEL
    amount: 4
"""


def run(invoke: Invoke, server: SandboxServer, *args: str, **env: str) -> str:
    result = invoke(*args, "--api-url", server.url, env={"COINS_SYNC_TOKEN": SANDBOX_TOKEN, **env})
    assert result.exit_code == 0, result.output
    return result.output


def audit_lines(project: Path) -> list[dict[str, object]]:
    path = project / "state" / "default.audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_records_each_applied_change(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    env = {"GITHUB_ACTOR": "octocat", "GITHUB_SHA": "abc123def456"}
    run(invoke, sandbox, "apply", "--yes", **env)
    records = audit_lines(project)
    assert [(r["action"], r["outcome"]) for r in records] == [("create", "created")] * 2
    meal = next(
        r
        for r in records
        if r["key"] == {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL"}
    )
    assert meal["after"] == 6 and meal["before"] is None
    assert meal["environment"] == "default"
    assert meal["actor"] == "octocat" and meal["commit"] == "abc123def456"
    assert str(meal["coinConfigId"]).startswith("WCC")
    assert str(meal["at"]).endswith("Z")

    first_bytes = (project / "state" / "default.audit.jsonl").read_bytes()
    write(project / "configs/acme.yaml", RULES.replace("amount: 6", "amount: 8"))
    run(invoke, sandbox, "apply", "--yes", **env)
    after = (project / "state" / "default.audit.jsonl").read_bytes()
    assert after.startswith(first_bytes)  # append-only: nothing earlier was rewritten
    last = audit_lines(project)[-1]
    assert (last["action"], last["outcome"], last["before"], last["after"]) == (
        "update",
        "updated",
        6,
        8,
    )
    assert SANDBOX_TOKEN not in after.decode()


def test_state_rm_and_import_are_audited(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    run(invoke, sandbox, "apply", "--yes")
    state = json.loads((project / "state/default.json").read_text())
    meal = next(e for e in state["entries"] if e["event"] == "MEAL")
    run(invoke, sandbox, "state", "rm", "ACME/DEFAULT/MEAL", "--yes")
    assert "1 to create" in run(invoke, sandbox, "plan")
    run(invoke, sandbox, "state", "import", "ACME/DEFAULT/MEAL", meal["coinConfigId"])
    assert "(no changes)" in run(invoke, sandbox, "plan")
    outcomes = [(r["action"], r["outcome"]) for r in audit_lines(project)]
    assert outcomes[-2:] == [("forget", "forgotten"), ("import", "imported")]


def test_refresh_finds_drift_and_plans_the_fix(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(project / "configs/acme.yaml", RULES)
    run(invoke, sandbox, "apply", "--yes")
    meal = next(c for c in sandbox.configs() if c["event"] == "MEAL")
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:  # a change behind our back
        response = client.patch(
            f"/api/v0/enkash-coins/{meal['coinConfigId']}",
            json={"amount": 60},
            headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        )
        assert response.status_code == 200
    assert "(no changes)" in run(invoke, sandbox, "plan")  # plain plan stays offline
    text = run(invoke, sandbox, "plan", "--refresh")
    assert "ACME/DEFAULT/MEAL: amount is 60 on the server, 6 in state" in text
    assert "~ ACME/DEFAULT/MEAL" in text and "amount 60 -> 6" in text
    data = json.loads(run(invoke, sandbox, "plan", "--refresh", "--format", "json"))
    assert data["drift"] == [
        {
            "key": {"companyId": "ACME", "configuration": "DEFAULT", "event": "MEAL"},
            "coinConfigId": meal["coinConfigId"],
            "field": "amount",
            "state": 6,
            "server": 60,
        }
    ]
    assert data["summary"]["update"] == 1
    run(invoke, sandbox, "apply", "--yes", "--refresh")
    assert next(c for c in sandbox.configs() if c["event"] == "MEAL")["amount"] == 6
    assert "Drift" not in run(invoke, sandbox, "plan", "--refresh")
    assert len(sandbox.configs()) == 2


def test_report_in_every_format(project: Path, invoke: Invoke, sandbox: SandboxServer) -> None:
    write(project / "configs/acme.yaml", RULES)
    run(invoke, sandbox, "apply", "--yes", GITHUB_ACTOR="auditor-bot")
    write(
        project / "configs/acme.yaml",
        RULES.replace("amount: 4", "amount: 5") + "  - event: NEW\n    amount: 1\n",
    )
    data = json.loads(run(invoke, sandbox, "report", "--format", "json"))
    assert data["summary"] == {"live": 1, "pending": 2, "uncertain": 0, "retired": 0, "orphan": 0}
    by_event = {r["event"]: r for r in data["rules"]}
    assert by_event["MEAL"]["status"] == "live"
    assert by_event["MEAL"]["source"] == "configs/acme.yaml:3"
    assert by_event["MEAL"]["lastChange"]["actor"] == "auditor-bot"
    assert by_event["FUEL"]["status"] == "pending" and by_event["FUEL"]["liveAmount"] == 4
    assert by_event["NEW"]["lastChange"] is None

    rows = list(csv.DictReader(io.StringIO(run(invoke, sandbox, "report", "--format", "csv"))))
    assert [r["event"] for r in rows] == ["FUEL", "MEAL", "NEW"]
    assert rows[1]["status"] == "live" and rows[1]["lastChangeOutcome"] == "created"

    markdown = run(invoke, sandbox, "report")
    assert "## `ACME`" in markdown
    assert "1 live, 2 pending, 0 uncertain, 0 retired, 0 orphan" in markdown
    assert "| `DEFAULT` | `MEAL` | 6 | live (`WCC" in markdown


def test_workflow_is_valid_and_safe() -> None:
    workflow = yaml.safe_load((REPO / ".github/workflows/coins-sync.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on`
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    plan_steps = workflow["jobs"]["plan"]["steps"]
    commands = " ".join(str(step.get("run", "")) for step in plan_steps)
    # no Validate step before the plan: invalid configs must reach the comment too
    assert "coins-sync validate" not in commands
    assert "plan --format markdown --detailed-exitcode" in commands
    assert "GITHUB_STEP_SUMMARY" in commands
    script = next(s for s in plan_steps if "github-script" in str(s.get("uses", "")))
    assert "updateComment" in script["with"]["script"]
    apply_job = workflow["jobs"]["apply"]
    assert apply_job["concurrency"]["cancel-in-progress"] is False
    assert "coins-sync apply --yes" in " ".join(str(s.get("run", "")) for s in apply_job["steps"])
    apply_step = next(s for s in apply_job["steps"] if s.get("name") == "Apply")
    assert apply_step["env"]["COINS_SYNC_PASSWORD"] == "${{ secrets.COINS_SYNC_PASSWORD }}"
    # the state goes to its own branch under the lease protocol (tests/test_git_lease.py)
    assert "coins-sync git-lease push" in " ".join(
        str(s.get("run", "")) for s in apply_job["steps"]
    )


def test_pre_commit_hook_validates_all_configs() -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "coins-sync-validate")
    assert hook["entry"] == "coins-sync validate --all-environments"
    assert hook["pass_filenames"] is False


INVALID = """\
companyId: ACME
rules:
  - event: "@team <img src=x> [link](https://evil.example) | x"
    amount: 6.0
"""


@pytest.mark.parametrize(
    "name", [".github/workflows/coins-sync.yml", "docs/workflows/coins-sync-postgres.yml"]
)
def test_the_workflow_comments_the_problems_of_invalid_configs(
    name: str, project: Path, tmp_path: Path
) -> None:
    """The PR job's Plan step, run as the runner runs it: on invalid configs the comment
    body (plan.md) holds this push's problems as inert Markdown, never a stale plan and
    never raw stderr in a fence; the step records exit code 1."""
    import os
    import subprocess
    import sys

    from markdown_it import MarkdownIt

    workflow = yaml.safe_load((REPO / name).read_text())
    step = next(s for s in workflow["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    write(project / "configs" / "acme.yaml", INVALID)
    (project / "plan.md").write_text("### coins-sync plan for `prod`\n\nthe last push's plan\n")
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(summary),
        "GITHUB_OUTPUT": str(output),
    }
    env.pop("COINS_SYNC_ENV", None)
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=project, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert output.read_text() == "exitcode=1\n"
    body = (project / "plan.md").read_text()
    assert "the configs are invalid" in body
    assert "last push" not in body and "```" not in body
    assert "configs/acme.yaml" in body and "amount" in body
    html = MarkdownIt("gfm-like").render(body)
    assert "<img" not in html and "<a " not in html and "@team" in html
    assert summary.read_text() == body
    assert "acme.yaml:4" in done.stderr  # the log keeps the plain problems


@pytest.mark.parametrize(
    "name", [".github/workflows/coins-sync.yml", "docs/workflows/coins-sync-postgres.yml"]
)
def test_the_workflow_failure_path_pastes_no_raw_stderr(name: str, project: Path) -> None:
    import os
    import subprocess
    import sys

    workflow = yaml.safe_load((REPO / name).read_text())
    step = next(s for s in workflow["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    # a broken pyproject.toml fails before any plan can be made: nothing on stdout
    write(project / "pyproject.toml", "[tool.coins-sync]\nsecret_ish = 'x'\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(project / "summary.md"),
        "GITHUB_OUTPUT": str(project / "output.txt"),
    }
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=project, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    body = (project / "plan.md").read_text()
    assert body.startswith("### coins-sync plan failed")
    assert "secret_ish" not in body and "```" not in body
    assert "secret_ish" in done.stderr  # the reason is in the job log
