"""Saved plans: read a ``plan --out`` file back and refuse it once it is stale."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from coins_sync.configs.model import ConfigSet, Rule, RuleKey, Source
from coins_sync.configs.schema import PLAN_SCHEMA, load_schema
from coins_sync.errors import PlanFileError, StalePlanError
from coins_sync.inputs import loads_json, read_input
from coins_sync.plan.drift import Drift, DriftField
from coins_sync.plan.online import Settled, unverified
from coins_sync.plan.reconcile import Action, Change, Plan, PlanContext, plan
from coins_sync.plan.render import plan_to_json
from coins_sync.plan.subset import Subset
from coins_sync.state.files import atomic_write
from coins_sync.state.model import State


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
    return Source(path, int(line)) if line.isascii() and line.isdigit() else None


def load_plan(path: Path) -> Plan:
    """Read and schema-check a saved plan; every defect is a PlanFileError."""
    try:
        data: Any = loads_json(read_input(path).decode("utf-8"))
    except FileNotFoundError as e:
        raise PlanFileError(f"{path}: no such plan file") from e
    except (OSError, ValueError, RecursionError) as e:
        shown = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise PlanFileError(f"{path}: not a readable JSON plan ({shown})") from e
    import jsonschema  # only to load a saved plan; plan --out does not need it

    validator = jsonschema.Draft202012Validator(load_schema(PLAN_SCHEMA))
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise PlanFileError(f"{path}: not a coins-sync plan: {where}: {error.message}")
    _whole_numbers(path, data)
    changes = []
    first_at: dict[RuleKey, int] = {}
    for index, item in enumerate(data["changes"]):
        key = _key(item["key"])
        if key in first_at:
            raise PlanFileError(
                f"{path}: changes/{index}: {key} is listed again (first at changes/"
                f"{first_at[key]}); a plan has one change per key, so it was edited by hand. "
                "Nothing was sent. Run `coins-sync plan` again"
            )
        first_at[key] = index
        changes.append(
            Change(
                action=Action(item["action"]),
                key=key,
                amount=item["amount"],
                before=item.get("before"),
                source=_source(item.get("source")),
                coin_config_id=item.get("coinConfigId"),
                moved_from=_key(item["movedFrom"]) if "movedFrom" in item else None,
                on_server=item.get("onServer") is True,
            )
        )
    context = PlanContext(
        env=data["environment"],
        lineage=data["state"]["lineage"],
        serial=data["state"]["serial"],
        configs_digest=data["configs_digest"],
        only=tuple(data.get("only", ())),
    )
    drift = tuple(
        Drift(
            _key(d["key"]),
            d["coinConfigId"],
            DriftField(d["field"]),
            _drift_text(path, index, "state", d),
            _drift_text(path, index, "server", d),
        )
        for index, d in enumerate(data.get("drift", []))
    )
    changes.sort(key=lambda c: c.sort_key)
    return Plan(
        tuple(changes),
        managed=data["managed"],
        context=context,
        drift=drift,
        new_companies=tuple(data.get("new_companies", ())),
    )


def _whole_numbers(path: Path, data: dict[str, Any]) -> None:
    """The schema's ``integer`` lets ``6.0`` through; a plan's numbers must be JSON whole
    numbers, or a hand-edited ``6.0`` would be sent to the API as it is."""
    found = [("managed", data["managed"]), ("state/serial", data["state"]["serial"])]
    for index, item in enumerate(data["changes"]):
        found += [
            (f"changes/{index}/{name}", item[name]) for name in ("amount", "before") if name in item
        ]
    for where, value in found:
        if value is not None and type(value) is not int:
            raise PlanFileError(
                f"{path}: not a coins-sync plan: {where}: {value!r} is not a whole number"
            )


def _drift_text(path: Path, index: int, name: str, item: dict[str, Any]) -> str:
    """A drift value as the plan holds it (text); an amount must be a JSON whole number."""
    value = item[name]
    if item["field"] == DriftField.AMOUNT and type(value) is not int:  # the schema lets 6.0 pass
        raise PlanFileError(
            f"{path}: not a coins-sync plan: drift/{index}/{name}: {value!r} is not a whole number"
        )
    return str(value)


def _key(item: dict[str, str]) -> RuleKey:
    return RuleKey(item["companyId"], item["configuration"], item["event"])


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
            f"({_lineage(context.lineage)}), but the state is now serial {state.serial} "
            f"({_lineage(state.lineage)}). Run `coins-sync plan` again"
        )
    if context.configs_digest != configs.digest:
        raise StalePlanError(
            "stale plan: the configs changed since it was made. Run `coins-sync plan` again"
        )


def check_read_back(saved: Plan, settled: Settled) -> None:
    """Refuse a saved plan that assumed, for an update whose outcome was unknown, other
    than what the server was just read back to hold.

    ``settled.before`` is the state the plan was made from (already checked fresh and
    consistent). The plan assumed, for each of its pending entries, the amount its
    amount drift names (a plan made with the read-back) or else the amount the state
    holds (a plan made without credentials), and no missing or moved config unless its
    drift says so.
    """
    found = {(d.key, d.field): d for d in settled.drift}
    known = {(d.key, d.field): d for d in saved.drift}
    differ: list[str] = []
    for key, entry in sorted(unverified(settled.before).items()):
        odd = sorted(
            str(field)
            for (k, field) in found
            if k == key and field is not DriftField.AMOUNT and (k, field) not in known
        )
        if odd:
            differ.append(f"{key}: {', '.join(odd)} differs on the server")
            continue
        now = settled.state.entries[key]  # settle keeps every entry (a blocked one as it was)
        told = known.get((key, DriftField.AMOUNT))
        assumed = int(told.on_server) if told is not None else entry.amount
        if now.amount != assumed:
            differ.append(f"{key} holds {now.amount}, the plan assumed {assumed}")
    if differ:
        raise StalePlanError(
            f"stale plan: the outcome of an earlier update was unknown when it was made, "
            f"and the server was read back now ({'; '.join(differ)}; recorded in the "
            "state). Nothing was sent. Run `coins-sync plan` again"
        )


def check_consistent(saved: Plan, state: State, configs: ConfigSet) -> Plan:
    """Refuse a saved plan unless it equals a fresh offline plan, change for change.

    Lineage, serial and digest already match when this runs, so only a hand-edited plan
    can fail here. Every change the saved plan lists must equal the fresh plan's change
    for that key (action, key, amount, before, coinConfigId, source), every change the
    fresh plan has must be listed, and ``managed`` must be the state's entry count.

    A ``plan --refresh`` plan may differ where the server drifted, and only there: its
    ``drift`` list must agree with the state (same id, the state's own values), and then
    an amount drift may turn into an update that sets the configs' amount on the id the
    state records, and an update the refresh found unneeded (or blocked) may be missing.
    Nothing in the file can justify any other create, update or uncertain retry.

    Returns the saved plan with the fresh plan's unchanged rules added (a saved plan
    lists only changes), so that its summary counts them as the plan command did.
    """
    only = Subset.parse(saved.context.only)  # a partial plan is checked on its subset
    whole = state
    if only:
        state, configs = only.state(state, configs), only.configs(configs)
    fresh = plan(configs.rules, state, saved.context)
    if only:
        fresh = only.widen(fresh, whole)
    if saved.managed != fresh.managed:
        raise StalePlanError(
            f"the saved plan says {saved.managed} managed entries, but the state records "
            f"{fresh.managed}; it was edited by hand. Nothing was sent. "
            "Run `coins-sync plan` again"
        )
    claims = _drift_claims(saved.drift, state)
    desired = configs.by_key()
    expected = {change.key: change for change in fresh.changes}
    listed: set[RuleKey] = set()
    for change in saved.changes:
        listed.add(change.key)
        want = expected.get(change.key)
        if want is not None and want.action is not Action.UNCHANGED and _same(change, want):
            continue
        drift = claims.get(change.key, [])
        if _moved_on_server(change, want, claims):
            continue
        if not _drift_fix(change, want, drift, state, desired.get(change.key)):
            raise _mismatch(change, want)
    for key, want in expected.items():
        if want.action is Action.UNCHANGED or key in listed:
            continue
        if not _drift_skip(want, claims.get(key, [])):
            raise StalePlanError(
                f"the saved plan lacks the fresh plan's {_describe(want)}; it was edited by "
                "hand. Nothing was sent. Run `coins-sync plan` again"
            )
    kept = tuple(c for c in fresh.of(Action.UNCHANGED) if c.key not in listed)
    return replace(saved, changes=tuple(sorted((*saved.changes, *kept), key=lambda c: c.sort_key)))


def _same(change: Change, want: Change) -> bool:
    """Equal in every field a saved plan carries (a source is compared as ``path:line``)."""
    return (
        change.action is want.action
        and change.key == want.key
        and change.amount == want.amount
        and change.before == want.before
        and change.coin_config_id == want.coin_config_id
        and change.moved_from == want.moved_from
        and change.on_server == want.on_server
        and _text(change.source) == _text(want.source)
    )


def _text(source: Source | None) -> str | None:
    return None if source is None else str(source)


def _describe(change: Change) -> str:
    parts = [f"amount {change.amount}"]
    if change.before is not None:
        parts.append(f"before {change.before}")
    if change.coin_config_id is not None:
        parts.append(f"coinConfigId {change.coin_config_id}")
    if change.source is not None:
        parts.append(f"source {change.source}")
    return f"{change.action.value} of {change.key} ({', '.join(parts)})"


def _mismatch(change: Change, want: Change | None) -> StalePlanError:
    if want is None:
        fresh = "has no change for that key"
    elif want.action is Action.UNCHANGED:
        fresh = "leaves that key unchanged"
    else:
        fresh = f"has {_describe(want)}"
    return StalePlanError(
        f"the saved plan's {_describe(change)} differs from a fresh plan of the current "
        f"state and configs, which {fresh}; it was edited by hand. Nothing was sent. "
        "Run `coins-sync plan` again"
    )


_ALONE = frozenset({DriftField.UNUSABLE_AMOUNT, DriftField.MISSING})


def _key_field(key: RuleKey, field: DriftField) -> str:
    return key.as_dict()[field.value]


def _drift_claims(drift: tuple[Drift, ...], state: State) -> dict[RuleKey, list[Drift]]:
    """The saved plan's drift by key, each checked against the state as refresh makes it."""
    claims: dict[RuleKey, list[Drift]] = {}
    for d in drift:
        entry = state.entries.get(d.key)
        if d.field is DriftField.AMOUNT:
            ok = entry is not None and d.in_state == str(entry.amount)
            ok = ok and d.on_server.isdigit() and d.on_server != d.in_state
        elif d.field is DriftField.MISSING:
            ok = (d.in_state, d.on_server) == ("present", "absent")
        elif d.field is DriftField.UNUSABLE_AMOUNT:
            ok = entry is not None and d.in_state == str(entry.amount)
            ok = ok and not d.on_server.isdigit()
        else:
            ok = d.in_state == _key_field(d.key, d.field) and d.on_server != d.in_state
        ok = ok and entry is not None and entry.coin_config_id == d.coin_config_id
        seen = claims.setdefault(d.key, [])
        fields = {other.field for other in seen} | {d.field}
        # refresh reports a missing config or an unusable amount alone, every other field
        # at most once (a config moved on the server shows its amount drift beside its
        # key fields)
        ok = ok and d.field not in {other.field for other in seen}
        ok = ok and not (_ALONE & fields and len(fields) > 1)
        if not ok:
            raise StalePlanError(
                f"the saved plan's drift for {d.key} ({d.field}: {d.in_state!r} in state, "
                f"{d.on_server!r} on the server, id {d.coin_config_id}) does not match the "
                "current state; it was edited by hand. Nothing was sent. "
                "Run `coins-sync plan --refresh` again"
            )
        seen.append(d)
    return claims


