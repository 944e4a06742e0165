"""Adoption: ``state import KEY ID`` records one existing config, ``state import --from
FILE`` many at once. Both refuse, before any call, an id or a key that the state already
records otherwise (:func:`refusal`, the check a rule's ``coinConfigId`` gets too).

The file is CSV (header ``companyId,configuration,event,coinConfigId``) or JSON lines
(one object with those four fields a line). Every id is read back (GET) with bounded
parallelism under the state lock, and its key checked. Every row that matches is
recorded in one state write; every row that does not is reported with its line, and
never costs a matching row its record.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from coins_sync.configs.model import IDENTIFIER_RULE, RuleKey, is_identifier
from coins_sync.enkash import RemoteConfig
from coins_sync.errors import ApiError, CoinsSyncError, ConfigError, Problem, StateError
from coins_sync.inputs import read_input
from coins_sync.state.audit import AuditAction, AuditRecord
from coins_sync.state.journal import Outcome
from coins_sync.state.model import RecordedIds, State, StateEntry
from coins_sync.workspace import Workspace

FIELDS = ("companyId", "configuration", "event", "coinConfigId")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_ROWS = 1_000_000
#: How many problems or refused rows are listed one by one; the rest are counted.
SHOWN_ROWS = 20
_WHERE = "the import file"  # not the rule files: its problems name FILE:LINE of --from


@dataclass(frozen=True)
class ImportRow:
    """One line of an import file: ``key`` is on the server as ``coin_config_id``."""

    where: str  # path:line
    key: RuleKey
    coin_config_id: str


@dataclass
class BulkResult:
    """What a bulk import recorded and what it refused (``where``, key, reason)."""

    imported: list[tuple[ImportRow, StateEntry]] = field(default_factory=list)
    failed: list[tuple[ImportRow, str]] = field(default_factory=list)
    state: State | None = None


def import_one(
    workspace: Workspace,
    key: RuleKey,
    coin_config_id: str,
    fetch: Callable[[str], RemoteConfig],
    command: str,
) -> tuple[State, StateEntry]:
    """``state import KEY ID``: record an existing server config as ``key`` after
    checking that the state holds neither under anything else (:func:`refusal`, no call
    then) and that the server really holds ``key`` there.

    This is how an uncertain create is resolved when it did reach the server, and how
    configs made by hand come under management. The audit log records it.
    """
    bad_key = key_problem(key)
    if bad_key:
        raise StateError(f"{key}: {bad_key}; nothing was recorded")
    store = workspace.store
    with store.lock(command, workspace.settings.lock_timeout):
        state, _ = store.recover()
        reason = refusal(RecordedIds(state), key, coin_config_id)
        if reason is not None:
            raise StateError(reason)
        remote = fetch(coin_config_id)
        if remote.key != key:
            raise StateError(
                f"config {coin_config_id} on the server is {remote.key}, not {key}; "
                "nothing was recorded"
            )
        entry = StateEntry(key, remote.amount, remote.coin_config_id)
        written = store.write(state.with_entry(entry))
    workspace.record_audit(
        AuditRecord(
            AuditAction.IMPORT, key, Outcome.IMPORTED, None, entry.amount, entry.coin_config_id
        )
    )
    return written, entry


def import_many(
    workspace: Workspace,
    rows: Sequence[ImportRow],
    fetch: Callable[[str], RemoteConfig],
    command: str,
    on_tick: Callable[[int, int, int], None] | None = None,
) -> BulkResult:
    """``state import --from FILE``: record every row whose id the server confirms as
    its key, in one state write.

    Takes the lock; GETs with the environment's parallelism. A row that fails is
    reported in the result and never keeps a matching row from being recorded.
    """
    store = workspace.store
    result = BulkResult()
    with store.lock(command, workspace.settings.lock_timeout):
        state, _ = store.recover()
        todo, reasons = check_rows(rows, state)
        for row, reason in zip(rows, reasons, strict=True):
            if reason:
                result.failed.append((row, reason))
        for row, got in fetch_all(todo, fetch, workspace.settings.parallelism, on_tick):
            if isinstance(got, StateEntry):
                result.imported.append((row, got))
            else:
                result.failed.append((row, got))
        if result.imported:
            entries = dict(state.entries)
            uncertain = dict(state.uncertain)
            for _, entry in result.imported:
                entries[entry.key] = entry
                uncertain.pop(entry.key, None)
            state = store.write(replace(state, entries=entries, uncertain=uncertain))
        result.state = state
    order = {id(row): index for index, row in enumerate(rows)}
    result.failed.sort(key=lambda item: order[id(item[0])])
    # Each recorded row is audited; the refused ones changed nothing and are summed up
    # in one record (under the first one's key), so a million of them cost one write.
    refused = [
        AuditRecord(
            AuditAction.IMPORT,
            first.key,
            Outcome.FAILED,
            None,
            None,
            first.coin_config_id,
            refusal_summary(result.failed),
        )
        for first, _ in result.failed[:1]
    ]
    workspace.record_audit(
        *(
            AuditRecord(
                AuditAction.IMPORT,
                row.key,
                Outcome.IMPORTED,
                None,
                entry.amount,
                row.coin_config_id,
            )
            for row, entry in result.imported
        ),
        *refused,
    )
    return result


def read_rows(path: Path, shown: str) -> list[ImportRow]:
    """Parse an import file; every defect is a ConfigError naming its line."""
    try:
        text = read_input(path).decode("utf-8-sig")
    except OSError as e:
        raise ConfigError([Problem(shown, 0, 0, f"cannot read: {e.strerror or e}")], _WHERE) from e
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(shown, 1, 1, "not valid UTF-8")], _WHERE) from e
    first = text.lstrip()[:1]
    rows, problems = (_json_lines if first == "{" else _csv)(text, shown)
    if problems:
        many = len(problems) > SHOWN_ROWS
        where = f"{_WHERE} (showing {SHOWN_ROWS} of {len(problems):,})" if many else _WHERE
        raise ConfigError(summarised(problems, shown), where)
    if not rows:
        raise ConfigError([Problem(shown, 1, 1, "no rows to import")], _WHERE)
    return rows


def key_problem(key: RuleKey) -> str | None:
    """Why ``key`` cannot be imported: a field no rule file could hold (the same check
    as the rule files'); None when it can."""
    bad = [(name, value) for name, value in key.as_dict().items() if not is_identifier(value)]
    if not bad:
        return None
    shown = ", ".join(f"{name} {value[:80]!r}" for name, value in bad)
    return f"{shown}: not a valid identifier ({IDENTIFIER_RULE})"


def summarised(problems: list[Problem], shown: str) -> list[Problem]:
    """The first :data:`SHOWN_ROWS` problems, and one that counts the rest."""
    if len(problems) <= SHOWN_ROWS:
        return problems
    rest = len(problems) - SHOWN_ROWS
    more = Problem(shown, problems[SHOWN_ROWS].line, 1, f"… and {rest:,} more rows refused")
    return [*problems[:SHOWN_ROWS], more]


def _row(values: dict[str, object], shown: str, line: int) -> ImportRow | str:
    missing = [name for name in FIELDS if not isinstance(values.get(name), str)]
    if missing:
        return f"missing or non-text field(s): {', '.join(missing)}"
    texts = {name: str(values[name]).strip() for name in FIELDS}
    empty = [name for name in FIELDS if not texts[name]]
    if empty:
        return f"empty field(s): {', '.join(empty)}"
    if not _ID.fullmatch(texts["coinConfigId"]):
        return f"coinConfigId {texts['coinConfigId'][:80]!r} is not 1-64 of A-Z, a-z, 0-9, _ or -"
    key = RuleKey(texts["companyId"], texts["configuration"], texts["event"])
    bad_key = key_problem(key)
    if bad_key:
        return bad_key
    return ImportRow(f"{shown}:{line}", key, texts["coinConfigId"])


def _csv(text: str, shown: str) -> tuple[list[ImportRow], list[Problem]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[ImportRow] = []
    problems: list[Problem] = []
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(FIELDS):
            return [], [
                Problem(shown, 1, 1, f"the header must be {','.join(FIELDS)}; got {header!r}")
            ]
        for values in reader:
            line = reader.line_num
            if len(rows) + len(problems) >= MAX_ROWS:
                problems.append(Problem(shown, line, 1, f"more than {MAX_ROWS} rows"))
                break
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(FIELDS):
                problems.append(
                    Problem(shown, line, 1, f"expected {len(FIELDS)} fields, got {len(values)}")
                )
                continue
            got = _row(dict(zip(FIELDS, values, strict=True)), shown, line)
            if isinstance(got, str):
                problems.append(Problem(shown, line, 1, got))
            else:
                rows.append(got)
    except csv.Error as e:
        problems.append(Problem(shown, reader.line_num, 1, f"not valid CSV: {e}"))
    return rows, problems


def _json_lines(text: str, shown: str) -> tuple[list[ImportRow], list[Problem]]:
    rows: list[ImportRow] = []
    problems: list[Problem] = []
    for line, raw in enumerate(text.splitlines()[:MAX_ROWS], start=1):
        if not raw.strip():
            continue
        try:
            values = json.loads(raw)
        except (ValueError, RecursionError) as e:
            problems.append(Problem(shown, line, 1, f"not a JSON object: {e}"))
            continue
        if not isinstance(values, dict):
            problems.append(Problem(shown, line, 1, "not a JSON object"))
            continue
        got = _row(values, shown, line)
        if isinstance(got, str):
            problems.append(Problem(shown, line, 1, got))
        else:
            rows.append(got)
    return rows, problems


def refusal_summary(failed: Sequence[tuple[ImportRow, str]]) -> str:
    """One sentence for every refused row: how many, and the first few with their reason."""
    head = "; ".join(f"{row.where}: {reason}" for row, reason in failed[:3])
    more = f"; and {len(failed) - 3:,} more" if len(failed) > 3 else ""
    return f"{len(failed):,} row(s) refused: {head}{more}"


def check_rows(rows: Sequence[ImportRow], state: State) -> tuple[list[ImportRow], list[str]]:
    """The rows worth a GET, and why each other row is refused (without a call)."""
    recorded = RecordedIds(state)
    first_key: dict[RuleKey, ImportRow] = {}
    first_id: dict[str, ImportRow] = {}
    todo: list[ImportRow] = []
    reasons: list[str] = []
    for row in rows:
        reason = None
        if row.key in first_key:
            reason = f"{row.key} is listed again (first at {first_key[row.key].where})"
        elif row.coin_config_id in first_id:
            reason = (
                f"{row.coin_config_id} is listed again (first at "
                f"{first_id[row.coin_config_id].where})"
            )
        else:
            reason = refusal(recorded, row.key, row.coin_config_id)
        first_key.setdefault(row.key, row)
        first_id.setdefault(row.coin_config_id, row)
        reasons.append(reason or "")
        if reason is None:
            todo.append(row)
    return todo, reasons


def refusal(recorded: RecordedIds, key: RuleKey, coin_config_id: str) -> str | None:
    """Why an import of ``coin_config_id`` as ``key`` is refused before any call, with
    the way out; None when it may be read back. Both ``state import`` routes use it."""
    reason = recorded.conflict(key, coin_config_id)
    if reason is None:
        return None
    return (
        f"{reason}; nothing was recorded. Run `coins-sync state rm KEY` first for the "
        "record that is wrong"
    )


def fetch_all(
    rows: Sequence[ImportRow],
    fetch: Callable[[str], RemoteConfig],
    parallelism: int,
    on_tick: Callable[[int, int, int], None] | None = None,
) -> list[tuple[ImportRow, StateEntry | str]]:
    """GET every row's id (``parallelism`` at once) and check its key."""

    def one(row: ImportRow) -> StateEntry | str:
        try:
            remote = fetch(row.coin_config_id)
        except ApiError as e:
            if e.status == 404:
                return f"config {row.coin_config_id} was not found on the server (404)"
            return f"cannot read config {row.coin_config_id}: {e}"
        except CoinsSyncError as e:
            return f"cannot read config {row.coin_config_id}: {e}"
        if remote.key != row.key:
            return f"config {row.coin_config_id} on the server is {remote.key}, not {row.key}"
        return StateEntry(row.key, remote.amount, remote.coin_config_id)

    results: dict[int, StateEntry | str] = {}
    with ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        futures = {pool.submit(one, row): index for index, row in enumerate(rows)}
        failed = 0
        for done, future in enumerate(as_completed(futures), start=1):
            result = results[futures[future]] = future.result()
            failed += isinstance(result, str)
            if on_tick is not None:
                on_tick(done, len(rows), failed)
    return [(row, results[index]) for index, row in enumerate(rows)]
