"""An update (PATCH) whose outcome is unknown is recorded as such and read back by the
next plan, so a revert of the configs cannot hide the amount the server really holds."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import ClientOptions, CoinsClient, Credentials, make_http_client
from coins_sync.errors import ApiError, OutcomeUnknownError
from coins_sync.sandbox import SandboxServer
from coins_sync.settings import load_settings
from coins_sync.state.model import State, parse_state, serialize
from coins_sync.workspace import Workspace
from tests.conftest import SANDBOX_TOKEN, Invoke, write

TOKEN = SANDBOX_TOKEN  # what the `servers` sandboxes accept
ENV = {"COINS_SYNC_TOKEN": TOKEN}
KEY = RuleKey("ACME", "DEFAULT", "MEAL_CARD_PAYMENT")
ID = "WCC1"


def rules(amount: int) -> str:
    return f"companyId: ACME\nrules:\n  - event: MEAL_CARD_PAYMENT\n    amount: {amount}\n"


# --- the client: which PATCH failures leave the outcome unknown ----------------------


def answer(status: int) -> httpx.Response:
    if status == 200:
        payload = {"coinConfigId": ID, **KEY.as_dict(), "amount": 6}
        return httpx.Response(200, json={"payload": payload, "response_code": 0})
    return httpx.Response(status, json={"response_message": "no"})


@pytest.fixture
def client_for() -> Iterator[Callable[[Callable[[httpx.Request], httpx.Response]], CoinsClient]]:
    made: list[CoinsClient] = []

    def make(handler: Callable[[httpx.Request], httpx.Response]) -> CoinsClient:
        opts = ClientOptions(api_url="https://coins.test", max_retries=2)
        http = make_http_client(opts, transport=httpx.MockTransport(handler))
        client = CoinsClient(http, Credentials(token="t0ken"), opts, sleep=lambda _: None)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def scripted(*steps: int | Exception) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        step = queue.pop(0) if queue else 200
        if isinstance(step, Exception):
            raise step
        return answer(step)

    return handler


@pytest.mark.parametrize(
    "steps",
    [
        (502, 502, 502),
        (httpx.ReadTimeout("lost"), httpx.ReadTimeout("lost"), httpx.ReadTimeout("lost")),
        (502, httpx.ConnectError("down"), httpx.ConnectError("down")),  # the 502 may stand
        (httpx.RemoteProtocolError("dropped"), 400),  # the first may have been applied
    ],
)
def test_patch_sent_without_a_usable_answer_is_outcome_unknown(
    client_for: Callable[..., CoinsClient], steps: tuple[Any, ...]
) -> None:
    with pytest.raises(OutcomeUnknownError, match="may or may not have applied"):
        client_for(scripted(*steps)).update(ID, 6, key=KEY)


@pytest.mark.parametrize(
    "steps",
    [
        (400,),
        (httpx.ConnectError("down"),) * 3,  # nothing was ever sent
    ],
)
def test_patch_surely_not_applied_is_a_plain_failure(
    client_for: Callable[..., CoinsClient], steps: tuple[Any, ...]
) -> None:
    with pytest.raises(ApiError) as raised:
        client_for(scripted(*steps)).update(ID, 6, key=KEY)
    assert not isinstance(raised.value, OutcomeUnknownError)


def test_response_code_1_is_a_plain_failure(client_for: Callable[..., CoinsClient]) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"response_code": 1, "response_message": "refused"})

    with pytest.raises(ApiError) as raised:
        client_for(refused).update(ID, 6, key=KEY)
    assert not isinstance(raised.value, OutcomeUnknownError)


# --- end to end: stored, answer lost, configs reverted --------------------------------


def server_amount(srv: SandboxServer) -> int:
    (config,) = srv.configs()
    return int(config["amount"])


@pytest.fixture(params=["file", "postgres"])
def backend(request: pytest.FixtureRequest, project: Path) -> Workspace:
    """The project's environment on each state backend: the same scenario runs against
    the state file and against PostgreSQL (a fresh database of the session's cluster).
    Returns the workspace the CLI commands use, for reading state and audit back."""
    if request.param == "postgres":
        request.getfixturevalue("pg_dsn")  # COINS_SYNC_PG_DSN points at a new database
        write(
            project / "pyproject.toml",
            '[tool.coins-sync]\ndefault_environment = "team"\n\n'
            '[tool.coins-sync.environments.team]\nbackend = "postgres"\n',
        )
    return Workspace(load_settings(project))


@pytest.mark.usefixtures("fast_retries")
def test_lost_patch_answer_then_revert_is_not_no_changes(
    project: Path, backend: Workspace, invoke: Invoke, servers: Callable[..., SandboxServer]
) -> None:
    data = project / "sandbox.json"
    good = servers(data_file=data)
    write(project / "configs/acme.yaml", rules(6))
    assert invoke("apply", "--api-url", good.url, "--yes", env=ENV).exit_code == 0
    good.stop()

    # every PATCH is stored, then answered 502 or dropped
    lossy = servers(data_file=data, fail_after_rate=1.0, seed=7)
    write(project / "configs/acme.yaml", rules(9))
    done = invoke("apply", "--api-url", lossy.url, "--yes", env=ENV)
    assert done.exit_code == 1, done.output
    assert "outcome unknown" in done.output
    assert server_amount(lossy) == 9
    entry = backend.read_state().entries[KEY]
    assert (entry.amount, entry.pending) == (6, 9)
    uncertain = [r for r in backend.read_audit() if r["outcome"] == "uncertain"]
    assert [(r["action"], r["after"]) for r in uncertain] == [("update", 9)]

    write(project / "configs/acme.yaml", rules(6))  # the user reverts
    gets = lossy.stats["gets"]
    shown = invoke(
        "plan", "--api-url", lossy.url, "--detailed-exitcode", "--format", "json", env=ENV
    )
    assert shown.exit_code == 2, shown.output
    assert lossy.stats["gets"] == gets + 1  # only that id, once
    doc = json.loads(shown.output)
    assert doc["summary"]["update"] == 1
    (change,) = [c for c in doc["changes"] if c["action"] == "update"]
    assert (change["before"], change["amount"]) == (9, 6)  # the real amount, read back
    assert TOKEN not in shown.output

    # without a way to read it back, plan warns and still reports a change
    blind = invoke("plan", "--detailed-exitcode")
    assert blind.exit_code == 2, blind.output
    assert "unknown" in blind.output and "ACME" in blind.output
    lossy.stop()

    fixed = servers(data_file=data)
    again = invoke("apply", "--api-url", fixed.url, "--yes", env=ENV)
    assert again.exit_code == 0, again.output
    assert server_amount(fixed) == 6
    entry = backend.read_state().entries[KEY]
    assert (entry.amount, entry.pending) == (6, None)  # a confirmed PATCH clears it
    assert invoke("plan", "--detailed-exitcode").exit_code == 0


def test_pending_amount_round_trips_and_is_checked() -> None:
    from coins_sync.state.model import StateEntry

    state = State("lin", 1, {KEY: StateEntry(KEY, 6, ID, pending=9)})
    assert parse_state(serialize(state), "s").entries[KEY].pending == 9
    plain = serialize(State("lin", 1, {KEY: StateEntry(KEY, 6, ID)}))
    assert b"pendingAmount" not in plain  # existing state files are unchanged
    bad = serialize(state).replace(b'"pendingAmount": 9', b'"pendingAmount": -1')
    from coins_sync.errors import StateError

    with pytest.raises(StateError, match="pendingAmount"):
        parse_state(bad, "s")


@pytest.mark.usefixtures("fast_retries")
def test_apply_records_what_it_read_back_even_with_nothing_to_send(
    project: Path, backend: Workspace, invoke: Invoke, servers: Callable[..., SandboxServer]
) -> None:
    """The PATCH was stored but its answer lost; the configs still want that amount. The
    next apply sends nothing, yet records the server's amount and clears the mark, so
    the state matches the server and later plans need no read-back."""
    data = project / "sandbox.json"
    good = servers(data_file=data)
    write(project / "configs/acme.yaml", rules(6))
    assert invoke("apply", "--api-url", good.url, "--yes", env=ENV).exit_code == 0
    good.stop()
    lossy = servers(data_file=data, fail_after_rate=1.0, seed=7)
    write(project / "configs/acme.yaml", rules(9))
    assert invoke("apply", "--api-url", lossy.url, "--yes", env=ENV).exit_code == 1
    lossy.stop()
    entry = backend.read_state().entries[KEY]
    assert (entry.amount, entry.pending) == (6, 9)

    fixed = servers(data_file=data)
    done = invoke("apply", "--api-url", fixed.url, "--yes", env=ENV)
    assert done.exit_code == 0, done.output
    assert "Nothing to apply" in done.output
    assert fixed.stats["patches"] == 0  # nothing was sent
    entry = backend.read_state().entries[KEY]
    assert (entry.amount, entry.pending) == (9, None)
    gets = fixed.stats["gets"]
    assert invoke("plan", "--api-url", fixed.url, "--detailed-exitcode", env=ENV).exit_code == 0
    assert fixed.stats["gets"] == gets  # nothing left to read back
