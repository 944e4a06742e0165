"""Saved plans: read a ``plan --out`` file back and refuse it once it is stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from coins_sync.errors import CoinsSyncError, StalePlanError
from coins_sync.loader import ConfigSet
from coins_sync.plan import Action, Change, Plan, PlanContext
from coins_sync.render import plan_to_json
from coins_sync.rules import RuleKey, Source
from coins_sync.schema import PLAN_SCHEMA, load_schema
from coins_sync.state import State, atomic_write


class PlanFileError(CoinsSyncError):
    """A saved plan file cannot be read or is not a coins-sync plan."""


def save_plan(plan: Plan, path: Path) -> None:
    """Write the JSON plan atomically, so a half-written plan never exists."""
    text = json.dumps(plan_to_json(plan), indent=2) + "\n"
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as e:
        raise PlanFileError(f"{path}: cannot write the plan: {e.strerror or e}") from e


def _source(text: str | None) -> Source | None:
    if not text or ":" not in text:
        return None
    path, _, line = text.rpartition(":")
    return Source(path, int(line)) if line.isdigit() else None


def load_plan(path: Path) -> Plan:
    """Read and schema-check a saved plan; every defect is a PlanFileError."""
    try:
        data: Any = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as e:
        raise PlanFileError(f"{path}: no such plan file") from e
    except (OSError, ValueError, RecursionError) as e:
        raise PlanFileError(f"{path}: not a readable JSON plan ({e})") from e
    validator = jsonschema.Draft202012Validator(load_schema(PLAN_SCHEMA))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise PlanFileError(f"{path}: not a coins-sync plan: {where}: {error.message}")
    changes = []
    for item in data["changes"]:
        key = RuleKey(item["key"]["companyId"], item["key"]["configuration"], item["key"]["event"])
        changes.append(
            Change(
                action=Action(item["action"]),
                key=key,
                amount=item["amount"],
                before=item.get("before"),
                source=_source(item.get("source")),
                coin_config_id=item.get("coinConfigId"),
            )
        )
    context = PlanContext(
        env=data["environment"],
        lineage=data["state"]["lineage"],
        serial=data["state"]["serial"],
        configs_digest=data["configs_digest"],
    )
    changes.sort(key=lambda c: c.sort_key)
    return Plan(tuple(changes), managed=data["managed"], context=context)


def check_fresh(saved: Plan, env: str, state: State, configs: ConfigSet) -> None:
    """Refuse a saved plan made for another environment, state or set of configs."""
    context = saved.context
    if context.env != env:
        raise StalePlanError(
            f"stale plan: it was made for environment {context.env!r}, not {env!r}"
        )
    if (context.lineage, context.serial) != (state.lineage, state.serial):
        raise StalePlanError(
            f"stale plan: it was made against state serial {context.serial} "
            f"(lineage {context.lineage}), but the state is now serial {state.serial} "
            f"(lineage {state.lineage}). Run `coins-sync plan` again"
        )
    if context.configs_digest != configs.digest:
        raise StalePlanError(
            "stale plan: the configs changed since it was made. Run `coins-sync plan` again"
        )


def check_consistent(saved: Plan, state: State, configs: ConfigSet) -> None:
    """Refuse a saved plan whose changes the current state and configs do not justify.

    Lineage, serial and digest already match when this runs, so only a hand-edited
    plan can fail here, and it must never send a create for a key already recorded.
    """
    desired = configs.by_key()
    for change in saved.changes:
        rule = desired.get(change.key)
        entry = state.entries.get(change.key)
        if change.action is Action.CREATE:
            ok = rule is not None and entry is None and rule.amount == change.amount
            ok = ok and change.key not in state.uncertain
        elif change.action is Action.UPDATE:
            ok = (
                rule is not None
                and entry is not None
                and rule.amount == change.amount
                and entry.coin_config_id == change.coin_config_id
            )
        elif change.action is Action.UNCERTAIN:
            ok = change.key in state.uncertain
        else:  # orphans are never acted on
            ok = True
        if not ok:
            raise StalePlanError(
                f"the saved plan's {change.action.value} of {change.key} does not match the "
                "current state and configs; it was edited by hand. Run `coins-sync plan` again"
            )
