"""The apply executor with hand-written fakes: a fake API and a fake journal.

What is proved here: a failing checkpoint or journal write stops new sends and ends in
:class:`ApplyStoppedError` (exit 1 at the CLI, with no traceback); results are folded
mid-run; a create the server confirmed is kept even when its journal line is lost; the
workers are stopped and joined before the state lock is released and the client closed,
whatever raised; a stop never waits behind a token fetch's retries; and every send is
checked against the configs at the moment it goes out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from coins_sync.apply import (
    ApplyRequest,
    ApplyStoppedError,
    Executor,
    run_apply,
    wait,
)
from coins_sync.configs.model import RuleKey
from coins_sync.enkash import (
    TOKEN_PATH,
    ClientOptions,
    CoinsClient,
    Credentials,
    RemoteConfig,
    make_http_client,
)
from coins_sync.errors import ApiError, LockError, StateError
from coins_sync.plan.reconcile import Action, Change, Plan
from coins_sync.sandbox import SandboxServer
from coins_sync.settings import load_settings
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import JournalRecord, Snapshot
from coins_sync.state.model import State, StateEntry
from coins_sync.state.store import StateStore
from coins_sync.workspace import Workspace
from tests.conftest import REPO, SANDBOX_TOKEN, write

KEYS = [RuleKey("ACME", "DEFAULT", event) for event in ("A_EVENT", "B_EVENT", "C_EVENT")]
DESIRED = {key: 5 + index for index, key in enumerate(KEYS)}
#: Generous bound for anything that must be quick; the old code took minutes or forever.
PROMPT = 5.0


# -- fakes ------------------------------------------------------------------------------


class FakeApi:
    """Creates and updates in memory; records every call that reached it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[tuple[str, RuleKey, int]] = []
        self.cancelled = 0
        self.closed = False

    def create(self, key: RuleKey, amount: int) -> RemoteConfig:
        with self.lock:
            self.sent.append(("create", key, amount))
            return RemoteConfig(f"C{len(self.sent)}", key, amount)

    def update(
        self, coin_config_id: str, amount: int, *, key: RuleKey | None = None
    ) -> RemoteConfig:
        assert key is not None
        with self.lock:
            self.sent.append(("update", key, amount))
        return RemoteConfig(coin_config_id, key, amount)

    def get(self, coin_config_id: str) -> RemoteConfig:
        raise AssertionError("apply never reads")

    def cancel(self) -> None:
        self.cancelled += 1

    def close(self) -> None:
        self.closed = True


class FakeJournal:
    """The Journal protocol in memory. ``append_fails`` and ``checkpoint_fails`` decide,
    per record and per checkpoint call (1-based), whether the write fails."""

    def __init__(
        self,
        append_fails: Callable[[JournalRecord], bool] = lambda record: False,
        checkpoint_fails: Callable[[int], bool] = lambda call: False,
    ) -> None:
        self.mutex = threading.Lock()
        self.append_fails = append_fails
        self.checkpoint_fails = checkpoint_fails
        self.records: list[JournalRecord] = []
        self.calls = 0
        self.folds: list[State] = []  # every successful checkpoint, in order
        self.closed = False

    def append(
        self,
        record: JournalRecord,
        book: Callable[[], None] | None = None,
        *,
        book_on_failure: bool = False,
    ) -> None:
        with self.mutex:
            if self.append_fails(record):
                if book is not None and book_on_failure:
                    book()
                raise StateError("fake journal: cannot append (disk full)")
            self.records.append(record)
            if book is not None:
                book()

    def checkpoint(self, snapshot: Snapshot) -> State:
        with self.mutex:
            self.calls += 1
            state, _ = snapshot()
            if self.checkpoint_fails(self.calls):
                raise StateError("fake journal: cannot write the state (disk full)")
            written = replace(state, serial=state.serial + 1)
            self.folds.append(written)
            return written

    def close(self) -> None:
        self.closed = True


