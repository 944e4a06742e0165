"""What may go onto the state branch, and what may come off it.

``restore`` puts a failed run's kept files on the branch: only the same lineage, a
serial no older than the branch's, and an audit log that continues the branch's.
``pull`` copies the branch's files into a working tree for a local plan: never over
local files that may hold results the branch lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from coins_sync.errors import GitLeaseError, StateError
from coins_sync.state.file import FileStateStore
from coins_sync.state.journal import parse_journal
from coins_sync.state.model import parse_state


def read_kept(source: Path, files: Sequence[tuple[Path, str]]) -> list[bytes | None]:
    """The state files in ``source`` (by name, or at their path in the branch)."""
    if not source.is_dir():
        raise GitLeaseError(f"{source}: not a folder (give the downloaded artifact's folder)")
    found: list[bytes | None] = []
    for local, path in files:
        candidates = (source / local.name, source / path)
        hit = next((c for c in candidates if c.is_file()), None)
        found.append(None if hit is None else hit.read_bytes())
    return found


def check_restored(
    source: Path,
    files: Sequence[tuple[Path, str]],
    found: Sequence[bytes | None],
    branch: str,
    blob: Callable[[str], bytes | None],
) -> None:
    """Refuse kept files that would replace newer or foreign data on the branch
    (``blob(path)`` reads a file of the branch)."""
    state_raw, _, journal_raw, audit_raw, _rescue = found
    state_name = files[0][0].name
    if state_raw is None:
        raise GitLeaseError(f"{source} holds no {state_name}; nothing was restored")
    restored = parse_state(state_raw, str(source / state_name))
    branch_raw = blob(files[0][1])
    if branch_raw is not None:
        current = parse_state(branch_raw, f"{branch}:{files[0][1]}")
        if current.lineage != restored.lineage:
            raise StateError(
                f"{source / state_name} has lineage {restored.lineage}, the branch "
                f"{current.lineage}: another environment's state? nothing was restored"
            )
        if restored.serial < current.serial:
            raise StateError(
                f"{source / state_name} has serial {restored.serial}, older than the "
                f"branch's {current.serial}; nothing was restored"
            )
    if journal_raw is not None:
        parse_journal(journal_raw, restored.lineage, str(source / files[2][0].name))
    branch_audit = blob(files[3][1])
    if branch_audit and not (audit_raw or b"").startswith(branch_audit):
        raise StateError(
            f"{source / files[3][0].name} does not continue the branch's audit log; "
            "nothing was restored"
        )


def check_pull(store: FileStateStore, branch_raw: bytes | None, where: str) -> None:
    """Refuse to replace local files that may hold results the branch lacks."""
    for path in (store.journal_path, store.rescue_path):
        if path.exists():
            raise StateError(
                f"{path} holds results not folded into the state yet; the branch's files "
                "would replace them. Run `coins-sync state list` (it folds them) and push "
                "the state under a lease first. Nothing was pulled"
            )
    local = store.read_stored()
    if not local.exists or branch_raw is None:
        return
    theirs = parse_state(branch_raw, where)
    if local.lineage != theirs.lineage:
        raise StateError(
            f"{store.path} has lineage {local.lineage}, the branch ({where}) "
            f"{theirs.lineage}: another state; move it aside to pull. Nothing was pulled"
        )
    if local.serial > theirs.serial:
        raise StateError(
            f"{store.path} has serial {local.serial}, newer than the branch's "
            f"{theirs.serial}; push it under a lease instead. Nothing was pulled"
        )
