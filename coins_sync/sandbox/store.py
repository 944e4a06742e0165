"""The sandbox's configs: validated, numbered, optionally mirrored to a JSON file."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coins_sync.errors import CoinsSyncError
from coins_sync.sandbox.messages import HttpError
from coins_sync.state.files import atomic_write

__all__ = ["FIELDS", "Store", "validate_fields"]

logger = logging.getLogger(__name__)

FIELDS = ("configuration", "companyId", "event", "amount")
_FIRST_ID = 100001


class Store:
    """Configs by id, in creation order; optionally mirrored to a JSON file.

    The lock covers only the dict mutation. File writes are serialised by a second lock
    and coalesced: a writer whose change is already in a newer written snapshot skips.
    """

    def __init__(self, data_file: Path | None) -> None:
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._configs: dict[str, dict[str, Any]] = {}
        self._next_id = _FIRST_ID
        self._version = 0
        self._written = 0
        self._data_file = data_file
        if data_file is not None and data_file.exists():
            self._load(data_file)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
            next_id = data.get("next_id")
            configs = data.get("configs")
            if not isinstance(next_id, int) or isinstance(next_id, bool):
                raise ValueError("next_id is not an integer")
            if not isinstance(configs, list):
                raise ValueError("configs is not a list")
            for item in configs:
                if not isinstance(item, dict) or not isinstance(item.get("coinConfigId"), str):
                    raise ValueError("a config lacks a coinConfigId")
                cleaned = validate_fields(item, partial=False, extra=("coinConfigId",))
                config_id = item["coinConfigId"]
                if config_id in self._configs:
                    raise ValueError(f"duplicate coinConfigId {config_id}")
                self._configs[config_id] = {"coinConfigId": config_id, **cleaned}
                suffix = config_id.removeprefix("WCC")
                if suffix.isdigit():
                    next_id = max(next_id, int(suffix) + 1)
        except (OSError, ValueError, RecursionError, HttpError) as e:
            raise CoinsSyncError(f"sandbox data file {path} is unusable: {e}") from e
        self._next_id = max(next_id, _FIRST_ID)
        logger.debug("loaded %d configs from %s", len(self._configs), path)

    def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            config_id = f"WCC{self._next_id:06d}"
            self._next_id += 1
            config = {"coinConfigId": config_id, **{k: fields[k] for k in FIELDS}}
            self._configs[config_id] = config
            self._version += 1
            version = self._version
            result = dict(config)
        self._persist(version)
        return result

    def get(self, config_id: str) -> dict[str, Any] | None:
        with self._lock:
            config = self._configs.get(config_id)
            return None if config is None else dict(config)

    def patch(self, config_id: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            config = self._configs.get(config_id)
            if config is None:
                return None
            config.update(fields)
            self._version += 1
            version = self._version
            result = dict(config)
        self._persist(version)
        return result

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._configs.values()]

    def _persist(self, version: int) -> None:
        if self._data_file is None:
            return
        with self._write_lock:
            if self._written >= version:
                return
            with self._lock:
                current = self._version
                data = {
                    "next_id": self._next_id,
                    "configs": [dict(c) for c in self._configs.values()],
                }
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            atomic_write(self._data_file, text.encode("utf-8"))
            self._written = current


def validate_fields(body: object, *, partial: bool, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a create (all four fields) or patch (at least one) body; 400 on failure."""
    if not isinstance(body, dict):
        raise HttpError(400, "Request body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS) - set(extra))
    if unknown:
        raise HttpError(400, f"Unknown field(s): {', '.join(unknown)}")
    if partial:
        if not any(name in body for name in FIELDS):
            raise HttpError(400, "No field to update")
    else:
        missing = [name for name in FIELDS if name not in body]
        if missing:
            raise HttpError(400, f"Missing required field(s): {', '.join(missing)}")
    cleaned: dict[str, Any] = {}
    for name in FIELDS:
        if name not in body:
            continue
        value = body[name]
        if name == "amount":
            if not isinstance(value, int) or isinstance(value, bool):
                raise HttpError(400, "amount must be an integer")
            if value < 0:
                raise HttpError(400, "amount must not be negative")
        elif not isinstance(value, str) or not value.strip():
            raise HttpError(400, f"{name} must be a non-empty string")
        cleaned[name] = value
    return cleaned