def creates(keys: Iterable[RuleKey] = KEYS, amounts: Mapping[RuleKey, int] = DESIRED) -> Plan:
    changes = tuple(Change(Action.CREATE, key, amounts[key]) for key in keys)
    return Plan(changes, managed=0)


def executor_for(
    api: FakeApi | CoinsClient,
    journal: FakeJournal,
    *,
    state: State | None = None,
    desired: Mapping[RuleKey, int] = DESIRED,
    **options: object,
) -> Executor:
    return Executor(
        api,
        journal,
        state or State(lineage="L1", serial=1),
        desired=desired,
        **options,  # type: ignore[arg-type]
    )


def run(executor: Executor, plan: Plan) -> None:
    threads = executor.start(plan)
    wait(executor, threads, tick=0.01)


# -- folds and failures -----------------------------------------------------------------


def test_fold_every_1_checkpoints_after_each_result_during_the_run() -> None:
    journal = FakeJournal()
    executor = executor_for(FakeApi(), journal, parallelism=1, fold_every=1)
    run(executor, creates())
    # before finish(): three mid-run folds, each with one more entry
    assert [len(state.entries) for state in journal.folds] == [1, 2, 3]
    report = executor.finish()
    assert report.ok and report.state is not None
    assert set(report.state.entries) == set(KEYS)
    assert journal.closed


def test_a_failing_mid_run_checkpoint_stops_new_sends_and_finish_raises() -> None:
    api = FakeApi()
    journal = FakeJournal(checkpoint_fails=lambda call: call == 1)  # the final fold works
    executor = executor_for(api, journal, parallelism=1, fold_every=1)
    run(executor, creates())
    assert len(api.sent) == 1  # nothing new after the failure
    with pytest.raises(ApplyStoppedError, match="cannot write the state") as stopped:
        executor.finish()
    message = str(stopped.value)
    assert "nothing new was sent after it" in message
    assert "recorded in the state" in message
    report = stopped.value.report
    assert (report.created, report.not_started, report.ok) == ([KEYS[0]], 2, True)
    assert report.state is not None and report.state.entries[KEYS[0]].coin_config_id == "C1"
    assert journal.closed


def test_a_failing_final_checkpoint_is_an_error_too() -> None:
    journal = FakeJournal(checkpoint_fails=lambda call: True)
    executor = executor_for(FakeApi(), journal, parallelism=2)
    run(executor, creates())
    with pytest.raises(ApplyStoppedError, match="the journal and the audit log keep"):
        executor.finish()
    assert journal.closed


def test_a_confirmed_create_whose_journal_line_fails_is_still_kept() -> None:
    api = FakeApi()
    journal = FakeJournal(append_fails=lambda record: record.kind == "result")
    executor = executor_for(api, journal, parallelism=1)
    run(executor, creates())
    assert api.sent == [("create", KEYS[0], DESIRED[KEYS[0]])]  # then it stopped
    with pytest.raises(ApplyStoppedError, match="cannot append") as stopped:
        executor.finish()
    report = stopped.value.report
    assert report.created == [KEYS[0]]
    # the server's id is booked into the final fold although its journal line was lost
    assert journal.folds[-1].entries[KEYS[0]] == StateEntry(KEYS[0], DESIRED[KEYS[0]], "C1")
    assert report.state is not None and KEYS[0] in report.state.entries


def test_a_worker_error_stops_every_worker() -> None:
    class BrokenApi(FakeApi):
        def create(self, key: RuleKey, amount: int) -> RemoteConfig:
            super().create(key, amount)
            raise RuntimeError("bug in the client")

    api = BrokenApi()
    many = [RuleKey("ACME", "DEFAULT", f"E{i}") for i in range(40)]
    desired = dict.fromkeys(many, 1)
    executor = executor_for(api, FakeJournal(), desired=desired, parallelism=4)
    run(executor, creates(many, desired))
    assert len(api.sent) <= 4  # each worker stops at its first failure, at the latest
    with pytest.raises(ApplyStoppedError, match="unexpected RuntimeError: bug in the client"):
        executor.finish()


