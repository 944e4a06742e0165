"""Terminal output: the one funnel to stdout/stderr.

Every line the command line prints goes through :func:`out` or :func:`err`, and every log
line through :class:`ScrubFilter`; each passes :func:`safe`, which redacts secrets
(:func:`coins_sync.redact.redact`) and then makes the text inert (:func:`inert`):
control characters are escaped, so a file name or a server message cannot move the
cursor, recolour or hide text on a terminal, and no printed line can start a GitHub
Actions workflow command (``::error ...::``, ``##[...]``) in a CI log. The renderers here
turn results (validation problems, the state, an apply report) into lines; the plan
renderers live in :mod:`coins_sync.plan.render`.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import click

from coins_sync.escapes import escape_char
from coins_sync.redact import redact
from coins_sync.words import plural

if TYPE_CHECKING:  # validate and an offline plan load none of these
    import logging

    from coins_sync.apply import ApplyReport
    from coins_sync.errors import Problem
    from coins_sync.gitlease.status import BranchStatus
    from coins_sync.state.model import State, StateEntry


# Every character a line may not show as it is lies outside printable ASCII; the
# category of those few is looked up one by one (coins_sync/escapes.py).
_NOT_PLAIN_LINE = re.compile(r"[^\t\n\x20-\x7e]")
# The runner reads ``::name ...::`` after leading white space, and the legacy
# ``##[name ...]`` anywhere in a line.
_WORKFLOW_COMMAND = re.compile(r"^([^\S\n]*):(?=:)", re.MULTILINE)
_LEGACY_COMMAND = "##["


def inert(text: str, keep: Collection[str] = ()) -> str:
    """``text`` safe to print on a terminal or in a CI log; lines and tabs are kept.

    Every other control, format or separator character is escaped, a line that would
    start a GitHub workflow command gets its first ``:`` written as ``\\x3a``, and
    ``##[`` as ``##\\x5b``. ``keep`` lists exact substrings written by coins-sync itself
    (the plan's coloured action symbols) that pass unchanged.
    """
    if keep:
        pattern = "(" + "|".join(re.escape(token) for token in keep) + ")"
        parts = re.split(pattern, text)
        return "".join(part if index % 2 else inert(part) for index, part in enumerate(parts))
    # fast paths (C speed) for the usual plain text: a plan may be megabytes long
    if not (text.isascii() and text.replace("\n", " ").replace("\t", " ").isprintable()):
        text = _NOT_PLAIN_LINE.sub(lambda m: escape_char(m[0]), text)
    if "::" in text:
        text = _WORKFLOW_COMMAND.sub(r"\1\\x3a", text)
    return text.replace(_LEGACY_COMMAND, "##\\x5b")


def safe(text: str, keep: Collection[str] = ()) -> str:
    """``text`` with secrets redacted, then made inert (see :func:`inert`)."""
    return inert(redact(text), keep)


def out(text: str, *, nl: bool = True, keep: Collection[str] = ()) -> None:
    """Print to stdout, secrets redacted and text made inert."""
    click.echo(safe(text, keep), nl=nl)


def err(text: str, *, nl: bool = True) -> None:
    """Print to stderr, secrets redacted and text made inert."""
    click.echo(safe(text), err=True, nl=nl)


#: Set by the global ``--no-color`` flag.
_colour_off = False


def forbid_colour(off: bool) -> None:
    """``--no-color``: no colour for the rest of this run, whatever the terminal."""
    global _colour_off
    _colour_off = off


def on_terminal() -> bool:
    """Whether stdout is a terminal."""
    return sys.stdout.isatty()


def use_colour() -> bool:
    """Colour only on a terminal that can show it: never with ``--no-color``, with
    NO_COLOR set (https://no-color.org), or with ``TERM=dumb``."""
    return (
        not _colour_off
        and on_terminal()
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )


# -- validate -----------------------------------------------------------------------


def problems_report(problems: Sequence[Problem], fmt: str) -> str:
    """``validate``'s answer for invalid files: every problem, then a summary."""
    files = len({p.path for p in problems})
    if fmt == "json":
        data = {
            "valid": False,
            "problems": [
                # each value is scrubbed before JSON escapes it (a secret's escaped
                # form inside an escaped message is escaped twice)
                {"path": redact(p.path), "line": p.line, "col": p.col, "message": redact(p.message)}
                for p in problems
            ],
            "summary": {"problems": len(problems), "files_with_problems": files},
        }
        return _json(data, indent=2)
    lines = [str(problem) for problem in problems]
    lines.append(f"invalid: {plural(len(problems), 'problem')} in {plural(files, 'file')}")
    return "\n".join(lines)


def valid_report(files: int, rules: int, fmt: str) -> str:
    """``validate``'s answer when every file is valid."""
    if fmt == "json":
        data = {"valid": True, "problems": [], "summary": {"files": files, "rules": rules}}
        return _json(data, indent=2)
    return f"valid: {plural(rules, 'rule')} in {plural(files, 'file')}"


# -- state list ---------------------------------------------------------------------


def lease_status(status: BranchStatus, fmt: str) -> str:
    """``git-lease status``: the state branch's lease, as a sentence or JSON."""
    if fmt == "json":
        return _json(status.to_json(), indent=2)
    return status.describe()


def _marks(entry: StateEntry) -> str:
    """What ``state list`` says besides the id: retired, or an update's unknown outcome."""
    marks = ["retired"] if entry.retired else []
    if entry.pending is not None:
        # an update whose outcome is unknown: the server holds either amount
        marks.append(
            f"pending: update to {entry.pending}, outcome unknown; the next plan reads it back"
        )
    return f" ({', '.join(marks)})" if marks else ""


def state_listing(state: State, where: str, fmt: str) -> str:
    """``state list``: live entries and uncertain creates, as a table or JSON."""
    if fmt == "json":
        data = state.to_json()
        data.setdefault("uncertain", [])
        return _json(data, indent=2)
    rows = [
        (str(entry.key), str(entry.amount), entry.coin_config_id + _marks(entry))
        for entry in sorted(state.entries.values(), key=lambda e: e.key)
    ]
    rows += [
        (str(item.key), str(item.amount), "(uncertain)")
        for item in sorted(state.uncertain.values(), key=lambda u: u.key)
    ]
    width = max((len(r[0]) for r in rows), default=3)
    lines = []
    if rows:
        lines.append(f"{'KEY':<{width}}  {'AMOUNT':>6}  COIN_CONFIG_ID")
        lines.extend(f"{key:<{width}}  {amount:>6}  {cid}" for key, amount, cid in rows)
    pending = sum(1 for entry in state.entries.values() if entry.pending is not None)
    lines.append(
        f"{plural(len(state.entries), 'entry', 'entries')}, {len(state.uncertain)} uncertain"
        f"{f', {pending} pending' if pending else ''} in {where} (serial {state.serial})"
    )
    return "\n".join(lines)


# -- apply --------------------------------------------------------------------------


class Progress:
    """Progress of a long run on stderr.

    On a terminal, one bar redrawn in place. Without one (CI logs, a pipe), a plain line
    such as ``applied 120/400 (0 failed)`` each time another 10% is done (runs of 20
    items or more) or 30 seconds have passed, so a long run never looks hung.

    While its line is open, a log line (the Ctrl-C warning, a retry) first ends it, so
    the message never lands on the bar's line.
    """

    #: Without a terminal: print when this share more is done...
    STEP = 0.1
    #: ...or when this many seconds have passed since the last line.
    EVERY = 30.0
    #: Runs of fewer items (seconds at most) print only the 30-second lines.
    SMALL = 20

    def __init__(
        self,
        enabled: bool | None = None,
        *,
        verb: str = "applied",
        plain: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        tty = sys.stderr.isatty()
        self.enabled = tty if enabled is None else enabled
        self.plain = (not self.enabled) if plain is None else plain
        self.verb = verb
        self.shown = False
        self.line_open = False
        self._clock = clock
        self._last_time = clock()
        self._last_done = 0
        self._printed = False
        self._filter = _EndProgressLine(self)
        import logging  # progress is shown by apply, which logs anyway

        for handler in logging.getLogger("coins_sync").handlers:
            handler.addFilter(self._filter)

    def __call__(self, done: int, total: int, failed: int = 0) -> None:
        if self.enabled and total >= 2:
            width = 30
            filled = width * done // max(total, 1)
            bar = "#" * filled + "-" * (width - filled)
            click.echo(f"\r  [{bar}] {done}/{total}", err=True, nl=False)
            self.shown = self.line_open = True
        if self.plain and total > 0:
            now = self._clock()
            waited = now - self._last_time >= self.EVERY
            finished = done >= total > self._last_done and self._printed
            stepped = done - self._last_done >= max(1, int(total * self.STEP))
            if waited or finished or (total >= self.SMALL and stepped):
                self._printed = True
                self._last_done, self._last_time = done, now
                err(f"{self.verb} {done}/{total} ({failed} failed)")

    def end_line(self) -> None:
        if self.line_open:
            self.line_open = False
            click.echo("", err=True)

    def close(self) -> None:
        import logging

        for handler in logging.getLogger("coins_sync").handlers:
            handler.removeFilter(self._filter)
        self.end_line()


class _EndProgressLine:
    """A log filter (logging takes any object with this ``filter`` method)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.end_line()
        return True


def print_report(report: ApplyReport) -> None:
    """What an apply did: failures and uncertain creates (stderr), then the summary."""
    for key, reason in report.failed:
        if reason != report.stopped_by:  # said once, below
            err(f"  failed     {key}: {reason}")
    for key, reason in report.uncertain:
        err(f"  uncertain  {key}: {reason}")
    if report.uncertain or report.skipped_uncertain:
        err(
            "  Uncertain creates may exist on the server. If one does, record it with "
            "`coins-sync state import KEY COIN_CONFIG_ID`; to send it again, use "
            "`coins-sync apply --retry-uncertain`."
        )
    if report.unrecorded:
        err(f"  Confirmed by the server but not in the state file ({len(report.unrecorded)}):")
        for key, config_id in report.unrecorded:
            err(f"  confirmed  {key} coinConfigId={config_id}")
    if report.interrupted:
        err("  Interrupted: nothing new was sent; every result so far is recorded.")
    out(report.summary())
    if report.stopped_by is not None:
        err(f"Error: {report.stopped_by}. The run stopped; nothing more was sent.")


def _json(data: object, indent: int) -> str:
    import json  # only for --format json: text output starts faster without it

    return json.dumps(data, indent=indent)


# -- logging ------------------------------------------------------------------------


class ScrubFilter:
    """Redacts every log line, its arguments merged in first, and makes it inert.

    A log filter: logging takes any object with this ``filter`` method, so this module
    imports logging only to set it up.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = safe(record.getMessage())
        record.args = None
        return True


#: -v and -vv, as given to :func:`setup_logging`.
_verbosity = 0


def verbosity() -> int:
    """0 by default, 1 with -v (info), 2 with -vv (debug)."""
    return _verbosity


def setup_logging(verbosity: int, *, silent_command: bool = False) -> None:
    """``coins_sync`` logs to stderr, scrubbed: warnings, -v info, -vv debug.

    A ``silent_command`` is one that never logs without -v (``validate``, ``init``,
    ``schema``: tests/test_import_purity.py holds them to it). For it, without -v and
    while nothing imported uses logging, nothing is set up and logging is not imported:
    that import alone was a twentieth of ``validate``'s start-up.
    """
    global _verbosity
    _verbosity = verbosity
    if silent_command and not verbosity and "logging" not in sys.modules:
        return
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ScrubFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("coins_sync")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(
        logging.DEBUG if verbosity > 1 else logging.INFO if verbosity else logging.WARNING
    )
