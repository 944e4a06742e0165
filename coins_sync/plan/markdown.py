"""Inert inline Markdown for values coins-sync does not control.

Server values, file paths, audit actors and keys read from a state file end up in a PR
comment or a report. Written as plain Markdown, such a value could mention someone
(``@team``), make a link or an image, inject HTML, add emphasis, or with a ``|`` or a
newline break the table it sits in. Inside a code span none of that is active on GitHub:
no mentions, no autolinks, no HTML, no emphasis and no backslash escapes. :func:`code`
makes a span the value cannot close, shows the value's characters as they are (a
backslash stays one backslash) and cuts it to a bounded length, so one long value cannot
blow a size budget.
"""

from __future__ import annotations

import re

from coins_sync.escapes import escape_hidden

#: Appended, outside the span, when a value was cut.
ELLIPSIS = "…"
#: Shown for a ``|`` right after a backslash in a table cell: GFM has no way to write
#: that pair inside a cell (``\\|`` ends the cell, ``\\\\|`` shows two backslashes).
PIPE_AFTER_BACKSLASH = "¦"

_BACKTICKS = re.compile(r"`+")
_PIPE = re.compile(r"(\\?)\|")


def code(value: str, limit: int = 100, *, cell: bool = False) -> str:
    """``value`` as a code span: at most ``limit`` characters of it, then ``…`` after it.

    Characters that would end the line or hide text (controls, bidi overrides,
    zero-width characters) are written as escapes such as ``\\n`` or ``\\u202e``; every
    other character is shown as it is. ``cell=True`` is for a GFM table cell, where a
    ``|`` ends the cell even inside a code span: it is written as ``\\|``, which the
    table reads back as ``|``. An empty value gives an empty string.
    """
    text = escape_hidden(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if cell:
        text = _PIPE.sub(lambda m: m[1] + PIPE_AFTER_BACKSLASH if m[1] else "\\|", text)
    if not text:
        return ""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * (longest + 1)
    # One space each side is stripped again by the parser; it keeps a backtick at an edge
    # from joining the fence, and keeps a value's own edge spaces.
    pad = text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and bool(text.strip()))
    inner = f" {text} " if pad else text
    return f"{fence}{inner}{fence}{ELLIPSIS if cut else ''}"
