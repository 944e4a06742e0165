"""Issue 23 item 7: messages that say what happened, once, in plain grammar."""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coins_sync.sandbox import SandboxServer
from tests.conftest import SANDBOX_TOKEN, Invoke, write
from tests.loopback import self_signed_certificate

TOKEN = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}


def test_one_of_each_is_singular(project: Path, invoke: Invoke, sandbox: SandboxServer) -> None:
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: GIFT\n    amount: 1\n"
    )
    plan = invoke("plan").output
    assert "1 create for 1 company new to this state" in plan
    assert "creates" not in plan and "companies" not in plan
    assert invoke("validate").output == "valid: 1 rule in 1 file\n"
    report = invoke("report").output
    assert "1 rule in all" in report and "rules in all" not in report


def test_an_import_404_is_printed_once(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    write(
        project / "configs/acme.yaml",
        "companyId: ACME\nrules:\n  - event: GIFT\n    amount: 1\n    coinConfigId: WCC404404\n",
    )
    result = invoke("apply", "--yes", "--api-url", sandbox.url, env=TOKEN)
    assert result.exit_code == 1
    assert result.output.count("WCC404404 was not found on the server (404)") == 1, result.output


@pytest.fixture
def self_signed() -> Iterator[str]:
    """An https server on 127.0.0.1 whose certificate no CA signed."""
    import tempfile

    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    with tempfile.TemporaryDirectory(dir=folder) as where:
        cert_file, key_file = self_signed_certificate(Path(where), "127.0.0.1")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)

        class Quiet(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield f"https://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


def test_a_tls_certificate_failure_is_named_as_one(
    project: Path, invoke: Invoke, self_signed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    result = invoke(
        "state", "import", "ACME/DEFAULT/GIFT", "WCC1", "--api-url", self_signed, env=TOKEN
    )
    assert result.exit_code == 1
    assert "TLS certificate was refused" in result.output
    assert "self-signed certificate" in result.output or "self signed" in result.output
    assert "cannot reach the API" not in result.output
    assert "Traceback" not in result.output


def test_refused_commands_leave_no_lock_files_or_folders(
    project: Path, invoke: Invoke, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: GIFT\n    amount: 1\n"
    )
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    monkeypatch.chdir(project / "configs")  # no settings: the state would go to configs/state/
    # refused under the lock: configs/configs does not exist
    refused = invoke("apply", "--api-url", sandbox.url, "--yes", env=TOKEN)
    assert refused.exit_code == 1 and "no such file or folder" in refused.output
    assert invoke("state", "rm", "ACME/DEFAULT/GIFT", "--yes").exit_code == 1
    assert invoke("state", "rm", "A/B/C", "--yes", "--state", "deep/er/s.json").exit_code == 1
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    # a command that writes the state keeps its lock file beside it
    monkeypatch.chdir(project)
    assert invoke("apply", "--api-url", sandbox.url, "--yes", env=TOKEN).exit_code == 0
    assert (project / "state/default.json").is_file()


def test_a_lock_on_a_removed_lock_file_is_taken_again(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safe side of removing lock files: a waiter whose lock landed on a file its
    holder removed (between the waiter's open and its lock) takes the lock again on the
    file now at the path, so two runs never both hold the lock of one state."""
    import filelock

    from coins_sync.state.file import FileStateStore

    real = filelock.FileLock.acquire
    calls: list[int] = []

    def acquire(self: filelock.FileLock, *args: object, **kwargs: object) -> object:
        got = real(self, *args, **kwargs)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) == 1:  # as if the earlier holder removed the file just now
            Path(self.lock_file).unlink()
        return got

    monkeypatch.setattr(filelock.FileLock, "acquire", acquire)
    store = FileStateStore(project / "state" / "x.json")
    with store.lock("second"):
        assert len(calls) == 2  # the lock on the removed file was not trusted
        assert store.lock_path.exists()
        other = filelock.FileLock(str(store.lock_path), is_singleton=False)
        with pytest.raises(filelock.Timeout):
            other.acquire(timeout=0)  # the file at the path is the one held


def test_a_broken_symlink_in_configs_is_an_error(project: Path, invoke: Invoke) -> None:
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: GIFT\n    amount: 1\n"
    )
    (project / "configs" / "globex.yaml").symlink_to(project / "elsewhere" / "globex.yaml")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/globex.yaml:0:0: broken symbolic link" in result.output
    plan = invoke("plan")
    assert plan.exit_code == 1 and "broken symbolic link" in plan.output
    write(project / "elsewhere/globex.yaml", "companyId: GLOBEX\nrules: []\n")
    assert invoke("validate").output == "valid: 1 rule in 2 files\n"


def test_state_list_shows_pending_updates(project: Path, invoke: Invoke) -> None:
    from coins_sync.configs.model import RuleKey
    from coins_sync.state.model import State, StateEntry, serialize

    key, other = RuleKey("ACME", "DEFAULT", "GIFT"), RuleKey("ACME", "DEFAULT", "MEAL")
    state = State(
        "lin", 3, {key: StateEntry(key, 6, "WCC1", pending=9), other: StateEntry(other, 2, "WCC2")}
    )
    write(project / "state/default.json", serialize(state))
    text = invoke("state", "list").output
    gift = next(line for line in text.splitlines() if "GIFT" in line)
    assert "WCC1 (pending: update to 9, outcome unknown" in gift
    assert "pending" not in next(line for line in text.splitlines() if "MEAL" in line)
    assert "2 entries, 0 uncertain, 1 pending in state/default.json" in text
    data = json.loads(invoke("state", "list", "--format", "json").output)
    assert [e.get("pendingAmount") for e in data["entries"]] == [9, None]
