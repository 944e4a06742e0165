"""One apply run: plan or load a saved plan, confirm, execute, all under the state lock.

What is promised: every way in reads back the updates whose outcome is unknown before
any plan is taken or checked (one pipeline; the plan sources only choose where the
plan comes from); the workers are always stopped and joined before the lock is released
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from coins_sync.apply.executor import Executor, to_send
from coins_sync.apply.report import ApplyReport, describe
from coins_sync.apply.send import CoinsApi
from coins_sync.configs.model import ConfigSet
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import ApplyStoppedError, StateError
from coins_sync.plan.online import Settled, plan_refreshed, plan_settled, settle, unverified
from coins_sync.plan.reconcile import Plan
from coins_sync.plan.saved import check_consistent, check_fresh, check_read_back, load_plan
from coins_sync.plan.subset import Subset
from coins_sync.state.audit import AuditAction, AuditRecord, AuditSink
from coins_sync.state.elsewhere import states_elsewhere
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import Outcome
from coins_sync.state.model import State
from coins_sync.workspace import Workspace

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

    def close(self) -> str | None: ...


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


class LazyApi:
    """The API client of one run, made on first use (an apply with nothing pending and
    nothing to send makes no client) and closed at the end."""

    def __init__(self, factory: Callable[[], ClosableApi]) -> None:
        self._factory = factory
        self._api: ClosableApi | None = None

    def __call__(self) -> ClosableApi:
        if self._api is None:
            self._api = self._factory()
        return self._api

    def close(self) -> str | None:
        """Close the client; how the server's rate limit paced the run, if it did."""
        return self._api.close() if self._api is not None else None


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

    One pipeline for every way in: recover the state, read back the pending updates
    (:func:`settle_pending`), then take the plan from its source (:func:`plan_from`:
    a saved plan, ``--refresh`` or the offline plan of the settled state), check it,
    confirm and execute. A plan source only ever sees a :class:`Settled` state.

    Returns the plan and the report; the report is None when nothing was sent because
    there was nothing to do or the user declined.
    """
    store = workspace.store
    api = LazyApi(api_factory)
    report: ApplyReport | None = None
    try:
        with store.lock(request.command, workspace.settings.lock_timeout):
            recovered, _ = store.recover()
            configs = workspace.load_configs()
            settled = settle_pending(workspace, recovered, api, configs, audit)
            the_plan = plan_from(workspace, request, settled, configs, api, on_read)
            the_plan.raise_if_unsafe(workspace.safety, force=request.force)
            workspace.refuse_fresh_clone(the_plan, request.force)
            if not to_send(the_plan, request.retry_uncertain) or not confirm(the_plan):
                return the_plan, None
            state = start_state(workspace, settled.state, request.force)
            executor = Executor(
                api(),
                store.journal(state),
                state,
                desired={rule.key: rule.amount for rule in configs.rules},
                parallelism=request.parallelism or workspace.settings.parallelism,
                fold_every=workspace.settings.fold_every,
                audit=audit,
                on_stop=api().cancel,
                rescue=store.write_rescue if isinstance(store, FileStateStore) else None,
            )
            try:
                report = execute(executor, the_plan, request.retry_uncertain, on_tick)
            except ApplyStoppedError as stopped:
                report = stopped.report
                raise
            return the_plan, report
    finally:
        paced = api.close()
        if report is not None:  # the report says how the run was paced (JSON too)
            report.rate_limit = paced


def settle_pending(
    workspace: Workspace,
    state: State,
    api: LazyApi,
    configs: ConfigSet | None = None,
    audit: AuditSink | None = None,
) -> Settled:
    """Read back every update whose outcome is unknown (one GET each), and record what
    the server holds even when nothing is sent, so the mark does not outlive the doubt
    (and each plan's GETs with it). Makes no client when nothing is pending.

    A pending entry read back at amount 0 whose rule says ``retired: true`` is the
    retirement of a run that never heard its answer (killed, timed out): it is recorded
    as retired, with an audit record, as if the answer had come."""
    pending = unverified(state)
    if not pending:
        return Settled.unread(state)
    settled = settle(state, api(), workspace.settings.parallelism)
    retiring = {rule.key for rule in configs.rules if rule.retired} if configs else set()
    found = {
        key: replace(entry, retired=True)
        for key, entry in settled.state.entries.items()
        if key in pending and key in retiring
        if entry.pending is None and entry.amount == 0 and not entry.retired
    }
    if found:
        entries = {**settled.state.entries, **found}
        settled = Settled(state, replace(settled.state, entries=entries), settled.drift)
    if not settled.changed:
        return settled
    written = Settled(state, workspace.store.write(settled.state), settled.drift)
    for key, entry in sorted(found.items()):
        if audit is not None:
            before = state.entries[key].amount
            record = AuditRecord(
                AuditAction.RETIRE, key, Outcome.RETIRED, before, 0, entry.coin_config_id
            )
            audit.record(record)
    return written


def plan_from(
    workspace: Workspace,
    request: ApplyRequest,
    settled: Settled,
    configs: ConfigSet,
    api: LazyApi,
    on_read: Callable[[int, int, int], None] | None = None,
) -> Plan:
    """The plan to apply, from its source: a saved plan (checked against the state it
    was made from and the settled one), ``--refresh``, or the offline plan; with
    ``--only``, of the subset alone (plan/subset.py)."""
    if request.planfile is not None:
        return saved_plan(request.planfile, workspace.settings.env, settled, configs)
    context = workspace.context(settled.state, configs)
    only = request.only
    if only:
        only.check_matches(configs, settled.state)
    part, rules = only.settled(settled, configs), only.configs(configs).rules
    if request.refresh:
        width = workspace.settings.parallelism
        the_plan = plan_refreshed(rules, part.state, context, api(), width, on_read)
    else:
        the_plan = plan_settled(rules, part, context)
    return only.widen(the_plan, settled.state) if only else the_plan


def saved_plan(path: Path, env: str, settled: Settled, configs: ConfigSet) -> Plan:
    """A ``plan --out`` file, refused unless it was made for this environment, from the
    state as it was read (``settled.before``) and these configs, and unless what it
    assumed of the updates read back just now is what the server holds."""
    saved = load_plan(path)
    check_fresh(saved, env, settled.before, configs)
    checked = check_consistent(saved, settled.before, configs)
    check_read_back(saved, settled)
    return checked


def start_state(workspace: Workspace, state: State, force: bool) -> State:
    """The state the journal is tied to: written first when it does not exist yet, and
    then only when no state file of the same name elsewhere records rules."""
    if state.exists:
        return state
    settings = workspace.settings
    elsewhere = (
        []
        if force or settings.backend != "file"
        else states_elsewhere(settings.state, settings.root)
    )
    if elsewhere:
        raise StateError(
            f"the state {workspace.store.describe()} does not exist yet, but "
            f"{elsewhere[0]} already records rules under the same name; "
            "starting a new, empty state would create every rule again. "
            "Run from the project folder, or pass --state with the existing "
            "file. Nothing was sent. (--force starts a new state anyway.)"
        )
    return workspace.store.write(state)  # fixes the lineage the journal is tied to


def execute(
    executor: Executor,
    the_plan: Plan,
    retry_uncertain: bool,
    on_tick: Callable[[int, int, int], None] | None,
) -> ApplyReport:
    """Send the plan's changes. The workers are stopped and joined before this returns
    or raises; what they did is folded, then an error goes on."""
    with sigint_stops(executor):
        try:
            threads = executor.start(the_plan, retry_uncertain=retry_uncertain)
            wait(executor, threads, on_tick)
        except BaseException:
            try:
                executor.finish()
            except Exception as e:
                log.error("%s", describe(e))
            raise
        return executor.finish()
