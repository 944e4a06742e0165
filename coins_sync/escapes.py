"""The one rule for characters that must not reach a reader as they are.

A value coins-sync does not control (a file name, a server message, a key read from a
state file) may hold characters that end a line, move a terminal's cursor, recolour or
hide text, or reverse what follows (bidi overrides, zero-width characters). Both the
terminal (:mod:`coins_sync.console`) and Markdown (:mod:`coins_sync.plan.markdown`)
write such a character as a visible escape instead, by :func:`escape_char`.
"""

from __future__ import annotations

import re
import unicodedata

_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
# Control, format (bidi overrides, zero-width), line/paragraph separators, surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Every character that may need an escape lies outside printable ASCII; the category
# of those few is looked up one by one.
_NOT_PLAIN_ASCII = re.compile(r"[^\x20-\x7e]")


def escape_char(char: str) -> str:
    """One character as an escape (``\\n``, ``\\x1b``, ``\\u202e``) when it would end a
    line, act on a terminal or hide text; else the character itself. The one rule for
    such characters, for the terminal and for Markdown alike."""
    if unicodedata.category(char) not in _HIDDEN:
        return char
    if char in _NAMED:
        return _NAMED[char]
    point = ord(char)
    if point <= 0xFF:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


def escape_hidden(value: str) -> str:
    """``value`` on one line: every control, format or separator character escaped
    (newlines and tabs too). For a value that stands inside a line or a code span."""
    return _NOT_PLAIN_ASCII.sub(lambda m: escape_char(m[0]), value)