def _server_amount(drift: list[Drift]) -> int | None:
    for d in drift:
        if d.field is DriftField.AMOUNT:
            return int(d.on_server)
    return None


def _drift_fix(
    change: Change, want: Change | None, drift: list[Drift], state: State, rule: Rule | None
) -> bool:
    """Whether a refresh plan's change that differs from the offline plan is justified.

    Only two differences are: an update that sets the configs' amount, from the amount
    the server reported, on the id the state records; and an orphan shown at the
    server's amount. Both need an amount drift for that key that agrees with the state.
    """
    server = _server_amount(drift)
    entry = state.entries.get(change.key)
    if server is None or entry is None or want is None:
        return False
    if change.action is Action.UPDATE:
        return (
            rule is not None
            and want.action in (Action.UPDATE, Action.UNCHANGED)
            and change.amount == rule.amount
            and change.before == server
            and server != rule.amount
            and change.coin_config_id == entry.coin_config_id
            and _text(change.source) == _text(rule.source)
        )
    if change.action is Action.ORPHAN and want.action is Action.ORPHAN:
        return _same(change, replace(want, amount=server))
    return False


def _moved_on_server(
    change: Change, want: Change | None, claims: dict[RuleKey, list[Drift]]
) -> bool:
    """Whether a refresh plan's move may be recorded without a PATCH of the key: its old
    key's drift (checked against the state) says the server carries the new key."""
    old = change.moved_from
    if want is None or want.action is not Action.MOVE or old is None or not change.on_server:
        return False
    if not _same(change, replace(want, on_server=True, before=change.before)):
        return False
    drift = claims.get(old, [])
    server = old.as_dict()
    for d in drift:
        if d.field not in (DriftField.AMOUNT, DriftField.MISSING):
            server[d.field.value] = d.on_server
    amount = _server_amount(drift)
    expected_before = want.before if amount is None else amount
    return server == change.key.as_dict() and change.before == expected_before


def _drift_skip(want: Change, drift: list[Drift]) -> bool:
    """Whether a refresh plan may lack the offline plan's change ``want``: an update the
    server already has (amount drift to the configs' amount) or that refresh blocks
    (the config is missing or moved to another key, so it is left alone)."""
    if want.action not in (Action.UPDATE, Action.RETIRE):
        return False
    if any(d.field is not DriftField.AMOUNT for d in drift):
        return True
    return _server_amount(drift) == want.amount


def _lineage(lineage: str) -> str:
    return f"lineage {lineage}" if lineage else "no state yet"
