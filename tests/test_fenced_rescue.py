"""A rescue file is folded only over entries it is newer than (issue 19, case 5).

Every journal and rescue line carries the state serial it was written under. A file
written under an older serial (a stuck run, a state replaced by a `git pull` meanwhile)
never overwrites what the state records now: an update it holds becomes an update whose
outcome is unknown (read back before anything is planned on it), the file is kept aside
and the command says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import CoinsClient, RemoteConfig
from coins_sync.sandbox import SandboxServer
from coins_sync.state.file import FileStateStore
from coins_sync.state.model import State, StateEntry, serialize
from tests.conftest import SANDBOX_TOKEN, Invoke, write

ENV = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
A = RuleKey("ACME", "DEFAULT", "A_EVENT")


def rules(amount: int) -> str:
    return "companyId: ACME\nrules:\n" + "".join(
        f"  - event: {name}\n    amount: {amount + i}\n" for i, name in enumerate("ABCD")
    ).replace("event: A\n", "event: A_EVENT\n").replace("event: B\n", "event: B_EVENT\n").replace(
        "event: C\n", "event: C_EVENT\n"
    ).replace("event: D\n", "event: D_EVENT\n")


def apply(invoke: Invoke, sandbox: SandboxServer) -> Any:
    return invoke("apply", "--yes", "--parallelism", "1", "--api-url", sandbox.url, env=ENV)


def server_amount(sandbox: SandboxServer, event: str) -> int:
    return next(int(c["amount"]) for c in sandbox.configs() if c["event"] == event)


def test_a_stale_rescue_file_never_overwrites_newer_data(
    project: Path, invoke: Invoke, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStateStore(project / "state" / "default.json")
    write(project / "configs/acme.yaml", rules(5))
    assert apply(invoke, sandbox).exit_code == 0
    write(project / "configs/acme.yaml", rules(6))  # four updates: A 5 -> 6, ...

    original = CoinsClient.update
    calls: list[str] = []

    def update(self: CoinsClient, config_id: str, amount: int, **kw: Any) -> RemoteConfig:
        remote = original(self, config_id, amount, **kw)
        calls.append(config_id)
        if len(calls) == 1:  # meanwhile another run sets A to 9 and its state is pulled
            original(self, config_id, 9)
            current = store.read_stored()
            entries = dict(current.entries)
            entries[A] = StateEntry(A, 9, entries[A].coin_config_id)
            newer = State(lineage=current.lineage, serial=current.serial + 3, entries=entries)
            store.path.write_bytes(serialize(newer))
        return remote

    monkeypatch.setattr(CoinsClient, "update", update)
    done = apply(invoke, sandbox)
    assert done.exit_code == 1 and store.rescue_path.exists(), done.output
    monkeypatch.setattr(CoinsClient, "update", original)
    assert server_amount(sandbox, "A_EVENT") == 9  # the other run's update came last

    # the rescue file's A = 6 is older than the state's A = 9: not folded over it
    listed = invoke("state", "list", "--format", "json", env=ENV)
    assert "written under another state serial" in listed.output
    planned = invoke("plan", "--api-url", sandbox.url, env=ENV)
    assert planned.exit_code == 0, planned.output
    assert "1 to update" in planned.output and "A_EVENT" in planned.output, planned.output
    assert "no changes" not in planned.output

    again = apply(invoke, sandbox)
    assert again.exit_code == 0, again.output
    assert "written under another state serial" in again.output
    assert server_amount(sandbox, "A_EVENT") == 6
    assert store.read_stored().entries[A].amount == 6
    assert not store.rescue_path.exists()
    assert list(store.path.parent.glob("default.rescue.jsonl.stale-*"))  # kept aside
    assert "(no changes)" in invoke("plan", "--refresh", "--api-url", sandbox.url, env=ENV).output


def test_a_rescue_file_of_the_current_serial_folds_as_written(
    project: Path, invoke: Invoke, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that only lost its final fold (a full disk): its rescue file is current."""
    store = FileStateStore(project / "state" / "default.json")
    write(project / "configs/acme.yaml", rules(5))
    assert apply(invoke, sandbox).exit_code == 0
    write(project / "configs/acme.yaml", rules(6))
    original = FileStateStore.write

    def refuse_final_write(self: FileStateStore, state: State) -> State:
        if state.entries.get(A) is not None and state.entries[A].amount == 6:
            from coins_sync.errors import StateError

            raise StateError(f"{self.path}: No space left on device")
        return original(self, state)

    monkeypatch.setattr(FileStateStore, "write", refuse_final_write)
    assert apply(invoke, sandbox).exit_code == 1
    monkeypatch.setattr(FileStateStore, "write", original)
    assert store.rescue_path.exists()
    again = apply(invoke, sandbox)
    assert again.exit_code == 0, again.output
    assert "another state serial" not in again.output
    assert [store.read_stored().entries[k].amount for k in sorted(store.read_stored().entries)] == [
        6,
        7,
        8,
        9,
    ]
    assert not list(store.path.parent.glob("*.stale-*"))


BOOKKEEPING = [
    "state/default.journal.jsonl",
    "state/default.rescue.jsonl",
    "state/default.audit.jsonl",
    "state/default.json.lock",
    "state/default.json.lock.json",
    "state/default.json.backup",
    "state/team.pg-rescue.jsonl",
    "state/other.rescue.jsonl.stale-1700000000",
]


@pytest.mark.parametrize("target", BOOKKEEPING)
@pytest.mark.parametrize(
    "command", [("state", "pull", "--to"), ("plan", "--out")], ids=["state-pull", "plan-out"]
)
def test_no_writing_command_writes_onto_a_file_that_travels_with_a_state(
    project: Path,
    invoke: Invoke,
    sandbox: SandboxServer,
    target: str,
    command: tuple[str, ...],
) -> None:
    write(project / "configs/acme.yaml", rules(5))
    assert apply(invoke, sandbox).exit_code == 0
    path = project / target
    write(path, b"precious\n")
    done = invoke(*command, target, env=ENV)
    assert done.exit_code == 1, done.output
    assert f"refusing to write the {'state' if 'pull' in command else 'plan'} onto" in done.output
    assert "Traceback" not in done.output
    assert path.read_bytes() == b"precious\n"


def test_state_pull_of_a_postgres_environment_never_overwrites_its_rescue_file(
    project: Path, invoke: Invoke
) -> None:
    """Refused before the database is even asked (no DSN is set here)."""
    write(
        project / "pyproject.toml",
        '[tool.coins-sync]\n[tool.coins-sync.environments.team]\nbackend = "postgres"\n'
        'state = "state/team.json"\n',
    )
    rescue = write(project / "state/team.pg-rescue.jsonl", b'{"kind":"result"}\n')
    done = invoke("state", "pull", "--env", "team", "--to", "state/team.pg-rescue.jsonl")
    assert done.exit_code == 1 and "refusing to write the state onto" in done.output
    assert rescue.read_bytes() == b'{"kind":"result"}\n'
    assert invoke("state", "pull", "--env", "team", "--to", "backup.json").exit_code == 1
