"""The file state store: deterministic atomic writes, corruption, journal and lock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.errors import LockError, StateError
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import JournalKind, JournalRecord
from coins_sync.state.model import State, StateEntry

K1 = RuleKey("ACME", "DEFAULT", "A")
K2 = RuleKey("ACME", "DEFAULT", "B")


def test_first_write_creates_lineage_and_serial_1(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "state" / "dev.json")
    written = store.write(State.new().with_entry(StateEntry(K2, 3, "WCC2")))
    assert written.serial == 1 and len(written.lineage) == 36
    data = json.loads(store.path.read_text())
    assert data["version"] == 1 and data["serial"] == 1
    assert data["entries"] == [
        {
            "amount": 3,
            "coinConfigId": "WCC2",
            "companyId": "ACME",
            "configuration": "DEFAULT",
            "event": "B",
        }
    ]


def test_same_content_same_bytes_and_serial_only_grows_on_change(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "s.json")
    first = store.write(
        State.new().with_entry(StateEntry(K2, 3, "W2")).with_entry(StateEntry(K1, 1, "W1"))
    )
    before = store.path.read_bytes()
    again = store.write(store.read())
    assert again.serial == first.serial
    assert store.path.read_bytes() == before
    assert not store.backup_path.exists()
    changed = store.write(store.read().with_entry(StateEntry(K1, 2, "W1")))
    assert changed.serial == first.serial + 1
    assert store.backup_path.read_bytes() == before
    keys = [e["event"] for e in json.loads(store.path.read_text())["entries"]]
    assert keys == ["A", "B"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"version": 1, "lineage": "x", "serial": 1, "entries": [', "corrupt or truncated"),
        (b'{"version": 7, "lineage": "x", "serial": 1, "entries": []}', "unknown state version 7"),
        (b"\xff\xfe", "not UTF-8"),
        (
            b'{"version": 1, "lineage": "x", "serial": 1, "entries": [{"companyId": "A"}]}',
            r"entries\[0\]",
        ),
    ],
)
def test_bad_state_is_an_error_and_left_untouched(
    tmp_path: Path, content: bytes, message: str
) -> None:
    store = FileStateStore(tmp_path / "s.json")
    store.path.write_bytes(content)
    with pytest.raises(StateError, match=message):
        store.read()
    assert store.path.read_bytes() == content


def test_hand_written_minimal_state_loads(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "s.json")
    store.path.write_text(
        '{"version": 1, "lineage": "hand-made", "serial": 4, "entries": ['
        '{"companyId": "ACME", "configuration": "DEFAULT", "event": "A", "amount": 6, '
        '"coinConfigId": "WCC817428"}]}'
    )
    loaded = store.read()
    assert loaded.serial == 4 and loaded.lineage == "hand-made"
    assert loaded.entries[K1] == StateEntry(K1, 6, "WCC817428")


def test_journal_results_fold_and_open_intents_become_uncertain(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "s.json")
    base = store.write(State.new())
    journal = store.journal(base)
    journal.append(JournalRecord(JournalKind.INTENT, K1, 5))
    journal.append(JournalRecord(JournalKind.RESULT, K1, 5, "created", "WCC1"))
    journal.append(JournalRecord(JournalKind.INTENT, K2, 7))
    journal.close()
    seen = store.read()  # read-only view
    assert seen.entries[K1].coin_config_id == "WCC1"
    assert K2 in seen.uncertain
    assert store.journal_path.exists()
    recovered, damaged = store.recover()
    assert damaged == ()
    assert not store.journal_path.exists()
    assert recovered.serial == base.serial + 1
    assert K2 in store.read().uncertain


def test_torn_journal_tail_is_dropped_and_reported(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "s.json")
    base = store.write(State.new())
    journal = store.journal(base)
    journal.append(JournalRecord(JournalKind.RESULT, K1, 5, "created", "WCC1"))
    journal.close()
    with open(store.journal_path, "ab") as handle:
        handle.write(b'{"kind":"result","lin')
    recovered, damaged = store.recover()
    assert recovered.entries[K1].coin_config_id == "WCC1"
    assert len(damaged) == 2 and "torn last record" in damaged[0]


def test_journal_from_another_state_is_refused(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path / "s.json")
    store.write(State.new())
    store.journal_path.write_text(
        '{"kind":"intent","lineage":"other","companyId":"A","configuration":"D",'
        '"event":"E","amount":1}\n'
    )
    with pytest.raises(StateError, match="another state"):
        store.recover()


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from coins_sync.state.file import FileStateStore
    with FileStateStore(Path(sys.argv[1])).lock("apply --yes"):
        print("locked", flush=True)
        time.sleep(30)
    """
)


def test_lock_held_by_another_process_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        store = FileStateStore(path)
        with pytest.raises(LockError) as info, store.lock("state rm"):
            pass
        assert f"pid {holder.pid}" in str(info.value)
        assert "apply --yes" in str(info.value)
        holder.kill()
        holder.wait(timeout=10)
        with store.lock("after kill"):  # a killed holder's lock is released by the OS
            pass
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
