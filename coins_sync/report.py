"""The auditor's view: every rule per company, where it is written, whether it is live,
and its last recorded change. Reads configs, state and the audit log; no network."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from itertools import groupby
from typing import Any

from coins_sync.configs.model import ConfigSet, RuleKey
from coins_sync.plan.markdown import code
from coins_sync.plan.render import MARKDOWN_BUDGET
from coins_sync.state.model import State
from coins_sync.words import plural


class RuleStatus(StrEnum):
    """Where a rule stands, in the report's order: live (the server has it at this
    amount), pending (a create or an update is still to be applied), uncertain (a
    create's outcome is unknown), retired (a ``retired: true`` rule kept at amount 0, or
    a retired entry no longer in the configs: it pays nothing) or orphan (in state, no
    longer in the configs, still paying)."""

    LIVE = "live"
    PENDING = "pending"
    UNCERTAIN = "uncertain"
    RETIRED = "retired"
    ORPHAN = "orphan"


#: How much of a key, a path or an audit entry the Markdown report shows.
_LIMIT = 200


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One rule's line in the report."""

    key: RuleKey
    amount: int
    source: str
    status: RuleStatus
    coin_config_id: str
    live_amount: int | None
    last_change: Mapping[str, Any] | None
    retired: Mapping[str, Any] | None = None  # the audit record of its retirement

    def to_json(self) -> dict[str, Any]:
        last = self.last_change
        retired = self.retired
        return {
            "retired": {k: retired.get(k) for k in ("at", "actor", "commit")} if retired else None,
            "companyId": self.key.company_id,
            "configuration": self.key.configuration,
            "event": self.key.event,
            "amount": self.amount,
            "source": self.source,
            "status": self.status,
            "coinConfigId": self.coin_config_id or None,
            "liveAmount": self.live_amount,
            "lastChange": dict(last) if last else None,
        }


def _key_of(record: Mapping[str, Any]) -> RuleKey | None:
    key = record.get("key")
    if not isinstance(key, dict):
        return None
    try:
        return RuleKey(str(key["companyId"]), str(key["configuration"]), str(key["event"]))
    except KeyError:
        return None


def last_changes(records: Iterable[Mapping[str, Any]]) -> dict[RuleKey, dict[str, Any]]:
    """The newest audit record per key (the log is in time order)."""
    latest: dict[RuleKey, dict[str, Any]] = {}
    for record in records:
        key = _key_of(record)
        if key is None:
            continue
        latest[key] = {
            name: record.get(name)
            for name in ("at", "action", "outcome", "before", "after", "actor", "commit")
        }
    return latest


def retirements(records: Iterable[Mapping[str, Any]]) -> dict[RuleKey, dict[str, Any]]:
    """The newest successful retirement per key: when, by whom, from which commit."""
    found: dict[RuleKey, dict[str, Any]] = {}
    for record in records:
        key = _key_of(record)
        if key is not None and record.get("outcome") == "retired":
            found[key] = {name: record.get(name) for name in ("at", "actor", "commit")}
    return found


def build_report(
    configs: ConfigSet, state: State, audit: Iterable[Mapping[str, Any]]
) -> list[ReportRow]:
    records = list(audit)
    latest = last_changes(records)
    retired = retirements(records)
    rows: list[ReportRow] = []
    desired = configs.by_key()
    for key, rule in desired.items():
        entry = state.entries.get(key)
        if entry is not None and rule.retired and entry.amount == 0:
            rows.append(
                ReportRow(
                    key,
                    0,
                    str(rule.source),
                    RuleStatus.RETIRED,
                    entry.coin_config_id,
                    0,
                    latest.get(key),
                    retired.get(key),
                )
            )
            continue
        if entry is not None:
            status = RuleStatus.LIVE if entry.amount == rule.amount else RuleStatus.PENDING
            config_id, live = entry.coin_config_id, entry.amount
        else:
            status = RuleStatus.UNCERTAIN if key in state.uncertain else RuleStatus.PENDING
            config_id, live = "", None
        rows.append(
            ReportRow(key, rule.amount, str(rule.source), status, config_id, live, latest.get(key))
        )
    for key, entry in state.entries.items():
        if key not in desired:
            gone = entry.retired and entry.amount == 0
            rows.append(
                ReportRow(
                    key,
                    entry.amount,
                    "",
                    RuleStatus.RETIRED if gone else RuleStatus.ORPHAN,
                    entry.coin_config_id,
                    entry.amount,
                    latest.get(key),
                    retired.get(key) if gone else None,
                )
            )
    for key, pending in state.uncertain.items():
        if key not in desired and key not in state.entries:
            rows.append(
                ReportRow(key, pending.amount, "", RuleStatus.UNCERTAIN, "", None, latest.get(key))
            )
    rows.sort(key=lambda row: row.key)
    return rows