# -- the send-time check against the configs -------------------------------------------


def test_a_change_the_configs_do_not_ask_for_is_never_sent() -> None:
    api = FakeApi()
    journal = FakeJournal()
    gone, changed, kept = KEYS
    desired = {changed: 99, kept: DESIRED[kept]}  # `gone` left the configs
    state = State(lineage="L1", serial=1, entries={changed: StateEntry(changed, 1, "X9")})
    plan = Plan(
        (
            Change(Action.CREATE, gone, DESIRED[gone]),
            Change(Action.UPDATE, changed, 7, before=1, coin_config_id="X9"),
            Change(Action.CREATE, kept, DESIRED[kept]),
        ),
        managed=1,
    )
    executor = executor_for(api, journal, state=state, desired=desired, parallelism=1)
    run(executor, plan)
    report = executor.finish()
    assert api.sent == [("create", kept, DESIRED[kept])]
    assert dict(report.failed) == {
        gone: f"not sent: {gone} is not in the configs",
        changed: "not sent: the configs say amount 99, the plan 7",
    }
    assert [r.key for r in journal.records if r.kind == "intent"] == [kept]  # no intent
    assert report.state is not None and report.state.entries[changed].amount == 1


# -- the progress callback, the lock and the client -------------------------------------


class GatedApi(FakeApi):
    """Every create waits until cancel() or close(); then it checks whether the state
    lock is still held (it must be: the caller may not release it under a live worker)."""

    def __init__(self, store: StateStore) -> None:
        super().__init__()
        self.store = store
        self.gate = threading.Event()
        self.lock_free_while_working: list[bool] = []
        self.workers_alive_at_close: list[str] = []

    def create(self, key: RuleKey, amount: int) -> RemoteConfig:
        with self.lock:
            self.sent.append(("create", key, amount))
        self.gate.wait(PROMPT)
        try:
            with self.store.lock("probe"):
                free = True
        except LockError:
            free = False
        self.lock_free_while_working.append(free)
        raise ApiError("stopped before an answer")

    def cancel(self) -> None:
        super().cancel()
        self.gate.set()

    def close(self) -> None:
        self.workers_alive_at_close = [
            thread.name for thread in threading.enumerate() if thread.name.startswith("apply-")
        ]
        super().close()
        self.gate.set()


def test_wait_stops_and_joins_the_workers_when_the_progress_callback_raises(
    tmp_path: Path,
) -> None:
    api = GatedApi(FileStateStore(tmp_path / "state.json"))
    executor = executor_for(api, FakeJournal(), parallelism=2, on_stop=api.cancel)
    threads = executor.start(creates())

    def progress(done: int, total: int, failed: int) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C where no signal handler could be set

    with pytest.raises(KeyboardInterrupt):
        wait(executor, threads, progress, tick=0.01)
    assert not any(thread.is_alive() for thread in threads)
    assert executor.stop.is_set() and api.cancelled == 1
    assert len(api.sent) == 1  # the first change goes alone; the others never started
    report = executor.finish()
    assert (len(report.failed), report.not_started) == (1, 2)


def test_a_raising_progress_callback_stops_and_joins_the_workers_before_unlocking(
    project: Path,
) -> None:
    write(project / "configs/acme.yaml", ACME_RULES)
    workspace = Workspace(load_settings(project))
    api = GatedApi(workspace.store)

    def progress(done: int, total: int, failed: int) -> None:
        raise BrokenPipeError("the terminal went away")

    started = time.monotonic()
    with pytest.raises(BrokenPipeError):
        run_apply(
            workspace,
            lambda: api,
            ApplyRequest(parallelism=2),
            confirm=lambda plan: True,
            on_tick=progress,
        )
    assert time.monotonic() - started < PROMPT  # cancel() released the workers at once
    assert api.workers_alive_at_close == []
    assert len(api.sent) == 1  # the first change goes alone; the others never started
    assert api.lock_free_while_working == [False]
    assert api.closed
    # what the workers did was folded: nothing confirmed, no journal left over
    assert not FileStateStore(project / "state/default.json").has_journal()
    assert set(workspace.store.read().uncertain) == set()


