"""Operator experience: commands behave the same from any folder of the project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def many_rules(count: int) -> str:
    lines = ["companyId: ACME", "rules:"]
    lines += [f"  - event: EVENT_{i:03}\n    amount: {i + 1}" for i in range(count)]
    return "\n".join(lines) + "\n"


def test_a_refused_token_stops_at_the_first_call_with_one_message(
    project: Path, sandbox: SandboxServer
) -> None:
    write(project / "configs" / "acme.yaml", many_rules(20))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")}
    env["COINS_SYNC_TOKEN"] = "not-the-right-token"
    done = subprocess.run(
        [sys.executable, "-m", "coins_sync", "apply", "--yes", "--api-url", sandbox.url],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert sandbox.stats["creates"] == 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "refused COINS_SYNC_TOKEN (401)" in errors[0], done.stderr
    assert "failed     ACME" not in done.stderr  # said once, not once per key
    assert "19 not started" in done.stdout
    audit = (project / "state" / "default.audit.jsonl").read_text().splitlines()
    assert len(audit) == 1  # one refused call, not one failed record per rule


def test_an_unreachable_api_stops_and_names_host_and_port(project: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write(project / "configs" / "acme.yaml", many_rules(5))
    done = run_cli(project, "apply", "--yes", "--api-url", f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"cannot reach the API at 127.0.0.1:{port}" in errors[0]
    assert "4 not started" in done.stdout


def test_apply_without_credentials_says_so_before_showing_a_plan(project: Path) -> None:
    write(project / "configs" / "acme.yaml", many_rules(2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")}
    done = subprocess.run(
        [sys.executable, "-m", "coins_sync", "apply", "--yes", "--api-url", "http://127.0.0.1:9"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "no API credentials" in done.stderr
    assert "to create" not in done.stdout  # no plan shown for an apply that cannot run


BAD_URLS = [
    ("ftp://coins.example.com", "is not an http(s) URL"),
    ("http://coins.example.com", "plain http to a non-loopback host"),
]


def test_validate_and_plan_refuse_an_api_url_that_apply_would_reject(project: Path) -> None:
    write(project / "configs" / "acme.yaml", many_rules(1))
    for url, message in BAD_URLS:
        write(
            project / "pyproject.toml",
            f'[tool.coins-sync.environments.default]\napi_url = "{url}"\n',
        )
        for command in (["validate"], ["plan"]):
            done = run_cli(project, *command)
            assert done.returncode == 1, (command, url, done.stdout)
            assert message in done.stderr and "Traceback" not in done.stderr
        flag = run_cli(project, "plan", "--api-url", url)
        assert flag.returncode == 1 and message in flag.stderr


def test_unfixable_drift_counts_as_a_change_with_the_state_rm_hint(
    project: Path, sandbox: SandboxServer
) -> None:
    import httpx

    write(project / "configs" / "acme.yaml", many_rules(2))
    assert run_cli(project, "apply", "--yes", "--api-url", sandbox.url).returncode == 0
    moved = next(c for c in sandbox.configs() if c["event"] == "EVENT_000")
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:  # changed behind our back
        response = client.patch(
            f"/api/v0/enkash-coins/{moved['coinConfigId']}",
            json={"event": "SOMETHING_ELSE", "amount": 99},
            headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        )
        assert response.status_code == 200
    offline = run_cli(project, "plan", "--detailed-exitcode", "--api-url", sandbox.url)
    assert offline.returncode == 0  # offline, nothing is known yet
    done = run_cli(project, "plan", "--refresh", "--detailed-exitcode", "--api-url", sandbox.url)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "1 need a person" in done.stdout
    assert "coins-sync state rm ACME/DEFAULT/EVENT_000" in done.stdout
    assert "amount is 99 on the server, 1 in state" in done.stdout  # its amount drift too
    assert "(changes present)" in done.stdout


def test_small_things_validate_configs_hidden_folders_one_environment(project: Path) -> None:
    write(project / "rules" / "acme.yaml", many_rules(1))
    write(project / "rules" / ".backup" / "broken.yaml", "companyId: [unclosed\n")
    write(project / "pyproject.toml", "[tool.coins-sync.environments.only]\n")
    done = run_cli(project, "validate", "--configs", "rules")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "valid: 1 rule in 1 file"  # hidden folder skipped
    listed = run_cli(project, "state", "list")
    assert listed.returncode == 0, listed.stderr
    assert "state/only.json" in listed.stdout  # the only environment is used


def test_several_environments_without_a_default_say_how_to_pick(project: Path) -> None:
    write(
        project / "pyproject.toml",
        "[tool.coins-sync.environments.a]\n[tool.coins-sync.environments.b]\n",
    )
    done = run_cli(project, "validate")
    assert done.returncode == 1
    assert "pass --env NAME" in done.stderr and "(a, b)" in done.stderr


def sandbox_banner(host: str, token: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")}
    if token:
        env["COINS_SYNC_TOKEN"] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "coins_sync", "sandbox", "--port", "0", "--host", host],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    import queue
    import threading
    import time

    assert proc.stderr is not None
    stream = proc.stderr
    received: queue.Queue[str] = queue.Queue()
    # a reader thread, so that a sandbox that never writes cannot block the test
    threading.Thread(
        target=lambda: [received.put(x) for x in iter(stream.readline, "")], daemon=True
    ).start()
    try:
        deadline = time.monotonic() + 20
        lines: list[str] = []
        while len(lines) < 8 and (left := deadline - time.monotonic()) > 0:
            try:
                line = received.get(timeout=min(left, 0.5))
            except queue.Empty:
                if proc.poll() is not None and received.empty():
                    break  # exited and everything it wrote was read
                continue
            lines.append(line)
            if "listening" in line:
                proc.terminate()  # what follows the banner is read until the pipe closes
        return "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


def test_sandbox_warns_without_credentials_and_off_loopback() -> None:
    quiet = sandbox_banner("127.0.0.1", "a-token")
    assert "listening" in quiet and "Warning" not in quiet
    bare = sandbox_banner("127.0.0.1", None)
    assert "Warning: no credentials in the environment" in bare
    wide = sandbox_banner("0.0.0.0", "a-token")
    assert "Warning: listening on 0.0.0.0" in wide


@pytest.mark.parametrize("target", ["demo", "demo-postgres"])
def test_make_demo_refuses_a_busy_port_and_fails_loudly(target: str) -> None:
    """`make demo` (and its postgres twin) must never talk to whatever already listens
    on its port, and must stop at the first failing step."""
    import shutil
    import socket

    from tests.conftest import REPO
    from tests.pg_fixture import find_bin

    if not (REPO / ".venv" / ".installed").exists() or shutil.which("make") is None:
        raise AssertionError("make test installs .venv first; run this suite via make test")
    if target == "demo-postgres" and find_bin() is None and os.environ.get("CI") != "true":
        pytest.skip("no PostgreSQL server binaries on this developer machine")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            ["make", "-s", target, f"SANDBOX_PORT={port}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode != 0
    assert "the sandbox did not start" in done.stderr
    assert "Address already in use" in done.stderr
    assert "== coins-sync plan" not in done.stdout  # stopped before any step ran


def test_verbose_after_the_command_and_the_saved_plan_hint_applies(
    project: Path, sandbox: SandboxServer
) -> None:
    write(project / "rules" / "acme.yaml", many_rules(2))
    done = run_cli(
        project, "plan", "-vv", "--configs", "rules", "--out", "p.json", "--api-url", sandbox.url
    )
    assert done.returncode == 0, done.stderr
    assert "project root:" in done.stderr and "environment default:" in done.stderr
    hint = done.stderr.split("apply it with `", 1)[1].split("`", 1)[0]
    assert hint == f"coins-sync apply p.json --configs rules --api-url {sandbox.url}"
    args = hint.split()[1:]
    applied = run_cli(project, *args, "--yes")  # the hint alone reaches the same API
    assert applied.returncode == 0, applied.stderr  # the hint's command is not stale
    assert len(sandbox.configs()) == 2


def test_settings_type_message_uses_the_right_article(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.coins-sync.environments.x]\nmax_amount = "a"\n')
    done = run_cli(project, "validate")
    assert done.returncode == 1
    assert "max_amount must be an integer, got 'a'" in done.stderr


def test_lock_message_offers_lock_timeout_only_when_it_was_not_given(project: Path) -> None:
    from coins_sync.errors import LockError
    from coins_sync.state.file import FileStateStore

    store = FileStateStore(project / "state" / "default.json")
    with store.lock("first holder"):
        other = FileStateStore(project / "state" / "default.json")
        messages = []
        for timeout in (0.0, 0.3):
            try:
                with other.lock("second", timeout):
                    raise AssertionError("the lock was taken twice")
            except LockError as e:
                messages.append(str(e))
    assert "pass --lock-timeout SECONDS" in messages[0]
    assert "after waiting 0.3s" in messages[1]
    assert "--lock-timeout" not in messages[1]


def test_a_log_line_during_progress_starts_on_its_own_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from coins_sync.console import Progress, setup_logging

    setup_logging(0)
    progress = Progress(enabled=True)
    try:
        progress(3, 10)
        logging.getLogger("coins_sync.apply").warning("interrupted: finishing requests")
        progress(4, 10)
    finally:
        progress.close()
    err = capsys.readouterr().err
    assert "3/10\nWARNING: interrupted: finishing requests\n" in err
    assert err.endswith("4/10\n")
