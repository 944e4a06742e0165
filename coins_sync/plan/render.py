"""Plan renderers: text for terminals, JSON for machines, Markdown for PR comments.

Each is a :class:`PlanRenderer` (:class:`PlanText`, :class:`PlanJson`,
:class:`PlanMarkdown`, in octoDNS's manner) registered under its format name in
:data:`RENDERERS`; an unknown name is an :class:`UnknownFormatError`, never a silent
fallback. They only read a :class:`Plan`; none of them changes it or performs I/O.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from coins_sync.errors import UnknownFormatError
from coins_sync.plan.drift import Drift, DriftField
from coins_sync.plan.markdown import code
from coins_sync.plan.reconcile import Action, Change, Plan
from coins_sync.words import plural

PLAN_FORMAT_VERSION = 1
#: GitHub refuses comments over 65,536 characters; keep a margin for the wrapper text.
MARKDOWN_BUDGET = 60_000
MARKDOWN_INLINE_ROWS = 200
MARKDOWN_DRIFT_ROWS = 50
#: How much of a key, a path or another value a comment shows (the JSON plan has all).
MARKDOWN_KEY_LIMIT = 200
MARKDOWN_PATH_LIMIT = 200
# Room kept for each "… and N more" line (drift and changes); they are shorter.
_MD_TAIL_RESERVE = 120

_SYMBOL = {
    Action.CREATE: "+",
    Action.IMPORT: "<=",
    Action.MOVE: "->",
    Action.UPDATE: "~",
    Action.RETIRE: "-",
    Action.UNCERTAIN: "!",
    Action.ORPHAN: "!",
    Action.UNCHANGED: " ",
}
_COLOUR = {
    Action.CREATE: "green",
    Action.IMPORT: "cyan",
    Action.MOVE: "blue",
    Action.UPDATE: "yellow",
    Action.RETIRE: "magenta",
    Action.UNCERTAIN: "red",
    Action.ORPHAN: "magenta",
}
_SUMMARY_WORDS = (
    (Action.CREATE, "to create"),
    (Action.IMPORT, "to import"),
    (Action.MOVE, "to move"),
    (Action.UPDATE, "to update"),
    (Action.RETIRE, "to retire"),
    (Action.UNCERTAIN, "uncertain"),
    (Action.ORPHAN, "orphaned"),
    (Action.UNCHANGED, "unchanged"),
)


#: Actions that the summary and the Markdown table name only when the plan has any.
_WHEN_ANY = frozenset({Action.IMPORT, Action.MOVE, Action.RETIRE})
#: How to stop an orphan's rewards: there is no delete API.
STOP_HINT = "to stop its rewards, keep the rule with `retired: true` or set its amount to 0"


def summary_line(plan: Plan, *, markdown: bool = False) -> str:
    """The one-line count of a plan; ``markdown`` shows the state key it quotes inert."""
    counts = plan.summary()
    flying = len(plan.in_flight)
    counts[Action.UNCERTAIN.value] -= flying
    # like Terraform, imports (and moves and retirements) are counted when there are any
    parts = [
        f"{counts[action.value]} {words}"
        for action, words in _SUMMARY_WORDS
        if action not in _WHEN_ANY or counts[action.value]
    ]
    if flying:
        parts.insert(
            parts.index(f"{counts[Action.UNCERTAIN.value]} uncertain") + 1, f"{flying} in flight"
        )
    stuck = plan.needs_a_person
    if stuck:
        command = f"coins-sync state rm {stuck[0]}"
        shown = code(command, MARKDOWN_KEY_LIMIT) if markdown else f"`{command}`"
        parts.append(
            f"{len(stuck)} need a person (gone, moved or holding an unusable amount on the "
            f"server; {shown} once settled)"
        )
    verdict = "changes present" if plan.has_changes else "no changes"
    partial = " (partial: --only)" if plan.context.only else ""
    return f"Plan{partial}: {', '.join(parts)} ({verdict})."


def first_contact_line(plan: Plan) -> str | None:
    """The first-contact guard: creates for companies the state has never recorded."""
    if not plan.new_companies:
        return None
    return (
        f"{plural(plan.first_contact_creates, 'create')} for "
        f"{plural(len(plan.new_companies), 'company', 'companies')} new "
        "to this state; if any of these already exist on the server, adopt them first "
        "(coinConfigId in the rule, or `coins-sync state import --from FILE`)."
    )


def lock_line(plan: Plan) -> str | None:
    """A plan made while an apply holds the lock says so, and who holds it."""
    if not plan.lock_holder:
        return None
    flying = (
        f"; its {len(plan.in_flight)} create(s) in flight are shown as in flight"
        if (plan.in_flight)
        else ""
    )
    return (
        f"An apply holds the state lock: {plan.lock_holder}. This plan shows what that "
        f"apply has recorded so far{flying}; plan again when it ends."
    )


def partial_line(plan: Plan) -> str | None:
    """A plan made with ``--only`` says so: what lies outside it was not looked at."""
    if not plan.context.only:
        return None
    return (
        f"Partial plan: only {', '.join(plan.context.only)}; every other rule and state "
        "entry is left alone (not planned, not reported as orphaned)."
    )


def agreeing_line(plan: Plan) -> str | None:
    if not plan.agreeing_ids:
        return None
    return f"{plan.agreeing_ids} coinConfigId(s) in the configs agree with the state."


def _detail(change: Change, in_flight: bool = False) -> str:
    if in_flight:
        return f"amount {change.amount}  (in flight: the apply holding the lock is creating it)"
    if change.action is Action.UPDATE:
        return f"amount {change.before} -> {change.amount}"
    if change.action is Action.IMPORT:
        return (
            f"amount {change.amount}  (import {change.coin_config_id}: checked on the server, "
            "then recorded; a different amount there is updated)"
        )
    if change.action is Action.UNCERTAIN:
        return (
            f"amount {change.amount}  (uncertain: an earlier create's outcome is unknown; "
            "resolve with `state import KEY ID` or `apply --retry-uncertain`)"
        )
    if change.action is Action.MOVE:
        amount = (
            f"amount {change.amount}"
            if change.before == change.amount
            else f"amount {change.before} -> {change.amount}"
        )
        how = (
            "already moved on the server: recorded without a PATCH of the key"
            if change.on_server
            else "PATCH of the key fields"
        )
        return f"{amount}  (move from {change.moved_from}, {change.coin_config_id}: {how})"
    if change.action is Action.RETIRE:
        return (
            f"amount {change.before} -> 0  (retire {change.coin_config_id}: stays on the "
            "server and in state, paying nothing)"
        )
    if change.action is Action.ORPHAN and change.amount == 0:
        return (
            f"amount 0  (orphan: in state as {change.coin_config_id}, not in configs; it "
            "pays nothing; left alone)"
        )
    if change.action is Action.ORPHAN:
        return (
            f"amount {change.amount}  (orphan: in state as {change.coin_config_id}, "
            f"not in configs; left alone and still paying; {STOP_HINT})"
        )
    return f"amount {change.amount}"


_IN_FLIGHT = "…"  # a key another apply has journaled and not finished


def _styled(symbol: str, action: Action) -> str:
    import click  # only for styling; the renderer stays free of CLI state

    return click.style(symbol, fg=_COLOUR[action], bold=True)


def styled_symbols() -> frozenset[str]:
    """Every coloured action symbol :func:`render_text` writes: the only escape sequences
    of its own that a coloured plan holds (``console.out`` passes them as they are)."""
    return frozenset(
        _styled(symbol, action) for action in _COLOUR for symbol in (_SYMBOL[action], _IN_FLIGHT)
    )


def render_text(plan: Plan, colour: bool = False) -> str:
    """Terraform-like lines, one per changing or orphaned key, and a summary."""
    lines: list[str] = []
    locked = lock_line(plan)
    if locked:
        lines += [locked, ""]
    if plan.drift:
        lines.append(f"Drift: {len(plan.drift)} difference(s) between the server and state:")
        lines.extend(f"  ≠ {d.describe()}" for d in plan.drift)
        lines.append("")
    shown = [c for c in plan.changes if c.action is not Action.UNCHANGED]
    width = max((len(str(c.key)) for c in shown), default=0)
    flying = set(plan.in_flight)
    details = [_detail(change, change.key in flying) for change in shown]
    sourced = [d for d, c in zip(details, shown, strict=True) if c.source]
    detail_width = max((len(d) for d in sourced), default=0)
    for change, detail in zip(shown, details, strict=True):
        symbol = _IN_FLIGHT if change.key in flying else _SYMBOL[change.action]
        if colour:
            symbol = _styled(symbol, change.action)
        text = f"{detail:<{detail_width}}  {change.source}" if change.source else detail
        lines.append(f"  {symbol} {change.key!s:<{width}}  {text}")
    if shown:
        lines.append("")
    lines.append(summary_line(plan))
    notes = (partial_line(plan), agreeing_line(plan), first_contact_line(plan))
    lines.extend(note for note in notes if note)
    return "\n".join(lines) + "\n"


def change_to_json(change: Change) -> dict[str, Any]:
    data: dict[str, Any] = {
        "action": change.action.value,
        "key": change.key.as_dict(),
        "amount": change.amount,
    }
    if change.action in (Action.UPDATE, Action.MOVE, Action.RETIRE):
        data["before"] = change.before
    if change.moved_from is not None:
        data["movedFrom"] = change.moved_from.as_dict()
    if change.on_server:
        data["onServer"] = True
    if change.source is not None:
        data["source"] = str(change.source)
    if change.coin_config_id is not None:
        data["coinConfigId"] = change.coin_config_id
    return data


def drift_value(drift: Drift, value: str) -> int | str:
    """A drift value in its natural JSON type: amounts are numbers, the rest text."""
    return int(value) if drift.field is DriftField.AMOUNT else value


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The JSON plan of SPEC §5; also the saved-plan format (schemas/plan.schema.json)."""
    context = plan.context
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "environment": context.env,
        "state": {"lineage": context.lineage, "serial": context.serial},
        "configs_digest": context.configs_digest,
        "managed": plan.managed,
        "has_changes": plan.has_changes,
        "summary": plan.summary(),
        "changes": [
            change_to_json(change)
            for change in plan.changes
            if change.action is not Action.UNCHANGED
        ],
        "drift": [
            {
                "key": d.key.as_dict(),
                "coinConfigId": d.coin_config_id,
                "field": d.field.value,
                "state": drift_value(d, d.in_state),
                "server": drift_value(d, d.on_server),
            }
            for d in plan.drift
        ],
        "new_companies": list(plan.new_companies),
        "only": list(context.only),
    }


