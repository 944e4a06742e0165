"""Discovery: which files under the given paths are rule files.

What is promised: every ``*.yaml``/``*.yml`` under a folder is found, recursively, in
sorted path order, except inside hidden folders (``.git``, an editor's backups); a path
that does not exist, or a rule file that is a broken symbolic link, is a located problem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from coins_sync.errors import Problem

YAML_SUFFIXES = (".yaml", ".yml")


def display_path(path: Path, cwd: Path | None = None) -> str:
    """A path as users see it in messages: relative to the working directory."""
    base = cwd or Path.cwd()
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def discover(paths: Sequence[Path]) -> tuple[list[Path], list[Problem]]:
    """Expand folders to their YAML files (recursively, sorted); report missing paths."""
    found: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            candidates = [
                p
                for p in path.rglob("*")
                if p.suffix.lower() in YAML_SUFFIXES
                # hidden folders (.git, an editor's backups) are never rule files
                and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1])
            ]
            found.extend(sorted(p for p in candidates if p.is_file()))
            # a rule file whose link points nowhere is an error, never skipped: its rules
            # would otherwise turn into orphans without a word
            problems.extend(
                Problem(
                    display_path(p),
                    0,
                    0,
                    f"broken symbolic link (it points to {os.readlink(p)!r}, which does not exist)",
                )
                for p in sorted(candidates)
                if p.is_symlink() and not p.exists()
            )
        elif path.is_file():
            found.append(path)
        elif path.exists():
            why = "not a regular file (a FIFO, socket or device); refusing to read it"
            problems.append(Problem(display_path(path), 0, 0, why))
        else:
            problems.append(Problem(display_path(path), 0, 0, "no such file or folder"))
    unique = sorted(set(found), key=lambda p: display_path(p))
    return unique, problems