ACME_RULES = """\
companyId: ACME
rules:
  - event: A_EVENT
    amount: 5
  - event: B_EVENT
    amount: 6
  - event: C_EVENT
    amount: 7
"""


# -- a stop never waits behind a token fetch's retries ----------------------------------

OAUTH = Credentials(client_id="cid", client_secret="csecret", username="u", password="pw")


def throttled_token_client(seen: threading.Event) -> CoinsClient:
    """A client whose token endpoint always answers 429, Retry-After 30s, five times."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == TOKEN_PATH, request.url
        seen.set()
        return httpx.Response(429, headers={"Retry-After": "30"})

    options = ClientOptions(api_url="https://coins.test", max_retries=5)
    http = make_http_client(options, transport=httpx.MockTransport(handler))
    return CoinsClient(http, OAUTH, options)


def in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_close_does_not_wait_behind_a_token_fetchs_retries() -> None:
    seen = threading.Event()
    client = throttled_token_client(seen)
    errors: list[Exception] = []

    def send() -> None:
        try:
            client.create(KEYS[0], 5)
        except ApiError as e:
            errors.append(e)

    sender = in_thread(send)
    assert seen.wait(PROMPT)
    closer = in_thread(client.close)
    closer.join(PROMPT)
    sender.join(PROMPT)
    assert not closer.is_alive(), "close() waited behind the token retries"
    assert not sender.is_alive()
    assert len(errors) == 1 and "the run is stopping" in str(errors[0])


def test_an_interrupt_ends_the_run_without_waiting_for_token_retries() -> None:
    seen = threading.Event()
    client = throttled_token_client(seen)
    try:
        journal = FakeJournal()
        executor = executor_for(client, journal, parallelism=2, on_stop=client.cancel)
        threads = executor.start(creates())
        assert seen.wait(PROMPT)
        executor.interrupt()  # what Ctrl-C does
        waiter = in_thread(lambda: wait(executor, threads, tick=0.01))
        waiter.join(PROMPT)
        assert not waiter.is_alive(), "the stop waited behind the token retries"
        report = executor.finish()
    finally:
        client.close()
    assert report.interrupted and not report.created and not report.uncertain
    assert all("the run is stopping" in reason for _, reason in report.failed)
    assert report.not_started == len(KEYS) - len(report.failed)


# -- at the command line ----------------------------------------------------------------


def test_cli_a_failing_checkpoint_exits_1_with_a_message_and_no_traceback(
    project: Path, sandbox: SandboxServer
) -> None:
    write(
        project / "pyproject.toml",
        "[tool.coins-sync.environments.default]\nfold_every = 1\n",
    )
    write(project / "configs/acme.yaml", ACME_RULES)
    backup = project / "state" / "default.json.backup"
    backup.mkdir(parents=True)  # every state write after the first fails on the backup
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COINS_SYNC_")},
        "COINS_SYNC_TOKEN": SANDBOX_TOKEN,
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "coins_sync", "apply", "--yes", "--parallelism", "1"]
    command += ["--api-url", sandbox.url]
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert "Error: apply stopped: Is a directory: state/default.json.backup;" in done.stderr
    assert "Apply: 1 created" in done.stdout, output
    assert len(sandbox.configs()) == 1  # no new send after the failure

    backup.rmdir()  # the next apply folds the journal and sends only the rest
    again = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Apply: 2 created" in again.stdout
    assert len(sandbox.configs()) == 3
    assert SANDBOX_TOKEN not in output + again.stdout + again.stderr
