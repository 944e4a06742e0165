"""Other state files of the same name under the project root.

Apply refuses to start a new, empty state next to one that already records entries:
that is how a run from the wrong folder would create every rule twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def states_elsewhere(state: Path, root: Path, limit: int = 20_000) -> list[Path]:
    """State files named like ``state`` that already record entries somewhere else under
    ``root`` (a bounded walk of at most ``limit`` names, hidden folders and
    ``node_modules`` skipped)."""
    mine = state.resolve()
    found: list[Path] = []
    seen = 0
    for folder, dirs, files in os.walk(root.resolve()):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "node_modules")
        seen += len(files) + len(dirs)
        if seen > limit:
            break
        if mine.name not in files:
            continue
        candidate = Path(folder) / mine.name
        if candidate.resolve() == mine:
            continue
        try:
            data = json.loads(candidate.read_bytes()[: 64 * 1024 * 1024])
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and data.get("lineage") and data.get("entries"):
            found.append(candidate)
    return found
