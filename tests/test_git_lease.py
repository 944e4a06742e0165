"""The git lease protocol with real `git`, a bare origin and the sandbox on 127.0.0.1.

Each "runner" is a fresh clone, as on a CI runner that is thrown away after the job.
The job is the shipped workflow's: git-lease acquire, apply --yes, git-lease push, and
on failure the state/ folder is kept as an artifact. Every test ends with one config
per key on the server.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from coins_sync.cli import cli
from coins_sync.sandbox import SandboxOptions, SandboxServer
from tests import chaos
from tests.conftest import REPO

TOKEN = "lease-t0ken-never-shown"
BRANCH = "coins-sync-state"
RULES = """\
companyId: ACME
rules:
  - event: MEAL
    amount: 6
  - event: FUEL
    amount: 4
  - event: TRAVEL
    amount: 9
"""
KEYS = 3


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bare origin whose main holds configs/ (and no state), as a team's repository."""
    for name in ("COINS_SYNC_ENV", "COINS_SYNC_TOKEN", "GITHUB_SHA", "GITHUB_RUN_ID", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "tester")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "tester@example.com")
    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "--quiet", "-b", "main", str(seed))
    (seed / "configs").mkdir()
    (seed / "configs" / "acme.yaml").write_text(RULES)
    (seed / ".gitignore").write_text("state/*.lock\nstate/*.lock.json\n")
    git(seed, "add", ".")
    git(seed, "commit", "--quiet", "-m", "configs")
    git(seed, "push", "--quiet", str(bare), "main")
    return bare


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions(port=0, token=TOKEN)) as server:
        yield server


def clone(origin: Path, name: str) -> Path:
    """A fresh runner: a clone of main, as actions/checkout makes it."""
    path = origin.parent / name
    git(origin.parent, "clone", "--quiet", str(origin), str(path))
    return path


def cli_in(where: Path, *args: str) -> Result:
    with contextlib.chdir(where):
        return CliRunner().invoke(
            cli, list(args), env={"COINS_SYNC_TOKEN": TOKEN}, catch_exceptions=False
        )


def acquire(runner: Path, run: str) -> Result:
    return cli_in(runner, "git-lease", "acquire", "--run-id", run)


def apply(runner: Path, sandbox: SandboxServer) -> Result:
    result = cli_in(runner, "apply", "--yes", "--api-url", sandbox.url)
    assert result.exit_code == 0, result.output
    return result


def push(runner: Path) -> Result:
    return cli_in(runner, "git-lease", "push", "--retry-delay", "0")


def keep_artifact(runner: Path) -> Path:
    """What the workflow's upload-artifact step keeps: the state/ folder's files."""
    artifact = runner.parent / f"artifact-of-{runner.name}"
    shutil.copytree(runner / "state", artifact)
    return artifact


def discard(runner: Path) -> None:
    shutil.rmtree(runner)


def duplicates(sandbox: SandboxServer) -> int:
    counts = Counter(chaos.key_of(c) for c in sandbox.configs())
    return sum(n - 1 for n in counts.values())


def branch_tip(origin: Path) -> str:
    return git(origin, "rev-parse", f"refs/heads/{BRANCH}")


LEASE_REF = f"refs/coins-sync/lease/{BRANCH}"


