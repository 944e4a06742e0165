"""Every file coins-sync reads is bounded and must be a regular file; a state holding a
lone surrogate escape is a clear error, never a traceback (issue 20, item 12)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from coins_sync.inputs import InputFileError, loads_json, read_input
from tests.conftest import SAMPLE_RULES, Invoke, write

SURROGATE_STATE = (
    '{"version": 1, "lineage": "l-1", "serial": 1, "entries": [{"companyId": "A\\ud800", '
    '"configuration": "DEFAULT", "event": "MEAL", "amount": 1, "coinConfigId": "WCC1"}]}'
)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


def test_read_input_refuses_fifos_devices_folders_and_big_files(tmp_path: Path, fifo: Path) -> None:
    for path, why in ((fifo, "FIFO"), (Path("/dev/zero"), "device"), (tmp_path, "folder")):
        with pytest.raises(InputFileError, match=why) as caught:
            read_input(path)
        assert caught.value.filename == str(path)
    big = write(tmp_path / "big.json", b"x" * 101)
    with pytest.raises(InputFileError, match="over the 100-byte limit"):
        read_input(big, limit=100)
    assert read_input(big, limit=101) == b"x" * 101


def test_loads_json_refuses_a_lone_surrogate_but_keeps_pairs_and_escaped_text() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        loads_json(b'{"a": "x\\ud800"}')
    with pytest.raises(ValueError, match="lone surrogate"):
        loads_json('["\\udc00"]')
    assert loads_json(b'["\\ud83d\\ude00", "\\\\ud800"]') == ["\U0001f600", "\\ud800"]


@pytest.mark.parametrize(
    "args",
    [
        ("plan",),
        ("state", "list"),
        ("report", "--format", "csv"),
        ("report",),
        ("state", "rm", "A/DEFAULT/MEAL", "--yes"),
        ("apply", "--yes", "--api-url", "http://127.0.0.1:9"),
    ],
    ids=" ".join,
)
def test_a_lone_surrogate_in_the_state_is_a_clear_error(
    project: Path, invoke: Invoke, args: tuple[str, ...]
) -> None:
    write(project / "configs/a.yaml", SAMPLE_RULES)
    state = write(project / "state/default.json", SURROGATE_STATE)
    result = invoke(*args, env={"COINS_SYNC_TOKEN": "t"})
    assert result.exit_code == 1, result.output
    assert "state/default.json" in result.output
    assert "lone surrogate escape (\\ud800) is not text" in result.output
    assert state.read_text("utf-8") == SURROGATE_STATE


def test_a_lone_surrogate_in_the_journal_is_a_damaged_record(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", SAMPLE_RULES)
    record = {"kind": "intent", "lineage": "x", "companyId": "A\ud800"}
    line = json.dumps(record)  # ensure_ascii: the surrogate is written as an escape
    write(project / "state/default.json", SURROGATE_STATE.replace("A\\ud800", "A"))
    write(project / "state/default.json.journal", line + "\n")
    result = invoke("state", "list")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [
        ("state", "import", "--from", "pipe"),
        ("apply", "pipe", "--yes", "--api-url", "http://127.0.0.1:9"),
    ],
    ids=lambda args: args[0] + " " + args[1],
)
def test_a_fifo_is_refused_without_waiting(
    project: Path, invoke: Invoke, args: tuple[str, ...]
) -> None:
    write(project / "configs/a.yaml", SAMPLE_RULES)
    pipe = project / "pipe"
    os.mkfifo(pipe)
    done: list[str] = []
    worker = threading.Thread(
        target=lambda: done.append(invoke(*args, env={"COINS_SYNC_TOKEN": "t"}).output),
        daemon=True,
    )
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the reader so the test run can end, then fail
        with open(pipe, "wb"):
            pass
        worker.join(5)
        pytest.fail(f"{' '.join(args)} waited on a FIFO")
    assert "pipe" in done[0] and "not a regular file" in done[0], done[0]


def test_state_import_from_dev_zero_is_refused(project: Path, invoke: Invoke) -> None:
    result = invoke("state", "import", "--from", "/dev/zero", env={"COINS_SYNC_TOKEN": "t"})
    assert result.exit_code == 1
    assert "not a regular file" in result.output


def test_a_rule_file_that_is_a_fifo_is_a_problem_not_a_hang(project: Path, invoke: Invoke) -> None:
    os.mkfifo(project / "configs/pipe.yaml")
    done: list[str] = []
    worker = threading.Thread(
        target=lambda: done.append(invoke("validate", "configs/pipe.yaml").output), daemon=True
    )
    worker.start()
    worker.join(30)
    if worker.is_alive():
        with open(project / "configs/pipe.yaml", "wb"):
            pass
        worker.join(5)
        pytest.fail("validate waited on a FIFO")
    assert "configs/pipe.yaml:0:0: not a regular file" in done[0], done[0]


@pytest.mark.parametrize("source", ["surrogate", "/dev/zero", "fifo"])
def test_state_push_refuses_unreadable_sources_at_once(
    project: Path, invoke: Invoke, pg_dsn: str, source: str
) -> None:
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\nbackend = "postgres"\n',
    )
    if source == "surrogate":
        path = write(project / "old.json", SURROGATE_STATE)
        expected = "lone surrogate escape"
    elif source == "fifo":
        path = project / "old.json"
        os.mkfifo(path)
        expected = "not a regular file"
    else:
        path, expected = Path(source), "not a regular file"
    done: list[str] = []
    worker = threading.Thread(
        target=lambda: done.append(invoke("state", "push", "--from", str(path), "--yes").output),
        daemon=True,
    )
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "state push did not end"
    assert expected in done[0], done[0]
    assert invoke("state", "list").exit_code == 0