def _last(row: ReportRow) -> str:
    last = row.last_change
    if not last:
        return ""
    who = f" by {last.get('actor')}" if last.get("actor") else ""
    commit = f" @ {str(last.get('commit'))[:12]}" if last.get("commit") else ""
    # Read from the audit log, which anyone may have written: shown inert, in one span.
    return code(f"{last.get('outcome')} {last.get('at')}{who}{commit}", _LIMIT, cell=True)


def _status(row: ReportRow) -> str:
    if row.status is RuleStatus.LIVE:
        return f"live ({code(row.coin_config_id, _LIMIT, cell=True)})"
    if row.status is RuleStatus.RETIRED:
        when = row.retired or {}
        who = f" by {when.get('actor')}" if when.get("actor") else ""
        since = code(f"{when.get('at')}{who}", _LIMIT, cell=True) if when else ""
        gone = "; no longer in the configs" if not row.source else ""
        config_id = code(row.coin_config_id, _LIMIT, cell=True)
        return f"retired ({config_id}, amount 0{gone}) {since}".rstrip()
    if row.status is RuleStatus.PENDING and row.live_amount is not None:
        return f"pending (live amount {row.live_amount})"
    return str(row.status)


def _md_row(row: ReportRow) -> str:
    configuration = code(row.key.configuration, _LIMIT, cell=True)
    event = code(row.key.event, _LIMIT, cell=True)
    source = code(row.source, _LIMIT, cell=True)
    return (
        f"| {configuration} | {event} | {row.amount} | {_status(row)} | {source} | {_last(row)} |"
    )


#: Room kept for the line that says how many rules were cut.
_TAIL_RESERVE = 160


def render_markdown(rows: list[ReportRow], env: str, budget: int = MARKDOWN_BUDGET) -> str:
    """The report as Markdown that fits in ``budget`` characters (one GitHub comment or
    issue body); rules past it are cut and counted. Every value read from the configs,
    the state or the audit log is an inert code span, cut to a bounded length."""
    counts = {status: sum(1 for r in rows if r.status == status) for status in RuleStatus}
    lines = [
        f"# coins-sync report for {code(env)}",
        "",
        ", ".join(f"{counts[s]} {s}" for s in RuleStatus)
        + f" — {plural(len(rows), 'rule')} in all.",
        "",
    ]
    room = budget - _TAIL_RESERVE - sum(len(line) + 1 for line in lines)
    shown = 0
    for company, grouped in groupby(rows, key=lambda r: r.key.company_id):
        group = list(grouped)
        section = [
            f"## {code(company, _LIMIT)}",
            "",
            "| configuration | event | amount | status | source | last change |",
            "| --- | --- | ---: | --- | --- | --- |",
        ]
        cost = sum(len(line) + 1 for line in section) + 1  # and the blank line after
        kept: list[str] = []
        for row in group:
            line = _md_row(row)
            if cost + len(line) + 1 > room:
                break
            kept.append(line)
            cost += len(line) + 1
        if not kept:
            break
        lines += [*section, *kept, ""]
        room -= cost
        shown += len(kept)
        if len(kept) < len(group):
            break
    if shown < len(rows):
        lines.append(
            f"… and {len(rows) - shown} more rules not shown; "
            "`coins-sync report --format json` lists them all."
        )
    return "\n".join(lines)


#: A cell starting with one of these is read as a formula by spreadsheets (OWASP "CSV
#: Injection"); tab and carriage return too, and after leading spaces.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """``value`` safe for a spreadsheet: text that a spreadsheet would run as a formula
    gets a leading ``'`` (the OWASP mitigation), so it is shown as text. Numbers are
    written as they are."""
    if isinstance(value, str) and value.lstrip(" ").startswith(_FORMULA_START):
        return "'" + value
    return value


def render_csv(rows: list[ReportRow]) -> str:
    """The report as CSV; every text cell goes through :func:`csv_cell`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "companyId",
            "configuration",
            "event",
            "amount",
            "status",
            "coinConfigId",
            "liveAmount",
            "source",
            "lastChangeAt",
            "lastChangeOutcome",
            "lastChangeActor",
            "lastChangeCommit",
            "retiredAt",
            "retiredBy",
        ]
    )
    for row in rows:
        last = row.last_change or {}
        cells = [
            row.key.company_id,
            row.key.configuration,
            row.key.event,
            row.amount,
            row.status,
            row.coin_config_id,
            "" if row.live_amount is None else row.live_amount,
            row.source,
            last.get("at") or "",
            last.get("outcome") or "",
            last.get("actor") or "",
            last.get("commit") or "",
            (row.retired or {}).get("at") or "",
            (row.retired or {}).get("actor") or "",
        ]
        writer.writerow([csv_cell(cell) for cell in cells])
    return out.getvalue()


def render_json(rows: list[ReportRow], env: str) -> str:
    data = {
        "environment": env,
        "summary": {s: sum(1 for r in rows if r.status == s) for s in RuleStatus},
        "rules": [row.to_json() for row in rows],
    }
    return json.dumps(data, indent=2) + "\n"