def lease_of(origin: Path) -> str:
    """The message of the lease commit (its own ref, not the branch), or "" when free."""
    done = subprocess.run(
        ["git", "log", "-1", "--format=%B", LEASE_REF],
        cwd=origin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def branch_file(origin: Path, path: str) -> str:
    return git(origin, "show", f"refs/heads/{BRANCH}:{path}")


def install_hook(origin: Path, name: str, script: str) -> Path:
    hook = origin / "hooks" / name
    hook.write_text("#!/bin/sh\n" + script)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hook


REJECT_ALL = "echo 'protected branch: pushes need a pull request' >&2\nexit 1\n"


def job(origin: Path, sandbox: SandboxServer, name: str) -> Result:
    """The workflow's apply job on a fresh runner: apply only once the lease is taken."""
    runner = clone(origin, name)
    got = acquire(runner, name)
    if got.exit_code == 0:
        apply(runner, sandbox)
        assert push(runner).exit_code == 0
    discard(runner)
    return got


def full_run(origin: Path, sandbox: SandboxServer, name: str) -> Result:
    """A whole job on a fresh runner that is expected to succeed."""
    runner = clone(origin, name)
    result = acquire(runner, name)
    assert result.exit_code == 0, result.output
    apply(runner, sandbox)
    pushed = push(runner)
    assert pushed.exit_code == 0, pushed.output
    discard(runner)
    return pushed


def test_first_run_creates_the_branch_and_the_next_run_sees_its_state(
    origin: Path, sandbox: SandboxServer
) -> None:
    runner = clone(origin, "run-1")
    result = acquire(runner, "run-1")
    assert result.exit_code == 0, result.output
    assert "Took the lease on coins-sync-state for run run-1" in result.output
    lease_message = lease_of(origin)
    assert "Coins-Sync-Lease: held" in lease_message and "Coins-Sync-Run: run-1" in lease_message
    seeded = branch_tip(origin)
    apply(runner, sandbox)
    pushed = push(runner)
    assert pushed.exit_code == 0, pushed.output
    state = json.loads(branch_file(origin, "state/default.json"))
    assert len(state["entries"]) == KEYS
    assert len(branch_file(origin, "state/default.audit.jsonl").splitlines()) == KEYS
    # the state commit is a fast-forward of the branch, and the lease ref is gone
    assert git(origin, "rev-parse", f"{BRANCH}~1") == seeded
    assert lease_of(origin) == ""
    assert git(origin, "rev-parse", "main") == git(runner, "rev-parse", "HEAD")  # main untouched
    discard(runner)

    second = clone(origin, "run-2")
    assert acquire(second, "run-2").exit_code == 0
    assert json.loads((second / "state/default.json").read_text()) == state
    assert "Nothing to apply" in apply(second, sandbox).output
    assert push(second).exit_code == 0
    assert len(sandbox.configs()) == KEYS and duplicates(sandbox) == 0


def test_two_concurrent_runners_only_one_gets_the_lease(
    origin: Path, sandbox: SandboxServer
) -> None:
    full_run(origin, sandbox, "earlier")  # the branch exists and is free
    (origin.parent / "configs-change").mkdir()
    runner_a, runner_b = clone(origin, "runner-a"), clone(origin, "runner-b")
    # Runner B has just fetched the free branch when runner A takes the lease: B's
    # reference-transaction hook (run as the fetch updates B's ref) runs A's acquire once.
    marker = origin.parent / "a-went-first"
    script = (
        f'[ "$1" = committed ] || exit 0\n[ -e "{marker}" ] && exit 0\ntouch "{marker}"\n'
        f'cd "{runner_a}" && unset GIT_DIR GIT_INDEX_FILE && "{sys.executable}" -m coins_sync '
        "git-lease acquire --run-id runner-a >/dev/null 2>&1\n"
    )
    hook = runner_b / ".git" / "hooks" / "reference-transaction"
    hook.write_text("#!/bin/sh\n" + script)
    hook.chmod(0o755)
    before = len(sandbox.configs())

    refused = acquire(runner_b, "runner-b")
    assert marker.exists()
    assert refused.exit_code == 1
    assert "leased by run runner-a" in refused.output and "nothing was sent" in refused.output
    assert "Traceback" not in refused.output
    # runner B stops here (the workflow never reaches apply); runner A goes on
    assert "Coins-Sync-Run: runner-a" in lease_of(origin)
    assert len(sandbox.configs()) == before
    write_rules = (
        runner_a / "configs" / "acme.yaml"
    ).read_text() + "  - event: GIFT\n    amount: 2\n"
    (runner_a / "configs" / "acme.yaml").write_text(write_rules)
    apply(runner_a, sandbox)
    assert push(runner_a).exit_code == 0
    assert len(sandbox.configs()) == KEYS + 1

    # B's next attempt finds the branch free again and A's state on it
    assert acquire(runner_b, "runner-b-2").exit_code == 0
    (runner_b / "configs" / "acme.yaml").write_text(write_rules)
    assert "Nothing to apply" in apply(runner_b, sandbox).output
    assert push(runner_b).exit_code == 0
    assert duplicates(sandbox) == 0


def test_runners_started_at_once_get_one_lease_per_round(origin: Path) -> None:
    runners = [clone(origin, f"parallel-{i}") for i in range(3)]
    for round_ in range(2):  # the first races to create the branch, the second to lease it
        acquire_command = [sys.executable, "-m", "coins_sync", "git-lease", "acquire"]
        procs = [
            subprocess.Popen(
                [*acquire_command, "--run-id", f"r{round_}-{runner.name}"],
                cwd=runner,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for runner in runners
        ]
        outcomes = [(proc.communicate(timeout=60)[0], proc.returncode) for proc in procs]
        winners = [runners[i] for i, (_, code) in enumerate(outcomes) if code == 0]
        assert len(winners) == 1, outcomes
        assert all("leased by run" in out for out, code in outcomes if code != 0), outcomes
        assert push(winners[0]).exit_code == 0


def test_a_lease_held_by_a_running_job_refuses_a_second_one(
    origin: Path, sandbox: SandboxServer
) -> None:
    first = clone(origin, "first")
    assert acquire(first, "first").exit_code == 0
    second = clone(origin, "second")
    refused = acquire(second, "second")
    assert refused.exit_code == 1 and "leased by run first" in refused.output
    status = cli_in(second, "git-lease", "status", "--format", "json")
    assert json.loads(status.output)["holder"]["run"] == "first"
    apply(first, sandbox)
    assert push(first).exit_code == 0
    assert "is free" in cli_in(second, "git-lease", "status").output
    assert duplicates(sandbox) == 0


def test_a_refused_push_keeps_the_lease_until_the_state_is_restored(
    origin: Path, sandbox: SandboxServer
) -> None:
    runner = clone(origin, "run-1")
    assert acquire(runner, "run-1").exit_code == 0
    tip = branch_tip(origin)
    apply(runner, sandbox)
    hook = install_hook(origin, "pre-receive", REJECT_ALL)
    failed = push(runner)
    assert failed.exit_code == 1
    assert "could not push the state to branch coins-sync-state after 3 attempts" in failed.output
    assert "protected branch" in failed.output
    assert "The lease stays" in failed.output
    # the hint names the environment, so it restores the same state it kept
    assert "`coins-sync git-lease restore --env default --from DIR`" in failed.output
    assert "state/default.json" in failed.output and "state/default.audit.jsonl" in failed.output
    assert branch_tip(origin) == tip and "Coins-Sync-Run: run-1" in lease_of(origin)
    artifact = keep_artifact(runner)  # the workflow uploads state/ on failure
    discard(runner)
    hook.unlink()  # the admin lets the state branch through again

    # every later run refuses before sending anything
    refused = job(origin, sandbox, "run-2")
    assert duplicates(sandbox) == 0
    assert refused.exit_code == 1 and "leased by run run-1" in refused.output

    person = clone(origin, "laptop")
    restored = cli_in(person, "git-lease", "restore", "--from", str(artifact), "--run", "run-1")
    assert restored.exit_code == 0, restored.output
    assert len(json.loads(branch_file(origin, "state/default.json"))["entries"]) == KEYS

    full_run(origin, sandbox, "run-3")
    assert len(sandbox.configs()) == KEYS and duplicates(sandbox) == 0


def test_a_cancelled_job_keeps_the_lease_until_restored_from_its_artifact(
    origin: Path, sandbox: SandboxServer
) -> None:
    runner = clone(origin, "cancelled")
    assert acquire(runner, "cancelled").exit_code == 0
    apply(runner, sandbox)
    artifact = keep_artifact(runner)  # cancelled: push never ran, only the upload did
    discard(runner)

    refused = job(origin, sandbox, "next")
    assert duplicates(sandbox) == 0
    assert refused.exit_code == 1 and "leased by run cancelled" in refused.output
    assert "git-lease restore --env default --from DIR" in refused.output

    later = clone(origin, "later")

    wrong = cli_in(later, "git-lease", "release", "--run", "someone-else")
    assert wrong.exit_code == 1 and "not by run someone-else" in wrong.output
    restored = cli_in(later, "git-lease", "restore", "--from", str(artifact))
    assert restored.exit_code == 0, restored.output
    assert acquire(later, "next-2").exit_code == 0
    assert "Nothing to apply" in apply(later, sandbox).output
    assert push(later).exit_code == 0
    assert len(sandbox.configs()) == KEYS and duplicates(sandbox) == 0


def test_push_retries_only_its_own_fast_forward(origin: Path, sandbox: SandboxServer) -> None:
    runner = clone(origin, "flaky")
    assert acquire(runner, "flaky").exit_code == 0
    tip = branch_tip(origin)
    apply(runner, sandbox)
    counter = origin.parent / "refusals"
    install_hook(
        origin,
        "pre-receive",
        f'[ -e "{counter}" ] && exit 0\ntouch "{counter}"\necho "try again" >&2\nexit 1\n',
    )
    pushed = push(runner)
    assert pushed.exit_code == 0, pushed.output
    assert git(origin, "rev-parse", f"{BRANCH}~1") == tip and lease_of(origin) == ""
    assert "Coins-Sync-Lease: released" in git(origin, "log", "-1", "--format=%B", BRANCH)
    assert duplicates(sandbox) == 0


def test_push_never_overwrites_a_branch_that_moved_away_from_the_lease(
    origin: Path, sandbox: SandboxServer
) -> None:
    runner = clone(origin, "slow")
    assert acquire(runner, "slow").exit_code == 0
    apply(runner, sandbox)
    # someone releases that lease by hand while the run is still going
    assert cli_in(clone(origin, "hasty"), "git-lease", "release", "--run", "slow").exit_code == 0
    moved = branch_tip(origin)
    failed = push(runner)
    assert failed.exit_code == 1 and "this run's lease on coins-sync-state is gone" in failed.output
    assert branch_tip(origin) == moved
    artifact = keep_artifact(runner)
    # the released branch holds no state; a restore now needs a lease: refuse clearly
    assert (
        "no lease to restore"
        in cli_in(clone(origin, "admin"), "git-lease", "restore", "--from", str(artifact)).output
    )
    assert duplicates(sandbox) == 0


def test_restore_refuses_an_older_or_foreign_state(origin: Path, sandbox: SandboxServer) -> None:
    full_run(origin, sandbox, "run-1")
    runner = clone(origin, "run-2")
    assert acquire(runner, "run-2").exit_code == 0
    foreign = origin.parent / "foreign"
    foreign.mkdir()
    state = json.loads((runner / "state/default.json").read_text())
    (foreign / "default.json").write_text(json.dumps({**state, "lineage": "other-lineage"}))
    refused = cli_in(runner, "git-lease", "restore", "--from", str(foreign))
    assert refused.exit_code == 1 and "lineage" in refused.output
    (foreign / "default.json").write_text(json.dumps({**state, "serial": 0}))
    refused = cli_in(runner, "git-lease", "restore", "--from", str(foreign))
    assert refused.exit_code == 1 and "older than the branch's" in refused.output
    (foreign / "default.json").write_text(json.dumps(state))
    refused = cli_in(runner, "git-lease", "restore", "--from", str(foreign))
    assert refused.exit_code == 1 and "does not continue the branch's audit log" in refused.output
    assert "Coins-Sync-Run: run-2" in lease_of(origin)
    assert push(runner).exit_code == 0


def test_push_without_a_lease_and_outside_git_are_clear_errors(
    origin: Path, tmp_path: Path
) -> None:
    runner = clone(origin, "no-lease")
    result = push(runner)
    assert result.exit_code == 1 and "holds no lease" in result.output
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    result = cli_in(outside, "git-lease", "status")
    assert result.exit_code == 1 and "not inside a git working tree" in result.output
    assert "Traceback" not in result.output


def test_plan_out_onto_the_state_file_is_refused(origin: Path, sandbox: SandboxServer) -> None:
    full_run(origin, sandbox, "run-1")
    runner = clone(origin, "planner")
    assert acquire(runner, "planner").exit_code == 0
    before = (runner / "state/default.json").read_bytes()
    for target in ("state/default.json", "./state/../state/default.json"):
        result = cli_in(runner, "plan", "--out", target)
        assert result.exit_code == 1
        assert "refusing to write the plan onto" in result.output
        assert (runner / "state/default.json").read_bytes() == before
    assert cli_in(runner, "plan", "--out", "plan.json").exit_code == 0


def test_the_workflow_follows_the_lease_protocol_and_is_hardened() -> None:
    text = (REPO / ".github/workflows/coins-sync.yml").read_text()
    workflow = yaml.safe_load(text)
    apply_job = workflow["jobs"]["apply"]
    steps = apply_job["steps"]
    runs = [str(step.get("run", "")) for step in steps]

    def index(command: str) -> int:
        return next(i for i, run in enumerate(runs) if command in run)

    acquire_at, apply_at, push_at = (
        index("git-lease acquire"),
        index("coins-sync apply --yes"),
        index("git-lease push"),
    )
    assert acquire_at < apply_at < push_at
    assert "git push" not in text and "pull --rebase" not in text  # nothing touches main
    lease_id = steps[acquire_at]["id"]
    assert steps[push_at]["if"] == f"always() && steps.{lease_id}.outcome == 'success'"
    upload = next(s for s in steps if "upload-artifact" in str(s.get("uses", "")))
    assert "steps.push.outcome != 'success'" in upload["if"]
    assert "state/" in upload["with"]["path"]
    assert "git-lease restore" in runs[-1] and "exit 1" in runs[-1]
    assert "steps.push.outcome != 'success'" in steps[-1]["if"]
    # hardening: actions pinned by full commit SHA with the version as a comment,
    # credentials persisted only where a push needs them, a timeout on every job
    uses = re.findall(r"uses: (\S+)(.*)", text)
    assert uses and all(re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", u) for u, _ in uses)
    assert all(re.fullmatch(r" # v\d+\.\d+\.\d+", comment) for _, comment in uses)
    for name, job in workflow["jobs"].items():
        assert job["timeout-minutes"] <= 30, name
        for step in job["steps"]:
            if "actions/checkout" in str(step.get("uses", "")):
                wanted = name == "apply"
                assert step["with"]["persist-credentials"] is wanted, name
    assert apply_job["concurrency"]["group"] and apply_job["permissions"] == {"contents": "write"}
    # every permission is explained on its line
    for line in text.splitlines():
        if re.match(r"\s+(contents|pull-requests): (read|write)", line):
            assert " # " in line, line


def plain_commit(origin: Path, name: str, path: str = "NOTES.md") -> str:
    """A person pushes an ordinary fast-forward commit onto the state branch."""
    person = origin.parent / name
    git(origin.parent, "clone", "--quiet", "--branch", BRANCH, str(origin), str(person))
    target = person / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"written by {name}\n")
    git(person, "add", path)
    git(person, "commit", "--quiet", "-m", f"an ordinary commit by {name}")
    git(person, "push", "--quiet", "origin", BRANCH)
    return git(person, "rev-parse", "HEAD")


def test_an_ordinary_commit_on_the_branch_leaves_the_lease_held(
    origin: Path, sandbox: SandboxServer
) -> None:
    full_run(origin, sandbox, "run-0")  # the branch exists and is free
    (origin.parent / "more").mkdir()
    runner_a = clone(origin, "run-a")
    assert acquire(runner_a, "run-a").exit_code == 0
    ordinary = plain_commit(origin, "person")
    assert branch_tip(origin) == ordinary

    # B is refused before anything is sent: the lease belongs to A, not to the tip
    refused = job(origin, sandbox, "run-b")
    assert refused.exit_code == 1 and "leased by run run-a" in refused.output
    status = json.loads(cli_in(runner_a, "git-lease", "status", "--format", "json").output)
    assert status["lease"] == "held" and status["holder"]["run"] == "run-a"

    # A's push lands on top of the person's commit, which stays in the history
    rules = (runner_a / "configs/acme.yaml").read_text() + "  - event: GIFT\n    amount: 2\n"
    (runner_a / "configs/acme.yaml").write_text(rules)
    apply(runner_a, sandbox)
    pushed = push(runner_a)
    assert pushed.exit_code == 0, pushed.output
    assert git(origin, "rev-parse", f"{BRANCH}~1") == ordinary
    assert branch_file(origin, "NOTES.md") == "written by person"
    assert len(json.loads(branch_file(origin, "state/default.json"))["entries"]) == KEYS + 1
    assert lease_of(origin) == ""
    assert len(sandbox.configs()) == KEYS + 1 and duplicates(sandbox) == 0


def test_restore_still_works_after_an_ordinary_commit_on_the_branch(
    origin: Path, sandbox: SandboxServer
) -> None:
    runner = clone(origin, "cancelled")
    assert acquire(runner, "cancelled").exit_code == 0
    apply(runner, sandbox)
    artifact = keep_artifact(runner)  # cancelled before git-lease push
    discard(runner)
    ordinary = plain_commit(origin, "person")

    refused = job(origin, sandbox, "next")
    assert refused.exit_code == 1 and "leased by run cancelled" in refused.output
    assert duplicates(sandbox) == 0

    restored = cli_in(
        clone(origin, "admin"),
        "git-lease",
        "restore",
        "--from",
        str(artifact),
        "--run",
        "cancelled",
    )
    assert restored.exit_code == 0, restored.output
    assert git(origin, "rev-parse", f"{BRANCH}~1") == ordinary and lease_of(origin) == ""
    assert len(json.loads(branch_file(origin, "state/default.json"))["entries"]) == KEYS

    full_run(origin, sandbox, "after")
    assert len(sandbox.configs()) == KEYS and duplicates(sandbox) == 0


def test_a_commit_that_changes_the_state_during_the_lease_is_named_on_push(
    origin: Path, sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    full_run(origin, sandbox, "run-0")
    runner = clone(origin, "run-a")
    assert acquire(runner, "run-a").exit_code == 0
    plain_commit(origin, "person", "state/default.audit.jsonl")
    apply(runner, sandbox)
    pushed = push(runner)
    assert pushed.exit_code == 0, pushed.output
    assert "changed state/default.audit.jsonl" in pushed.output + caplog.text
    # the run's own audit log is on the branch, not the hand-made one
    assert "written by person" not in branch_file(origin, "state/default.audit.jsonl")


def test_a_lease_commit_of_the_older_protocol_at_the_tip_still_holds(
    origin: Path, sandbox: SandboxServer
) -> None:
    full_run(origin, sandbox, "run-0")
    person = origin.parent / "old-client"
    git(origin.parent, "clone", "--quiet", "--branch", BRANCH, str(origin), str(person))
    git(
        person,
        "commit",
        "--quiet",
        "--allow-empty",
        "-m",
        "coins-sync lease: run old-1\n\nheld\n\nCoins-Sync-Lease: held\nCoins-Sync-Run: old-1",
    )
    git(person, "push", "--quiet", "origin", BRANCH)
    refused = job(origin, sandbox, "new-1")
    assert refused.exit_code == 1 and "leased by run old-1" in refused.output
    released = cli_in(clone(origin, "admin"), "git-lease", "release", "--run", "old-1")
    assert released.exit_code == 0, released.output
    full_run(origin, sandbox, "new-2")
    assert len(sandbox.configs()) == KEYS and duplicates(sandbox) == 0


def test_pull_copies_the_branch_state_for_a_local_plan_and_guards_local_results(
    origin: Path, sandbox: SandboxServer
) -> None:
    full_run(origin, sandbox, "run-0")
    laptop = clone(origin, "laptop")
    pulled = cli_in(laptop, "git-lease", "pull")
    assert pulled.exit_code == 0, pulled.output
    assert "Pulled the state of coins-sync-state" in pulled.output
    assert json.loads((laptop / "state/default.json").read_text()) == json.loads(
        branch_file(origin, "state/default.json")
    )
    assert "(no changes)" in cli_in(laptop, "plan").output
    # a local journal may hold results the branch lacks: never replaced
    (laptop / "state/default.journal.jsonl").write_text("")
    refused = cli_in(laptop, "git-lease", "pull")
    assert refused.exit_code == 1 and "default.journal.jsonl holds results" in refused.output
    assert lease_of(origin) == ""  # pull takes no lease


def test_the_git_lease_refuses_an_environment_whose_state_is_in_postgres(origin: Path) -> None:
    runner = clone(origin, "pg-runner")
    (runner / "pyproject.toml").write_text(
        '[tool.coins-sync]\n[tool.coins-sync.environments.team]\nbackend = "postgres"\n'
    )
    refused = cli_in(runner, "git-lease", "acquire", "--env", "team")
    assert refused.exit_code == 1 and "the git lease does not apply to it" in refused.output
    assert lease_of(origin) == "" and "Traceback" not in refused.output


def test_a_fresh_clone_never_plans_creates_from_an_empty_state(
    origin: Path, sandbox: SandboxServer
) -> None:
    full_run(origin, sandbox, "run-0")  # the state lives on coins-sync-state, not on main
    laptop = clone(origin, "laptop")
    assert not (laptop / "state/default.json").exists()
    planned = cli_in(laptop, "plan")
    assert planned.exit_code == 1
    assert "git branch coins-sync-state (origin/coins-sync-state) holds it" in planned.output
    assert "`coins-sync git-lease pull`" in planned.output and "to create" not in planned.output
    applied = cli_in(laptop, "apply", "--yes", "--api-url", sandbox.url)
    assert applied.exit_code == 1 and "git-lease pull" in applied.output
    assert len(sandbox.configs()) == KEYS and duplicates(sandbox) == 0
    assert not (laptop / "state/default.json").exists()

    assert cli_in(laptop, "git-lease", "pull").exit_code == 0
    assert "(no changes)" in cli_in(laptop, "plan").output


def test_the_fresh_clone_guard_names_the_configured_branch(
    origin: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COINS_SYNC_STATE_BRANCH", "team-state")
    runner = clone(origin, "run-0")
    assert cli_in(runner, "git-lease", "acquire", "--run-id", "run-0").exit_code == 0
    apply(runner, sandbox)
    assert push(runner).exit_code == 0
    laptop = clone(origin, "laptop")
    planned = cli_in(laptop, "plan")
    assert planned.exit_code == 1 and "git branch team-state (origin/team-state)" in planned.output
    assert "`coins-sync git-lease pull --branch team-state`" in planned.output
    # a clone without the branch plans creates from an empty state as before
    monkeypatch.setenv("COINS_SYNC_STATE_BRANCH", "coins-sync-state")
    assert cli_in(laptop, "plan").exit_code == 0


def test_acquire_never_replaces_a_local_journal_the_branch_lacks(
    origin: Path, sandbox: SandboxServer
) -> None:
    full_run(origin, sandbox, "run-0")
    laptop = clone(origin, "laptop")
    assert cli_in(laptop, "git-lease", "pull").exit_code == 0
    journal = laptop / "state/default.journal.jsonl"
    journal.write_text("results of a local apply\n")
    refused = acquire(laptop, "laptop-run")
    assert refused.exit_code == 1 and "default.journal.jsonl holds results" in refused.output
    assert journal.read_text() == "results of a local apply\n" and lease_of(origin) == ""


def test_every_git_lease_subcommand_has_help_examples() -> None:
    from click.testing import CliRunner

    from coins_sync.cli import cli

    for name in ("acquire", "push", "restore", "release", "status", "pull"):
        shown = CliRunner().invoke(cli, ["git-lease", name, "--help"]).output
        assert "Example" in shown, name
        assert f"coins-sync git-lease {name} --env prod" in shown, name
