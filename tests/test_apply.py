"""`coins-sync apply` end to end, through the CLI, against the real sandbox on 127.0.0.1."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coins_sync.configs.model import RuleKey
from coins_sync.sandbox import SandboxOptions, SandboxServer
from coins_sync.state.file import FileStateStore
from coins_sync.state.model import State
from tests import chaos
from tests.conftest import Invoke, write

TOKEN = "apply-t0ken-that-must-never-show"
TOKEN_ENV = {"COINS_SYNC_TOKEN": TOKEN}
CLIENT_ID = "coins-client"
CLIENT_SECRET = "cl1ent-s3cret-never-shown"
USERNAME = "ops"
PASSWORD = "pa55w0rd-never-shown"
OAUTH_ENV = {
    "COINS_SYNC_CLIENT_ID": CLIENT_ID,
    "COINS_SYNC_CLIENT_SECRET": CLIENT_SECRET,
    "COINS_SYNC_USERNAME": USERNAME,
    "COINS_SYNC_PASSWORD": PASSWORD,
}
SECRETS = (TOKEN, CLIENT_SECRET, PASSWORD)
#: Sandbox options that accept only the OAuth password grant of OAUTH_ENV.
OAUTH_SANDBOX: dict[str, Any] = {
    "token": None,
    "client_id": CLIENT_ID,
    "client_secret": CLIENT_SECRET,
    "username": USERNAME,
    "password": PASSWORD,
}

ACME = """\
companyId: ACME
rules:
  - event: MEAL_CARD_PAYMENT
    amount: 6
  - event: INVOICE_PAYMENT
    amount: 10
  - event: FUEL_PAYMENT
    amount: 3
"""
MEAL = RuleKey("ACME", "DEFAULT", "MEAL_CARD_PAYMENT")
INVOICE = RuleKey("ACME", "DEFAULT", "INVOICE_PAYMENT")

Sandbox = Callable[..., SandboxServer]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Start sandboxes on 127.0.0.1 (token TOKEN unless told otherwise); all stopped after."""
    servers: list[SandboxServer] = []

    def start(**options: Any) -> SandboxServer:
        options.setdefault("token", TOKEN)
        server = SandboxServer(SandboxOptions(port=0, **options))
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def apply(
    invoke: Invoke, srv: SandboxServer, *args: str, env: Mapping[str, str] = TOKEN_ENV
) -> Result:
    return invoke("apply", "--api-url", srv.url, *args, env=dict(env))


def state_of(project: Path, name: str = "default") -> State:
    return FileStateStore(project / "state" / f"{name}.json").read()


def by_key(srv: SandboxServer) -> dict[RuleKey, list[dict[str, Any]]]:
    found: dict[RuleKey, list[dict[str, Any]]] = {}
    for config in srv.configs():
        found.setdefault(chaos.key_of(config), []).append(config)
    return found


def assert_server_matches_state(srv: SandboxServer, state: State) -> None:
    """No duplicates, every server config recorded by id, amounts equal."""
    configs = srv.configs()
    assert Counter(chaos.key_of(c) for c in configs).most_common(1)[0][1] == 1
    assert {c["coinConfigId"]: (chaos.key_of(c), c["amount"]) for c in configs} == {
        e.coin_config_id: (e.key, e.amount) for e in state.entries.values()
    }
    assert not state.uncertain


def assert_no_secret(project: Path, outputs: Iterable[str], secrets: Sequence[str]) -> None:
    texts = list(outputs)
    files = [path for path in project.rglob("*") if path.is_file()]
    assert files, "expected state, journal or audit files to scan"
    for secret in secrets:
        for text in texts:
            assert secret not in text
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def runner_of(invoke: Invoke) -> chaos.Runner:
    def run(args: Sequence[str], env: Mapping[str, str | None]) -> tuple[int, str]:
        result = invoke(*args, env=dict(env))
        return result.exit_code, result.output

    return run


# --- the happy path ---------------------------------------------------------------


def test_create_then_reapply_is_a_no_op(project: Path, invoke: Invoke, sandbox: Sandbox) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    first = apply(invoke, srv, "--yes")
    assert first.exit_code == 0, first.output
    assert "3 created, 0 updated, 0 failed, 0 uncertain" in first.output
    assert len(srv.configs()) == 3
    assert_server_matches_state(srv, state_of(project))
    serial = state_of(project).serial
    stats = srv.stats

    again = apply(invoke, srv, "--yes")
    assert again.exit_code == 0, again.output
    assert "Nothing to apply." in again.output
    assert srv.stats == stats  # not one request of any kind
    assert len(srv.configs()) == 3
    assert state_of(project).serial == serial
    assert not (project / "state/default.journal.jsonl").exists()


