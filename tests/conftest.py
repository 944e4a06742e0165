"""Shared fixtures: a CliRunner and a project folder to run the CLI in."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from coins_sync.cli import cli
from coins_sync.sandbox import SandboxOptions, SandboxServer

REPO = Path(__file__).resolve().parent.parent
# The official YAML test suite's inputs, vendored with their MIT licence.
CORPUS = REPO / "tests" / "data" / "yaml-test-suite"

Invoke = Callable[..., Result]

#: A valid rule file, the seed of the mutation and hostile-input tests.
SAMPLE_RULES = b"""\
# yaml-language-server: $schema=../schemas/rules.schema.json
companyId: CEKEKCARDS
configuration: DEFAULT
rules:
  - event: MEAL_CARD_PAYMENT
    amount: 6
  - event: INVOICE_PAYMENT
    amount: 10
    configuration: CUSTOM
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory with a configs/ folder; the CLI runs inside it."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "COINS_SYNC_TOKEN",
        "COINS_SYNC_CLIENT_ID",
        "COINS_SYNC_CLIENT_SECRET",
        "COINS_SYNC_USERNAME",
        "COINS_SYNC_PASSWORD",
        "COINS_SYNC_ENV",
        "COINS_SYNC_COOKIE",
        "NO_COLOR",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "configs").mkdir()
    return tmp_path


@pytest.fixture
def invoke(project: Path) -> Invoke:
    """Run the CLI in the project folder and return click's Result."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False)

    return run


def write(path: Path, text: str | bytes) -> Path:
    """Write a file, creating folders; bytes are written as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


SANDBOX_TOKEN = "sandbox-token-7f3a9c"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """A real sandbox API on 127.0.0.1 (a free port) that accepts SANDBOX_TOKEN."""
    with SandboxServer(SandboxOptions(port=0, token=SANDBOX_TOKEN)) as server:
        yield server


def server_configs(server: SandboxServer) -> list[dict[str, Any]]:
    return server.configs()


# --- PostgreSQL (team state) ------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[Callable[..., SandboxServer]]:
    """Start sandboxes with any options (accepting SANDBOX_TOKEN); all stopped after."""
    started: list[SandboxServer] = []

    def start(**options: Any) -> SandboxServer:
        server = SandboxServer(SandboxOptions(port=0, token=SANDBOX_TOKEN, **options))
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API client retries with millisecond backoffs (the CLI builds its options)."""
    import functools

    from coins_sync.enkash import ClientOptions

    fast = functools.partial(ClientOptions, backoff_initial=0.001, backoff_max=0.002)
    monkeypatch.setattr("coins_sync.enkash.ClientOptions", fast)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throw-away PostgreSQL cluster for the session (see tests/pg_fixture.py).

    Without the server binaries the postgres tests are skipped on a developer's machine,
    but under CI=true that is a failure: CI must run them (`.ci/run` installs them).
    """
    import shutil
    import tempfile

    from tests.pg_fixture import find_bin, start_cluster

    if find_bin() is None:
        message = "PostgreSQL server binaries (pg_ctl) not found"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must run the postgres tests")
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="coins-sync-pg-"))
    cluster = start_cluster(root)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database in the session cluster; COINS_SYNC_PG_DSN points at it."""
    dsn: str = pg_cluster.new_database()
    monkeypatch.setenv("COINS_SYNC_PG_DSN", dsn)
    return dsn


@pytest.fixture(autouse=True)
def _coins_sync_logger_as_new() -> None:
    """A CLI run earlier in this worker gave the ``coins_sync`` logger its own stderr
    handler and stopped propagation (console.setup_logging), so caplog would see nothing
    of a later test, depending on which tests xdist put before it. Each test starts
    from the logger's defaults."""
    log = logging.getLogger("coins_sync")
    log.handlers[:] = []
    log.propagate = True
    log.setLevel(logging.NOTSET)
