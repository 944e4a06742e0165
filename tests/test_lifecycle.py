"""Rule lifecycle (issue 21), through the CLI against the sandbox on 127.0.0.1: a rename
with ``movedFrom`` moves the config in place (same id, no second config), ``retired:
true`` keeps it at amount 0, and every ``movedFrom`` that cannot be a move is refused
before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.configs.schema import PLAN_SCHEMA, load_schema
from coins_sync.sandbox import SandboxServer
from coins_sync.state.file import FileStateStore
from coins_sync.state.model import State
from tests.conftest import SANDBOX_TOKEN, Invoke, write

TOKEN = {"COINS_SYNC_TOKEN": SANDBOX_TOKEN}
MEAL = RuleKey("ACME", "DEFAULT", "MEAL")
MEAL_CARD = RuleKey("ACME", "DEFAULT", "MEAL_CARD")
FUEL = RuleKey("ACME", "DEFAULT", "FUEL")


def rules(project: Path, *items: str) -> None:
    write(project / "configs" / "acme.yaml", "companyId: ACME\nrules:\n" + "".join(items))


def rule(event: str, amount: int | None = None, **extra: Any) -> str:
    text = f"  - event: {event}\n"
    if amount is not None:
        text += f"    amount: {amount}\n"
    for name, value in extra.items():
        text += f"    {name}: {str(value).lower() if isinstance(value, bool) else value}\n"
    return text


def state_of(project: Path) -> State:
    return FileStateStore(project / "state" / "default.json").read()


def audit_of(project: Path) -> list[dict[str, Any]]:
    path = project / "state" / "default.audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def apply(invoke: Invoke, server: SandboxServer, *args: str) -> Any:
    return invoke("apply", "--yes", "--api-url", server.url, *args, env=TOKEN)


def started(project: Path, invoke: Invoke, server: SandboxServer) -> dict[RuleKey, str]:
    """MEAL at 6 and FUEL at 3, created on the server; their ids."""
    rules(project, rule("MEAL", 6), rule("FUEL", 3))
    done = apply(invoke, server)
    assert done.exit_code == 0, done.output
    return {key: entry.coin_config_id for key, entry in state_of(project).entries.items()}


def sent(server: SandboxServer) -> tuple[int, int]:
    stats = server.stats
    return stats.get("creates", 0), stats.get("patches", 0)


def test_rename_moves_the_config_in_place(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    rules(project, rule("MEAL_CARD", 7, movedFrom="ACME/DEFAULT/MEAL"), rule("FUEL", 3))

    shown = invoke("plan", "--detailed-exitcode")
    assert shown.exit_code == 2, shown.output
    assert f"-> {MEAL_CARD}" in shown.output and f"move from {MEAL}" in shown.output
    assert "1 to move" in shown.output and "0 to create" in shown.output
    doc = json.loads(invoke("plan", "--format", "json").output)
    jsonschema.validate(doc, load_schema(PLAN_SCHEMA))
    (change,) = doc["changes"]
    assert change["action"] == "move" and doc["summary"]["move"] == 1
    assert change["movedFrom"] == MEAL.as_dict() and change["key"] == MEAL_CARD.as_dict()
    assert (change["before"], change["amount"], change["coinConfigId"]) == (6, 7, ids[MEAL])

    done = apply(invoke, sandbox)
    assert done.exit_code == 0, done.output
    assert "1 moved" in done.output
    (moved,) = [c for c in sandbox.configs() if c["coinConfigId"] == ids[MEAL]]
    assert (moved["event"], moved["amount"]) == ("MEAL_CARD", 7)  # same id, in place
    assert len(sandbox.configs()) == 2 and sent(sandbox) == (2, 1)  # no new config
    state = state_of(project)
    assert MEAL not in state.entries
    assert state.entries[MEAL_CARD].coin_config_id == ids[MEAL]
    (record,) = [r for r in audit_of(project) if r["action"] == "move"]
    assert record["movedFrom"] == MEAL.as_dict() and record["key"] == MEAL_CARD.as_dict()
    assert (record["before"], record["after"], record["outcome"]) == (6, 7, "moved")

    # the field may stay in the file: once moved, it is a no-op
    again = invoke("plan", "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    assert apply(invoke, sandbox).exit_code == 0
    assert sent(sandbox) == (2, 1)


def test_a_move_that_keeps_the_amount_patches_only_the_key_fields(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    bodies: list[bytes] = []
    app = sandbox.app
    original = app.handle

    def spy(request: Any) -> Any:
        if request.method == "PATCH":
            bodies.append(request.body)
        return original(request)

    app.handle = spy  # type: ignore[method-assign]
    rules(
        project,
        rule("MEAL", 6, configuration="CUSTOM", movedFrom="ACME/DEFAULT/MEAL"),
        rule("FUEL", 3),
    )
    done = apply(invoke, sandbox)
    assert done.exit_code == 0, done.output
    assert [json.loads(body) for body in bodies] == [{"configuration": "CUSTOM"}]
    (moved,) = [c for c in sandbox.configs() if c["coinConfigId"] == ids[MEAL]]
    assert (moved["configuration"], moved["amount"]) == ("CUSTOM", 6)
    assert RuleKey("ACME", "CUSTOM", "MEAL") in state_of(project).entries


def test_retire_keeps_the_config_at_zero_and_reports_it(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    rules(project, rule("MEAL", 6), rule("FUEL", retired=True))

    shown = invoke("plan", "--detailed-exitcode")
    assert shown.exit_code == 2, shown.output
    assert f"- {FUEL}" in shown.output and "amount 3 -> 0" in shown.output
    doc = json.loads(invoke("plan", "--format", "json").output)
    jsonschema.validate(doc, load_schema(PLAN_SCHEMA))
    (change,) = doc["changes"]
    assert (change["action"], change["before"], change["amount"]) == ("retire", 3, 0)

    done = invoke(
        "apply", "--yes", "--api-url", sandbox.url, env={**TOKEN, "GITHUB_ACTOR": "retirer"}
    )
    assert done.exit_code == 0, done.output
    assert "1 retired" in done.output
    (config,) = [c for c in sandbox.configs() if c["coinConfigId"] == ids[FUEL]]
    assert config["amount"] == 0 and len(sandbox.configs()) == 2
    entry = state_of(project).entries[FUEL]
    assert (entry.amount, entry.retired, entry.coin_config_id) == (0, True, ids[FUEL])
    assert invoke("plan", "--detailed-exitcode").exit_code == 0

    report = json.loads(invoke("report", "--format", "json").output)
    (row,) = [r for r in report["rules"] if r["event"] == "FUEL"]
    assert row["status"] == "retired" and report["summary"]["retired"] == 1
    assert row["retired"]["actor"] == "retirer" and row["retired"]["at"]
    assert "retired (" in invoke("report").output
    assert "(retired)" in invoke("state", "list").output

    # deleted from the files later: an orphan that pays nothing, and the plan says so
    rules(project, rule("MEAL", 6))
    orphan = invoke("plan", "--detailed-exitcode")
    assert orphan.exit_code == 0, orphan.output
    assert f"! {FUEL}" in orphan.output and "pays nothing" in orphan.output
    gone = json.loads(invoke("report", "--format", "json").output)
    assert [r["status"] for r in gone["rules"] if r["event"] == "FUEL"] == ["retired"]


def test_an_orphan_line_says_how_to_stop_its_rewards(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    started(project, invoke, sandbox)
    rules(project, rule("MEAL", 6))
    shown = invoke("plan")
    assert "still paying" in shown.output and "retired: true" in shown.output
    assert "set its amount to 0" in invoke("plan", "--format", "markdown").output


def test_a_movedfrom_typo_is_refused_naming_the_file_and_line(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    started(project, invoke, sandbox)
    rules(project, rule("MEAL_CARD", 6, movedFrom="ACME/DEFAULT/MEEL"), rule("FUEL", 3))
    before = sent(sandbox)
    shown = invoke("plan")
    assert shown.exit_code == 1
    assert "configs/acme.yaml:3: movedFrom ACME/DEFAULT/MEEL" in shown.output
    assert "Traceback" not in shown.output
    done = apply(invoke, sandbox)
    assert done.exit_code == 1 and "typo" in done.output
    assert sent(sandbox) == before and len(sandbox.configs()) == 2


def test_a_collision_names_both_ids_and_sends_nothing(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    rules(project, rule("FUEL", 6, movedFrom="ACME/DEFAULT/MEAL"))
    before = sent(sandbox)
    done = apply(invoke, sandbox)
    assert done.exit_code == 1
    assert "collides" in done.output
    assert ids[MEAL] in done.output and ids[FUEL] in done.output
    assert sent(sandbox) == before


def test_a_swap_is_refused_naming_both_places(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    started(project, invoke, sandbox)
    rules(
        project,
        rule("MEAL", 3, movedFrom="ACME/DEFAULT/FUEL"),
        rule("FUEL", 6, movedFrom="ACME/DEFAULT/MEAL"),
    )
    before = sent(sandbox)
    done = apply(invoke, sandbox)
    assert done.exit_code == 1
    assert "a swap" in done.output
    assert "configs/acme.yaml:3" in done.output and "configs/acme.yaml:6" in done.output
    assert sent(sandbox) == before
    assert invoke("validate").exit_code == 1


def test_an_old_key_still_defined_is_refused_naming_both_places(
    project: Path, invoke: Invoke
) -> None:
    rules(project, rule("MEAL", 6), rule("MEAL_CARD", 6, movedFrom="ACME/DEFAULT/MEAL"))
    shown = invoke("validate")
    assert shown.exit_code == 1
    assert "configs/acme.yaml:5:5: movedFrom ACME/DEFAULT/MEAL" in shown.output
    assert "still defined as a rule at configs/acme.yaml:3" in shown.output


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (rule("FUEL", 3, retired=True), "a retired rule has no amount"),
        (rule("FUEL"), "missing required field 'amount'"),
        (rule("FUEL", 3, movedFrom="ACME/MEAL"), "is not a key COMPANY/CONFIGURATION/EVENT"),
        (rule("FUEL", retired=True, movedFrom="ACME/DEFAULT/X"), "cannot be moved"),
        (rule("FUEL", 3, movedFrom="ACME/DEFAULT/FUEL"), "this rule's own key"),
    ],
)
def test_lifecycle_fields_are_checked(
    project: Path, invoke: Invoke, item: str, message: str
) -> None:
    rules(project, item)
    shown = invoke("validate")
    assert shown.exit_code == 1, shown.output
    assert "configs/acme.yaml:" in shown.output and message in shown.output


def test_state_mv_rekeys_without_sending_and_state_show_follows_the_id(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    # someone renamed the event in the dashboard
    httpx.patch(
        f"{sandbox.url}/api/v0/enkash-coins/{ids[MEAL]}",
        json={"event": "MEAL_CARD"},
        headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        timeout=10,
    ).raise_for_status()
    before = sent(sandbox)

    refused = invoke("state", "mv", str(MEAL), str(MEAL_CARD))
    assert refused.exit_code == 1 and "--yes" in refused.output
    assert MEAL in state_of(project).entries
    taken = invoke("state", "mv", str(MEAL), str(FUEL), "--yes")
    assert taken.exit_code == 1 and ids[FUEL] in taken.output

    done = invoke("state", "mv", str(MEAL), str(MEAL_CARD), "--yes")
    assert done.exit_code == 0, done.output
    assert sent(sandbox) == before
    state = state_of(project)
    assert MEAL not in state.entries
    assert state.entries[MEAL_CARD].coin_config_id == ids[MEAL]
    (record,) = [r for r in audit_of(project) if r["action"] == "state-mv"]
    assert record["movedFrom"] == MEAL.as_dict() and record["coinConfigId"] == ids[MEAL]

    rules(project, rule("MEAL_CARD", 6), rule("FUEL", 3))
    refreshed = invoke(
        "plan", "--refresh", "--detailed-exitcode", "--api-url", sandbox.url, env=TOKEN
    )
    assert refreshed.exit_code == 0, refreshed.output

    shown = invoke("state", "show", str(MEAL_CARD))
    assert shown.exit_code == 0, shown.output
    assert ids[MEAL] in shown.output
    assert f"create created {MEAL}" in shown.output
    assert f"state-mv moved {MEAL} -> {MEAL_CARD}" in shown.output
    as_json = json.loads(invoke("state", "show", str(MEAL_CARD), "--format", "json").output)
    assert as_json["entry"]["coinConfigId"] == ids[MEAL]
    assert [r["action"] for r in as_json["history"]] == ["create", "state-mv"]
    assert invoke("state", "show", "ACME/DEFAULT/NOPE").exit_code == 1


def test_a_move_made_by_hand_is_adopted_without_a_patch(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    httpx.patch(
        f"{sandbox.url}/api/v0/enkash-coins/{ids[MEAL]}",
        json={"event": "MEAL_CARD"},
        headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        timeout=10,
    ).raise_for_status()
    rules(project, rule("MEAL_CARD", 6, movedFrom="ACME/DEFAULT/MEAL"), rule("FUEL", 3))
    before = sent(sandbox)

    shown = invoke("plan", "--refresh", "--format", "json", "--api-url", sandbox.url, env=TOKEN)
    doc = json.loads(shown.output)
    jsonschema.validate(doc, load_schema(PLAN_SCHEMA))
    (change,) = doc["changes"]
    assert change["action"] == "move" and change["onServer"] is True
    text = invoke("plan", "--refresh", "--api-url", sandbox.url, env=TOKEN).output
    assert "already moved on the server" in text and "need a person" not in text

    done = apply(invoke, sandbox, "--refresh")
    assert done.exit_code == 0, done.output
    assert sent(sandbox) == before  # recorded, nothing PATCHed
    assert state_of(project).entries[MEAL_CARD].coin_config_id == ids[MEAL]
    assert invoke("plan", "--detailed-exitcode").exit_code == 0


def test_a_saved_plan_with_a_move_applies_and_an_edited_one_is_refused(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    rules(project, rule("MEAL_CARD", 6, movedFrom="ACME/DEFAULT/MEAL"), rule("FUEL", 3))
    assert invoke("plan", "--out", "plan.json").exit_code == 0
    saved = json.loads((project / "plan.json").read_text())
    edited = json.loads(json.dumps(saved))
    edited["changes"][0]["onServer"] = True  # "skip the PATCH": must not be believed
    (project / "edited.json").write_text(json.dumps(edited))
    refused = apply(invoke, sandbox, "edited.json")
    assert refused.exit_code == 1 and "edited by hand" in refused.output
    assert MEAL in state_of(project).entries

    done = apply(invoke, sandbox, "plan.json")
    assert done.exit_code == 0, done.output
    (moved,) = [c for c in sandbox.configs() if c["coinConfigId"] == ids[MEAL]]
    assert moved["event"] == "MEAL_CARD"


def test_a_refreshed_plan_that_found_the_move_done_applies_from_its_file(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    httpx.patch(
        f"{sandbox.url}/api/v0/enkash-coins/{ids[MEAL]}",
        json={"event": "MEAL_CARD", "amount": 8},
        headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        timeout=10,
    ).raise_for_status()
    rules(project, rule("MEAL_CARD", 6, movedFrom="ACME/DEFAULT/MEAL"), rule("FUEL", 3))
    made = invoke("plan", "--refresh", "--out", "plan.json", "--api-url", sandbox.url, env=TOKEN)
    assert made.exit_code == 0, made.output
    (change,) = json.loads((project / "plan.json").read_text())["changes"]
    assert change["onServer"] is True and change["before"] == 8  # the server's amount
    before = sent(sandbox)
    done = apply(invoke, sandbox, "plan.json")
    assert done.exit_code == 0, done.output
    assert sent(sandbox) == (before[0], before[1] + 1)  # only the amount was PATCHed
    (moved,) = [c for c in sandbox.configs() if c["coinConfigId"] == ids[MEAL]]
    assert (moved["event"], moved["amount"]) == ("MEAL_CARD", 6)
    assert state_of(project).entries[MEAL_CARD].amount == 6


def test_refresh_does_not_retire_a_config_that_now_carries_another_key(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    ids = started(project, invoke, sandbox)
    httpx.patch(
        f"{sandbox.url}/api/v0/enkash-coins/{ids[FUEL]}",
        json={"event": "SOMEONE_ELSES"},
        headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        timeout=10,
    ).raise_for_status()
    rules(project, rule("MEAL", 6), rule("FUEL", retired=True))
    assert "- ACME/DEFAULT/FUEL" in invoke("plan").output  # offline, the state says 3
    shown = invoke("plan", "--refresh", "--api-url", sandbox.url, env=TOKEN)
    assert "1 need a person" in shown.output and "to retire" not in shown.output
    before = sent(sandbox)
    done = apply(invoke, sandbox, "--refresh")
    assert sent(sandbox) == before, done.output
    (config,) = [c for c in sandbox.configs() if c["coinConfigId"] == ids[FUEL]]
    assert config["amount"] == 3


def test_the_rules_schema_describes_both_new_fields_for_editors() -> None:
    from coins_sync.configs.schema import RULES_SCHEMA

    schema = load_schema(RULES_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(schema)
    fields = schema["$defs"]["rule"]["properties"]
    assert "COMPANY/CONFIGURATION/EVENT" in fields["movedFrom"]["description"]
    assert fields["retired"]["type"] == "boolean" and "amount" in fields["retired"]["description"]


def test_state_mv_refuses_what_it_cannot_move(
    project: Path, invoke: Invoke, sandbox: SandboxServer
) -> None:
    started(project, invoke, sandbox)
    same = invoke("state", "mv", str(MEAL), str(MEAL), "--yes")
    assert same.exit_code == 1 and "same key" in same.output
    missing = invoke("state", "mv", "ACME/DEFAULT/NOPE", str(MEAL_CARD), "--yes")
    assert missing.exit_code == 1 and "ACME/DEFAULT/NOPE is not in" in missing.output
    bad = invoke("state", "mv", "ACME/NOPE", str(MEAL_CARD), "--yes")
    assert bad.exit_code == 1 and "COMPANY/CONFIGURATION/EVENT" in bad.output
    assert set(state_of(project).entries) == {MEAL, FUEL}
    assert not [r for r in audit_of(project) if r["action"] == "state-mv"]

    rules(project, rule("MEAL", 6), rule("FUEL", retired=True))
    assert apply(invoke, sandbox).exit_code == 0
    shown = invoke("state", "show", str(FUEL))
    assert "retired       yes" in shown.output and "retire retired" in shown.output
