"""Counted nouns in messages: ``1 rule``, ``2 rules``, ``1 company``, ``3 companies``.

A leaf module (it imports nothing of coins-sync), so every renderer can use it without
an import cycle through the console.
"""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 rule``, ``2 rules``; ``many`` for an irregular plural (``1 company``)."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or word + 's'}"