def render_json(plan: Plan) -> str:
    return json.dumps(plan_to_json(plan), indent=2, sort_keys=False) + "\n"


def _md_row(change: Change, in_flight: bool = False) -> str:
    if in_flight:
        key = code(str(change.key), MARKDOWN_KEY_LIMIT, cell=True)
        return f"| … in flight | {key} | {change.amount} | |"
    if change.action in (Action.UPDATE, Action.RETIRE) or (
        change.action is Action.MOVE and change.before != change.amount
    ):
        amount = f"{change.before} → {change.amount}"
    else:
        amount = str(change.amount)
    if change.moved_from is not None:
        old = code(str(change.moved_from), MARKDOWN_KEY_LIMIT, cell=True)
        key = code(str(change.key), MARKDOWN_KEY_LIMIT, cell=True)
        source = code(str(change.source), MARKDOWN_PATH_LIMIT, cell=True) if change.source else ""
        return f"| {_SYMBOL[change.action]} move | {old} → {key} | {amount} | {source} |"
    source = code(str(change.source), MARKDOWN_PATH_LIMIT, cell=True) if change.source else ""
    key = code(str(change.key), MARKDOWN_KEY_LIMIT, cell=True)
    return f"| {_SYMBOL[change.action]} {change.action.value} | {key} | {amount} | {source} |"


