"""The audit log: one JSON line per applied change, beside the state, never rewritten.

``state/prod.json`` has ``state/prod.audit.jsonl``. Each line says when (UTC), where
(environment), who (``GITHUB_ACTOR`` or the OS user), from which commit (``GITHUB_SHA``
or ``git rev-parse HEAD``), what (action, key, amount before and after, coinConfigId)
and how it ended (outcome). Lines are appended and fsynced as each result arrives.
Only public values are ever passed in, and every message is scrubbed of every encoding
of every secret in the environment (:mod:`coins_sync.redact`) as a second line of defence.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

from coins_sync.configs.model import RuleKey
from coins_sync.errors import StateError
from coins_sync.inputs import MAX_LINE_BYTES, loads_json, open_input
from coins_sync.redact import redact
from coins_sync.state.files import AppendLog
from coins_sync.state.journal import Outcome
from coins_sync.state.model import utc_now
from coins_sync.state.store import os_user


class AuditAction(StrEnum):
    """What an audit record says was attempted; its :class:`Outcome` says how it ended
    (created, updated, imported, forgotten, uncertain or failed)."""

    CREATE = "create"
    UPDATE = "update"
    IMPORT = "import"
    FORGET = "forget"
    MOVE = "move"  # the config's key fields PATCHed under the same id (movedFrom)
    RETIRE = "retire"  # a retired rule's config set to amount 0
    RENAME = "state-mv"  # `state mv`: re-keyed in state only, nothing sent


def audit_path_for(state_path: Path) -> Path:
    """``state/prod.json`` -> ``state/prod.audit.jsonl``."""
    return state_path.with_name(state_path.stem + ".audit.jsonl")


def current_actor(environ: Mapping[str, str]) -> str:
    """Who acts: ``GITHUB_ACTOR`` in a workflow, else the operating-system user."""
    return environ.get("GITHUB_ACTOR") or os_user()


def current_commit(environ: Mapping[str, str], cwd: Path | None = None) -> str | None:
    sha = environ.get("GITHUB_SHA")
    if sha:
        return sha
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text else None


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log."""

    action: AuditAction
    key: RuleKey
    outcome: Outcome
    before: int | None = None
    after: int | None = None
    coin_config_id: str | None = None
    message: str | None = None
    moved_from: RuleKey | None = None  # a move or `state mv`: the key before


def audit_data(item: AuditRecord, env: str, actor: str, commit: str | None) -> dict[str, Any]:
    """One audit record as the JSON object every backend stores."""
    data: dict[str, Any] = {
        "at": utc_now(),
        "environment": env,
        "action": item.action,
        "key": item.key.as_dict(),
        "before": item.before,
        "after": item.after,
        "coinConfigId": item.coin_config_id,
        "outcome": item.outcome,
        "actor": actor,
        "commit": commit,
    }
    if item.moved_from is not None:
        data["movedFrom"] = item.moved_from.as_dict()
    if item.message:
        data["message"] = item.message
    return data


class AuditSink(Protocol):
    """Where audit records go: a file (:class:`AuditLog`) or a database table."""

    def record(self, item: AuditRecord) -> None: ...

    def close(self) -> None: ...


class AuditLog:
    """Append-only, fsynced JSON lines; safe to call from several threads."""

    def __init__(
        self,
        path: Path,
        env: str,
        actor: str,
        commit: str | None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.env = env
        self.actor = actor
        self.commit = commit
        self._environ = environ  # whose secrets messages are scrubbed of; None: os.environ
        self._log = AppendLog(path, "audit log")

    @classmethod
    def beside(cls, state_path: Path, env: str, environ: Mapping[str, str]) -> AuditLog:
        return cls(
            audit_path_for(state_path),
            env,
            current_actor(environ),
            current_commit(environ),
            environ,
        )

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def record(self, item: AuditRecord) -> None:
        data = audit_data(item, self.env, self.actor, self.commit)
        if item.message:
            data["message"] = redact(item.message, self._environ)
        line = (json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n").encode()
        self._log.append(line)

    def close(self) -> None:
        self._log.close()


def _bounded_lines(handle: IO[bytes]) -> Iterator[bytes]:
    """Each line of ``handle``; one over MAX_LINE_BYTES is read past and given as ``b"\\0"``
    (not JSON, so not a record), so no line is ever held whole in memory."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            line = b"\0"
        yield line


def read_audit(path: Path, unreadable: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every complete record of an audit log, oldest first. An unreadable line (torn by a
    full disk, garbled) is not a record; it is named in ``unreadable`` when given."""
    if not path.exists():
        return
    try:
        handle = open_input(path)
    except OSError as e:
        raise StateError(f"{path}: cannot read the audit log: {e.strerror or e}") from e
    with handle:
        for number, line in enumerate(_bounded_lines(handle), start=1):
            if not line.strip():
                continue
            try:
                data = loads_json(line)
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, dict):
                yield data
            elif unreadable is not None:
                unreadable.append(f"{path}:{number}")