def test_amount_change_is_patched_in_place(project: Path, invoke: Invoke, sandbox: Sandbox) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    assert apply(invoke, srv, "--yes").exit_code == 0
    meal_id = state_of(project).entries[MEAL].coin_config_id

    write(project / "configs/acme.yaml", ACME.replace("amount: 6", "amount: 9"))
    result = apply(invoke, srv, "--yes")
    assert result.exit_code == 0, result.output
    assert "0 created, 1 updated" in result.output
    assert srv.stats["creates"] == 3 and srv.stats["patches"] == 1
    assert len(srv.configs()) == 3
    assert by_key(srv)[MEAL] == [
        {"coinConfigId": meal_id, **MEAL.as_dict(), "amount": 9},
    ]
    entry = state_of(project).entries[MEAL]
    assert (entry.amount, entry.coin_config_id) == (9, meal_id)
    assert_server_matches_state(srv, state_of(project))
    audit = (project / "state/default.audit.jsonl").read_text().splitlines()
    last = json.loads(audit[-1])
    assert (last["action"], last["before"], last["after"], last["coinConfigId"]) == (
        "update",
        6,
        9,
        meal_id,
    )


# --- saved plans --------------------------------------------------------------------


def test_saved_plan_applies_exactly_what_it_shows(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    saved = invoke("plan", "--out", "p.json")
    assert saved.exit_code == 0, saved.output
    planned = json.loads((project / "p.json").read_text())
    assert planned["summary"]["create"] == 3

    result = apply(invoke, srv, "p.json", "--yes")
    assert result.exit_code == 0, result.output
    assert {str(chaos.key_of(c)): c["amount"] for c in srv.configs()} == {
        "ACME/DEFAULT/MEAL_CARD_PAYMENT": 6,
        "ACME/DEFAULT/INVOICE_PAYMENT": 10,
        "ACME/DEFAULT/FUEL_PAYMENT": 3,
    }
    assert_server_matches_state(srv, state_of(project))


def test_saved_plan_is_refused_as_stale_after_configs_change(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    assert invoke("plan", "--out", "p.json").exit_code == 0
    write(project / "configs/acme.yaml", ACME.replace("amount: 10", "amount: 11"))

    result = apply(invoke, srv, "p.json", "--yes")
    assert result.exit_code == 1
    assert "stale plan" in result.output
    assert "configs changed" in result.output
    assert srv.configs() == [] and srv.stats["creates"] == 0
    assert not (project / "state/default.json").exists()  # not even a fresh state


def test_saved_plan_is_refused_as_stale_after_state_changes(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    assert invoke("plan", "--out", "p.json").exit_code == 0
    assert apply(invoke, srv, "--yes").exit_code == 0  # someone applied in between
    state = state_of(project)

    result = apply(invoke, srv, "p.json", "--yes")
    assert result.exit_code == 1
    assert "stale plan" in result.output
    assert len(srv.configs()) == 3 and srv.stats["creates"] == 3  # no second create
    assert state_of(project) == state


# --- refusals -----------------------------------------------------------------------


def test_apply_without_terminal_or_yes_refuses_and_sends_nothing(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    result = apply(invoke, srv)  # CliRunner's stdin is not a terminal
    assert result.exit_code == 1
    assert "--yes" in result.output and "Nothing was sent" in result.output
    assert srv.stats["creates"] == 0 and srv.configs() == []
    assert not (project / "state/default.json").exists()


def test_wrong_token_fails_with_a_clear_401_and_never_shows_it(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    wrong = "wr0ng-t0ken-kept-secret"
    result = apply(invoke, srv, "--yes", env={"COINS_SYNC_TOKEN": wrong})
    assert result.exit_code == 1
    assert "401" in result.output and "COINS_SYNC_TOKEN" in result.output
    assert srv.configs() == []
    assert not state_of(project).entries
    assert_no_secret(project, [result.output], [wrong, TOKEN])


def test_state_import_refuses_a_config_of_another_key(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox()
    assert apply(invoke, srv, "--yes").exit_code == 0
    entries = state_of(project).entries
    meal_id, invoice_id = entries[MEAL].coin_config_id, entries[INVOICE].coin_config_id
    assert invoke("state", "rm", str(MEAL), "--yes").exit_code == 0
    assert invoke("state", "rm", str(INVOICE), "--yes").exit_code == 0  # the server decides

    refused = invoke("state", "import", str(MEAL), invoice_id, "--api-url", srv.url, env=TOKEN_ENV)
    assert refused.exit_code == 1
    assert f"{invoice_id} on the server is {INVOICE}, not {MEAL}" in refused.output
    assert MEAL not in state_of(project).entries
    back = invoke("state", "import", str(INVOICE), invoice_id, "--api-url", srv.url, env=TOKEN_ENV)
    assert back.exit_code == 0, back.output

    accepted = invoke("state", "import", str(MEAL), meal_id, "--api-url", srv.url, env=TOKEN_ENV)
    assert accepted.exit_code == 0, accepted.output
    assert state_of(project).entries[MEAL].coin_config_id == meal_id
    assert_server_matches_state(srv, state_of(project))


# --- authentication and encryption ---------------------------------------------------


def test_oauth_password_grant_fetches_a_token_and_applies(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox(**OAUTH_SANDBOX)
    result = apply(invoke, srv, "--yes", env=OAUTH_ENV)
    assert result.exit_code == 0, result.output
    assert len(srv.configs()) == 3
    assert_server_matches_state(srv, state_of(project))
    assert_no_secret(project, [result.output], SECRETS)


def test_aes_environment_round_trips_encrypted_bodies(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(
        project / "pyproject.toml",
        """\
[tool.coins-sync]
default_environment = "secure"

[tool.coins-sync.environments.secure]
encryption = "aes-128-ecb"

[tool.coins-sync.environments.plain]
state = "state/plain.json"
""",
    )
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox(client_secret=CLIENT_SECRET, encryption=True)
    env = {**TOKEN_ENV, "COINS_SYNC_CLIENT_SECRET": CLIENT_SECRET}
    outputs = []

    created = apply(invoke, srv, "--yes", env=env)
    outputs.append(created.output)
    assert created.exit_code == 0, created.output
    assert len(srv.configs()) == 3
    assert_server_matches_state(srv, state_of(project, "secure"))

    write(project / "configs/acme.yaml", ACME.replace("amount: 6", "amount: 7"))
    updated = apply(invoke, srv, "--yes", env=env)  # PATCH, encrypted
    outputs.append(updated.output)
    assert updated.exit_code == 0, updated.output
    assert by_key(srv)[MEAL][0]["amount"] == 7
    meal_id = state_of(project, "secure").entries[MEAL].coin_config_id
    assert invoke("state", "rm", str(MEAL), "--yes").exit_code == 0
    imported = invoke("state", "import", str(MEAL), meal_id, "--api-url", srv.url, env=env)
    outputs.append(imported.output)  # GET, encrypted
    assert imported.exit_code == 0, imported.output
    assert_server_matches_state(srv, state_of(project, "secure"))

    # The same rules in plain JSON are refused by the encrypting API: nothing is created.
    plain = apply(invoke, srv, "--yes", "--env", "plain", env=env)
    outputs.append(plain.output)
    assert plain.exit_code == 1
    assert "400" in plain.output
    # not only "HTTP 400": the message names the setting that is missing
    assert "set encryption = 'aes-128-ecb' for this environment" in plain.output
    assert len(srv.configs()) == 3
    assert_no_secret(project, outputs, SECRETS)


# --- uncertain creates and faults -----------------------------------------------------


def test_uncertain_creates_are_never_resent_without_the_flag(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox(fail_after_rate=1.0, seed=1)  # every create is stored, then not confirmed
    first = apply(invoke, srv, "--yes")
    assert first.exit_code == 1
    assert "0 created, 0 updated, 0 failed, 3 uncertain" in first.output
    assert "state import" in first.output
    assert len(srv.configs()) == 3

    shown = invoke("plan", "--format", "json")
    assert json.loads(shown.output)["summary"]["uncertain"] == 3
    again = apply(invoke, srv, "--yes")
    assert "uncertain" in again.output
    assert srv.stats["creates"] == 3  # nothing re-sent

    for config in srv.configs():  # the operator finds each one and records it
        key = str(chaos.key_of(config))
        done = invoke(
            "state", "import", key, config["coinConfigId"], "--api-url", srv.url, env=TOKEN_ENV
        )
        assert done.exit_code == 0, done.output
    assert invoke("plan", "--detailed-exitcode").exit_code == 0
    assert_server_matches_state(srv, state_of(project))


def test_faults_converge_with_zero_duplicates_and_every_config_recorded(
    project: Path, invoke: Invoke
) -> None:
    faults = {
        "latency_ms": 2,
        "fail_before_rate": 0.15,
        "fail_after_rate": 0.2,
        "rate_429": 0.15,
        "seed": 3,
    }
    figures = chaos.Figures("faults", rules=30)
    with chaos.lab(project, runner_of(invoke), **faults) as the_lab:
        desired = chaos.write_rules(project / "configs", 30)
        the_lab.converge(figures, desired)  # creates under faults
        assert figures.converged, figures.report()
        desired = chaos.write_rules(project / "configs", 30, bump=1)
        the_lab.converge(figures, desired, extra=["--force"])  # updates under faults
        srv = the_lab.server
        stats = srv.stats
        assert stats["fail_before"] and stats["fail_after"] + stats["drop"] and stats["429"]
        assert figures.converged, figures.report()
        assert (figures.duplicates, figures.lost, figures.wrong, figures.mismatched) == (
            0,
            0,
            0,
            0,
        ), figures.report()
        assert figures.imported + figures.resent > 0  # uncertain creates did happen
        assert len(srv.configs()) == 30
        assert_server_matches_state(srv, state_of(project))
        assert {k: e.amount for k, e in state_of(project).entries.items()} == desired
        assert_no_secret(project, the_lab.outputs, [TOKEN, chaos.TOKEN])


def test_no_secret_in_any_output_or_project_file(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\nencryption = "aes-128-ecb"\n',
    )
    write(project / "configs/acme.yaml", ACME)
    srv = sandbox(
        **OAUTH_SANDBOX,
        encryption=True,
        fail_after_rate=0.3,
        rate_429=0.3,
        seed=5,
    )
    url = ("--api-url", srv.url)
    results = [
        invoke("plan", "--out", "p.json", env=OAUTH_ENV),
        invoke("-vv", "apply", "p.json", "--yes", *url, env=OAUTH_ENV),  # debug logs too
        invoke("plan", "--format", "json", env=OAUTH_ENV),
        invoke("state", "list", "--format", "json", env=OAUTH_ENV),
        invoke("apply", "--yes", *url, env=OAUTH_ENV),
    ]
    assert "DEBUG: POST /api/v0/enkash-coins/create-coins-config" in results[1].output
    for config in srv.configs():
        key = str(chaos.key_of(config))
        results.append(invoke("state", "import", key, config["coinConfigId"], *url, env=OAUTH_ENV))
    # refused credentials produce error messages: they must not echo the secrets either
    wrong = {**OAUTH_ENV, "COINS_SYNC_PASSWORD": PASSWORD + "-wrong"}
    write(project / "configs/acme.yaml", ACME.replace("amount: 6", "amount: 8"))
    refused = invoke("apply", "--yes", *url, env=wrong)
    assert refused.exit_code == 1 and "token endpoint refused" in refused.output
    results.append(refused)
    results.append(invoke("apply", "--yes", *url, env={"COINS_SYNC_TOKEN": TOKEN}))

    assert any(r.exit_code == 0 for r in results)
    assert (project / "state/default.audit.jsonl").exists()
    assert (project / "p.json").exists()
    assert_no_secret(project, [r.output for r in results], [*SECRETS, PASSWORD + "-wrong"])


def test_unresolved_uncertain_creates_fail_the_apply_and_removed_rules_are_never_resent(
    project: Path, invoke: Invoke, sandbox: Sandbox
) -> None:
    srv = sandbox()
    write(
        project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: KEPT\n    amount: 3\n"
    )
    write(
        project / "state/default.json",
        json.dumps(
            {
                "version": 1,
                "lineage": "L",
                "serial": 2,
                "entries": [],
                "uncertain": [
                    {"companyId": "ACME", "configuration": "DEFAULT", "event": "KEPT", "amount": 3},
                    {"companyId": "ACME", "configuration": "DEFAULT", "event": "GONE", "amount": 1},
                ],
            }
        ),
    )
    env = TOKEN_ENV
    first = invoke("apply", "--yes", "--api-url", srv.url, env=env)
    assert first.exit_code == 1
    assert "uncertain creates remain unresolved" in first.output
    assert srv.configs() == []
    retried = invoke("apply", "--yes", "--retry-uncertain", "--api-url", srv.url, env=env)
    assert [c["event"] for c in srv.configs()] == ["KEPT"]  # GONE is not in the configs
    assert "1 created" in retried.output and "1 uncertain skipped" in retried.output
    assert retried.exit_code == 1
