"""The shipped workflows on one push to main, simulated locally (issue 19, case 1).

Every job of every active workflow under .github/workflows that a push to main starts
runs its `run:` steps as a fresh runner would: a clone of a bare origin that holds this
repository's configs, pyproject.toml and workflows, secrets from the environment, the
sandbox on 127.0.0.1 as the API. `uses:` steps (checkout, setup-python, upload) and the
pip install are done by the clone and this virtualenv. Each apply job runs twice at
once, as a push and its re-run may: the concurrency group orders runs of one workflow
only. The server must end with every rule exactly once, also after a second push.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from coins_sync.sandbox import SandboxOptions, SandboxServer
from tests import chaos
from tests.conftest import REPO

ACTIVE = sorted((REPO / ".github/workflows").glob("*.y*ml"))
SECRETS = {
    "COINS_SYNC_CLIENT_ID": "sim-client",
    "COINS_SYNC_CLIENT_SECRET": "sim-client-secret",
    "COINS_SYNC_USERNAME": "sim-user",
    "COINS_SYNC_PASSWORD": "sim-password",
}


@dataclass(frozen=True)
class Job:
    workflow: str
    name: str
    env: dict[str, str]
    steps: list[dict[str, Any]]


def push_jobs(paths: list[Path]) -> list[Job]:
    """The jobs a push to main starts in these workflows."""
    found = []
    for path in paths:
        workflow = yaml.safe_load(path.read_text())
        triggers = workflow.get(True, workflow.get("on", {}))  # YAML 1.1 reads `on` as True
        push = triggers.get("push") if isinstance(triggers, dict) else None
        if push is None or "main" not in push.get("branches", ["main"]):
            continue
        for name, job in workflow["jobs"].items():
            condition = str(job.get("if", ""))
            if condition and "'push'" not in condition:
                continue
            env = {**workflow.get("env", {}), **job.get("env", {})}
            found.append(Job(path.name, name, env, job["steps"]))
    return found


def rules_in_configs() -> int:
    return sum(
        len(yaml.safe_load(p.read_text())["rules"]) for p in (REPO / "configs").glob("*.yaml")
    )


def test_a_push_to_main_starts_one_apply_job_per_environment() -> None:
    jobs = push_jobs(ACTIVE)
    per_env = Counter(job.env.get("COINS_SYNC_ENV", "default") for job in jobs)
    assert per_env and all(count == 1 for count in per_env.values()), [
        f"{job.workflow}:{job.name}" for job in jobs
    ]


class Runner:
    """One job on one fresh runner."""

    def __init__(self, origin: Path, job: Job, run_id: str, base_env: Mapping[str, str]) -> None:
        self.job = job
        self.dir = origin.parent / f"runner-{run_id}"
        subprocess.run(
            ["git", "clone", "--quiet", str(origin), str(self.dir)],
            check=True,
            capture_output=True,
            timeout=60,
            env=dict(base_env),
        )
        self.run_id = run_id
        self.base_env = base_env
        self.outcomes: dict[str, str] = {}
        self.log: list[str] = []
        self.failed = False

    def expand(self, text: str) -> str:
        def value(match: re.Match[str]) -> str:
            expr = match.group(1).strip()
            if expr.startswith("secrets."):
                names = [n.strip().removeprefix("secrets.") for n in expr.split("||")]
                return next((SECRETS[n] for n in names if n in SECRETS), "")
            if expr.startswith("env."):
                return str(self.job.env.get(expr[4:], ""))
            return {"github.run_id": self.run_id, "github.run_attempt": "1"}.get(expr, "")

        return re.sub(r"\$\{\{(.*?)\}\}", value, text)

    def should_run(self, step: dict[str, Any]) -> bool:
        condition = str(step.get("if", "success()"))
        condition = re.sub(
            r"steps\.([\w-]+)\.outcome",
            lambda m: repr(self.outcomes.get(m.group(1), "skipped")),
            condition,
        )
        condition = condition.replace("&&", " and ").replace("||", " or ")
        names = {"always": lambda: True, "failure": lambda: self.failed}
        names["success"] = lambda: not self.failed
        return bool(
            eval(condition, {"__builtins__": {}}, names)
        )  # only the workflows own conditions

    def run(self) -> None:
        for index, step in enumerate(self.job.steps):
            step_id = str(step.get("id", f"step{index}"))
            if not self.should_run(step):
                self.outcomes[step_id] = "skipped"
                continue
            script = str(step.get("run", ""))
            if "uses" in step or not script or "pip install" in script:
                self.outcomes[step_id] = "success"  # done by the clone and this virtualenv
                continue
            env = dict(self.base_env)
            for name, raw in {**self.job.env, **step.get("env", {})}.items():
                env[name] = self.expand(str(raw))
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", self.expand(script)],
                cwd=self.dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            self.log.append(f"$ {step.get('name', script)}\n{done.stdout}{done.stderr}")
            self.outcomes[step_id] = "success" if done.returncode == 0 else "failure"
            self.failed = self.failed or done.returncode != 0


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(
        SandboxOptions(port=0, **{k.lower()[11:]: v for k, v in SECRETS.items()})
    ) as server:
        yield server


@pytest.fixture
def origin(tmp_path: Path, sandbox: SandboxServer) -> Path:
    """A bare origin whose main is this repository's project: configs, settings, workflows;
    the prod environment's api_url points at the sandbox."""
    seed = tmp_path / "seed"
    seed.mkdir()
    for name in ("configs", ".github", "schemas"):
        if (REPO / name).is_dir():
            subprocess.run(["cp", "-R", str(REPO / name), str(seed / name)], check=True)
    pyproject = (REPO / "pyproject.toml").read_text()
    pyproject = pyproject.replace(
        "[tool.coins-sync.environments.prod]\n",
        f'[tool.coins-sync.environments.prod]\napi_url = "{sandbox.url}"\n',
    )
    (seed / "pyproject.toml").write_text(pyproject)
    (seed / ".gitignore").write_text("state/*.lock\nstate/*.lock.json\n")
    env = git_env(tmp_path)
    for args in (
        ["init", "--quiet", "-b", "main", str(seed)],
        ["-C", str(seed), "add", "."],
        ["-C", str(seed), "commit", "--quiet", "-m", "the project"],
        ["init", "--quiet", "--bare", "-b", "main", str(tmp_path / "origin.git")],
        ["-C", str(seed), "push", "--quiet", str(tmp_path / "origin.git"), "main"],
    ):
        subprocess.run(["git", *args], check=True, capture_output=True, timeout=60, env=env)
    return tmp_path / "origin.git"


