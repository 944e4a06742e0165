"""One apply run: plan or load a saved plan, confirm, execute, all under the state lock.

What is promised: the workers are always stopped and joined before the lock is released
and the client closed, whatever raised; SIGINT and SIGTERM stop new sends instead of
ending the process at an arbitrary point; a missing state is not started afresh while
another state file already records rules under the same name.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from coins_sync.apply.executor import Executor, to_send
from coins_sync.apply.report import ApplyReport, describe
from coins_sync.apply.send import CoinsApi
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import StateError
from coins_sync.plan.reconcile import Plan
from coins_sync.plan.saved import check_consistent, check_fresh, load_plan
from coins_sync.plan.subset import Subset
from coins_sync.state.audit import AuditSink
from coins_sync.state.file import FileStateStore
from coins_sync.workspace import Workspace, unverified

log = logging.getLogger(__name__)


def wait(
    executor: Executor,
    threads: list[threading.Thread],
    on_tick: Callable[[int, int, int], None] | None = None,
    tick: float = 0.2,
) -> None:
    """Wait for the workers; on Ctrl-C stop new sends and let requests in flight finish.

    Completion is the executor's own count of returned workers, never
    ``Thread.is_alive()``: before Python 3.13 a KeyboardInterrupt inside ``Thread.join()``
    can mark a thread that is still running as stopped (CPython gh-90882), and the state
    would then be folded and the client closed under a live request.

    Whatever raises here (the progress callback included) first stops new sends and
    waits for every worker (:meth:`Executor.halt`), so the caller never releases the
    state lock or closes the client under a live worker.
    """
    announced = False
    try:
        while True:
            try:
                done = executor.wait_done(tick)
            except KeyboardInterrupt:
                executor.interrupt()
                done = False
            executor.announce_stop()
            if executor.interrupted:
                if not announced:
                    log.warning("interrupted: finishing requests in flight, sending nothing new")
                    announced = True
            elif on_tick is not None:
                on_tick(executor.done, executor.total, len(executor.report.failed))
            if done:
                break
    except BaseException:
        executor.halt(tick)
        raise
    for thread in threads:
        thread.join()  # every worker has returned; this only reaps it


@contextlib.contextmanager
def sigint_stops(executor: Executor) -> Iterator[None]:
    """While an apply runs, SIGINT (Ctrl-C) and SIGTERM (a CI cancellation, ``kill``) call
    ``executor.interrupt()`` instead of ending the process at an arbitrary point, so the
    results are always folded and no new send starts; the caller exits 130 or 143. A
    second signal while draining changes nothing (only SIGKILL ends it then). Only the
    main thread can own signal handlers; elsewhere this does nothing, and :func:`wait`
    still turns a KeyboardInterrupt into an interrupt. An ignored signal (e.g. SIGINT
    under nohup) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        executor.interrupt("SIGTERM" if signum == signal.SIGTERM else "")

    previous: dict[signal.Signals, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, on_signal)
        yield
    finally:
        for caught, handler in previous.items():
            signal.signal(caught, handler)


class ClosableApi(CoinsApi, Protocol):
    def get(self, coin_config_id: str) -> RemoteConfig: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ApplyRequest:
    """How to apply: a saved plan or a fresh one, and the user's overrides."""

    planfile: Path | None = None
    force: bool = False
    retry_uncertain: bool = False
    refresh: bool = False
    parallelism: int | None = None
    command: str = "apply"
    #: ``--only``: plan and apply just these rules (plan/subset.py).
    only: Subset = field(default_factory=Subset)


def run_apply(
    workspace: Workspace,
    api_factory: Callable[[], ClosableApi],
    request: ApplyRequest,
    confirm: Callable[[Plan], bool],
    on_tick: Callable[[int, int, int], None] | None = None,
    audit: AuditSink | None = None,
    on_read: Callable[[int, int, int], None] | None = None,
) -> tuple[Plan, ApplyReport | None]:
    """Plan (or load a saved plan), confirm, and execute, all under the state lock.

    Returns the plan and the report; the report is None when nothing was sent because
    there was nothing to do or the user declined.
    """
    settings = workspace.settings
    store = workspace.store
    api: ClosableApi | None = None
    try:
        with store.lock(request.command, settings.lock_timeout):
            state, _ = store.recover()
            configs = workspace.load_configs()
            if request.planfile is not None:
                the_plan = load_plan(request.planfile)
                check_fresh(the_plan, settings.env, state, configs)
                the_plan = check_consistent(the_plan, state, configs)
            elif request.refresh:
                api = api_factory()
                the_plan = workspace.plan(
                    state, configs, refresh_with=api, on_tick=on_read, only=request.only
                )
            elif unverified(state):  # read back the updates whose outcome is unknown
                api = api_factory()
                settled, _ = workspace.settle(state, api)
                if settled.content() != state.content():
                    # what the server holds is recorded even when nothing is sent, so
                    # the mark does not outlive the doubt (and each plan's GETs with it)
                    state = store.write(settled)
                the_plan = workspace.plan(state, configs, verify_with=api, only=request.only)
            else:
                the_plan = workspace.plan(state, configs, only=request.only)
            the_plan.raise_if_unsafe(workspace.safety, force=request.force)
            if not to_send(the_plan, request.retry_uncertain) or not confirm(the_plan):
                return the_plan, None
            api = api or api_factory()
            if not state.exists:
                elsewhere = [] if request.force else workspace.states_elsewhere()
                if elsewhere:
                    raise StateError(
                        f"the state {store.describe()} does not exist yet, but "
                        f"{elsewhere[0]} already records rules under the same name; "
                        "starting a new, empty state would create every rule again. "
                        "Run from the project folder, or pass --state with the existing "
                        "file. Nothing was sent. (--force starts a new state anyway.)"
                    )
                state = store.write(state)  # fixes the lineage the journal is tied to
            executor = Executor(
                api,
                store.journal(state),
                state,
                desired={rule.key: rule.amount for rule in configs.rules},
                parallelism=request.parallelism or settings.parallelism,
                fold_every=settings.fold_every,
                audit=audit,
                on_stop=api.cancel,
                rescue=store.write_rescue if isinstance(store, FileStateStore) else None,
            )
            with sigint_stops(executor):
                try:
                    threads = executor.start(the_plan, retry_uncertain=request.retry_uncertain)
                    wait(executor, threads, on_tick)
                except BaseException:
                    # the workers are stopped and joined before the lock is released and
                    # the client closed; what they did is folded, then the error goes on
                    try:
                        executor.finish()
                    except Exception as e:
                        log.error("%s", describe(e))
                    raise
                report = executor.finish()
            return the_plan, report
    finally:
        if api is not None:
            api.close()