def _md_drift(drift: Drift) -> str:
    """One drift item; every value in it is inert and cut (see coins_sync.plan.markdown)."""
    key = code(str(drift.key), MARKDOWN_KEY_LIMIT)
    config = code(drift.coin_config_id)
    if drift.field is DriftField.MISSING:
        return (
            f"- {key}: {config} was not found on the server (404); left alone. If it is "
            "really gone, `coins-sync state rm KEY` lets the next apply create it again"
        )
    if drift.field is DriftField.UNUSABLE_AMOUNT:
        return (
            f"- {key}: the server holds amount {code(drift.on_server)} for {config}, not a "
            f"whole number of 0 or more ({code(drift.in_state)} in state); left alone"
        )
    return (
        f"- {key}: {drift.field} is {code(drift.on_server)} on the server, "
        f"{code(drift.in_state)} in state ({config})"
    )


def _size(lines: list[str]) -> int:
    return sum(len(line) + 1 for line in lines)


def _fit(lines: list[str], room: int) -> list[str]:
    """The leading ``lines`` that fit in ``room`` characters, newlines counted."""
    kept: list[str] = []
    for line in lines:
        room -= len(line) + 1
        if room < 0:
            break
        kept.append(line)
    return kept


def render_markdown(plan: Plan, budget: int = MARKDOWN_BUDGET) -> str:
    """A PR comment: the summary first, then drift and a table; long lists fold and cut.

    The whole result, drift included, fits in ``budget`` characters, so it fits one
    GitHub comment; what is cut is counted. Values from the server, the state and file
    names are shown inert (code spans) and cut to a bounded length.
    """
    counts = plan.summary()
    columns = [a.value for a in Action if a not in _WHEN_ANY or counts[a.value]]
    head = [
        f"### coins-sync plan for {code(plan.context.env)}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " ---: |" * len(columns),
        "| " + " | ".join(str(counts[name]) for name in columns) + " |",
        "",
        f"**{summary_line(plan, markdown=True)}**",
        "",
    ]
    locked = lock_line(plan)
    if locked:
        head += ["> [!NOTE]", f"> {locked}", ""]
    if plan.context.only:
        only = ", ".join(code(p, MARKDOWN_KEY_LIMIT) for p in plan.context.only[:20])
        head += [
            "> [!NOTE]",
            f"> Partial plan: only {only}; every other rule and state entry is left alone.",
            "",
        ]
    agreeing = agreeing_line(plan)
    if agreeing:
        head += [agreeing, ""]
    first_contact = first_contact_line(plan)
    if first_contact:
        names = ", ".join(code(name, MARKDOWN_KEY_LIMIT) for name in plan.new_companies[:20])
        more = f" and {len(plan.new_companies) - 20} more" if len(plan.new_companies) > 20 else ""
        head += ["> [!CAUTION]", f"> {first_contact} New: {names}{more}.", ""]
    drift_head = (
        [f"**Drift:** {len(plan.drift)} difference(s) between the server and state.", ""]
        if plan.drift
        else []
    )
    drift = [_md_drift(d) for d in plan.drift[:MARKDOWN_DRIFT_ROWS]]
    flying = set(plan.in_flight)
    rows = [_md_row(c, c.key in flying) for c in plan.changes if c.action is not Action.UNCHANGED]
    body: list[str] = []
    if rows and any(c.action is Action.UNCERTAIN and c.key not in flying for c in plan.changes):
        body += [
            "> [!WARNING]",
            "> Some creates have an unknown outcome. Resolve them with "
            "`coins-sync state import KEY ID` before applying.",
            "",
        ]
    if any(c.action is Action.ORPHAN and c.amount > 0 for c in plan.changes):
        body += [f"Orphans are left alone and keep paying: {STOP_HINT}.", ""]
    table_head = ["| action | key | amount | source |", "| --- | --- | ---: | --- |"]
    folded = len(rows) > MARKDOWN_INLINE_ROWS
    # sized for the longest summary ("N of N changes"); the real one is written once the
    # table is cut, so it never claims more rows than it shows
    opening = (
        [f"<details><summary>{len(rows)} of {len(rows)} changes</summary>", ""] if folded else []
    )
    closing = ["", "</details>"] if folded else []
    fixed = [*head, *drift_head, *body]
    if rows:
        fixed += [*opening, *table_head, *closing]
    room = budget - _size(fixed) - 2 * _MD_TAIL_RESERVE
    # Drift may take half of the room when there is a table to show, all of it otherwise.
    kept_drift = _fit(drift, room // 2 if rows else room)
    room -= _size(kept_drift)
    kept_rows = _fit(rows, room)

    lines = [*head, *drift_head, *kept_drift]
    if len(kept_drift) < len(plan.drift):
        left = len(plan.drift) - len(kept_drift)
        lines.append(
            f"- … and {left} more differences not shown; "
            "`coins-sync plan --refresh --format json` lists them all."
        )
    if plan.drift:
        lines.append("")
    if not rows:
        return "\n".join(lines) + "\n"
    if folded:
        shown = len(kept_rows)
        words = f"All {shown}" if shown == len(rows) else f"{shown} of {len(rows)}"
        opening = [f"<details><summary>{words} changes</summary>", ""]
    lines += [*body, *opening, *table_head, *kept_rows]
    if len(kept_rows) < len(rows):
        left = len(rows) - len(kept_rows)
        lines += ["", f"… and {left} more changes not shown; run `coins-sync plan` for all."]
    lines += closing
    return "\n".join(lines) + "\n"


class PlanRenderer(ABC):
    """One output format of a plan: ``render(plan)`` returns the whole text.

    ``colour`` asks for terminal colours; a format that has none ignores it.
    """

    #: The format's name, as ``--format`` takes it.
    name: ClassVar[str]

    def __init__(self, *, colour: bool = False) -> None:
        self.colour = colour

    @abstractmethod
    def render(self, plan: Plan) -> str:
        """The plan in this format, ending with a newline."""


class PlanText(PlanRenderer):
    """Terraform-like lines for a terminal, coloured when ``colour`` is set."""

    name = "text"

    def render(self, plan: Plan) -> str:
        return render_text(plan, colour=self.colour)


class PlanJson(PlanRenderer):
    """The JSON plan (schemas/plan.schema.json), for machines and ``plan --out``."""

    name = "json"

    def render(self, plan: Plan) -> str:
        return render_json(plan)


class PlanMarkdown(PlanRenderer):
    """A PR comment that fits in ``budget`` characters."""

    name = "markdown"

    def __init__(self, *, colour: bool = False, budget: int = MARKDOWN_BUDGET) -> None:
        super().__init__(colour=colour)
        self.budget = budget

    def render(self, plan: Plan) -> str:
        return render_markdown(plan, budget=self.budget)


#: Every plan format by name, in the order ``--format`` lists them.
RENDERERS: dict[str, type[PlanRenderer]] = {
    cls.name: cls for cls in (PlanText, PlanJson, PlanMarkdown)
}


def renderer_for(fmt: str, *, colour: bool = False) -> PlanRenderer:
    """The renderer of format ``fmt``; an unknown name raises UnknownFormatError."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise UnknownFormatError(
            f"unknown plan format {fmt!r}; choose one of {', '.join(RENDERERS)}"
        )
    return renderer(colour=colour)


def render(plan: Plan, fmt: str, colour: bool = False) -> str:
    """The plan in format ``fmt`` (see :func:`renderer_for`)."""
    return renderer_for(fmt, colour=colour).render(plan)