def git_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COINS_SYNC_", "GITHUB_", "GIT_")) and k != "NO_COLOR"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["GIT_CONFIG_GLOBAL"] = str(tmp_path / "gitconfig")
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "runner"
        env[f"GIT_{role}_EMAIL"] = "runner@example.com"
    return env


def one_push(origin: Path, push: int) -> list[Runner]:
    """Every job a push to main starts, each twice, all at once."""
    base = git_env(origin.parent)
    runners = []
    for job in push_jobs(ACTIVE):
        for attempt in (1, 2):
            run_id = f"{push}-{job.workflow.split('.')[0]}-{job.name}-{attempt}"
            runner = Runner(origin, job, run_id, base)
            summary, output = runner.dir / ".summary", runner.dir / ".output"
            runner.base_env = {
                **base,
                "GITHUB_RUN_ID": run_id,
                "GITHUB_RUN_ATTEMPT": "1",
                "GITHUB_STEP_SUMMARY": str(summary),
                "GITHUB_OUTPUT": str(output),
            }
            runners.append(runner)
    threads = [threading.Thread(target=r.run) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return runners


def test_two_apply_jobs_on_one_push_create_every_rule_once(
    origin: Path, sandbox: SandboxServer
) -> None:
    wanted = rules_in_configs()
    for push in (1, 2, 3):
        runners = one_push(origin, push)
        logs = "\n".join(line for r in runners for line in r.log)
        counts = Counter(chaos.key_of(c) for c in sandbox.configs())
        assert sum(n - 1 for n in counts.values()) == 0, logs
        assert len(counts) == wanted, logs
        # a refused runner stops before apply and says why; none is left half-way
        assert any(not r.failed for r in runners), logs
        for runner in runners:
            if runner.failed:
                assert "leased by run" in "\n".join(runner.log), "\n".join(runner.log)
    state = subprocess.run(
        ["git", "-C", str(origin), "show", "coins-sync-state:state/prod.json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert len(json.loads(state.stdout)["entries"]) == wanted
