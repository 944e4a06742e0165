"""The sandbox app without sockets: the real CoinsClient through ``SandboxApp.transport()``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import (
    ENCRYPTION_AES_128_ECB,
    ClientOptions,
    CoinsClient,
    Credentials,
    make_http_client,
)
from coins_sync.errors import AuthError, OutcomeUnknownError
from coins_sync.sandbox import SandboxApp, SandboxOptions, SandboxRequest

API = "http://sandbox.test"
KEY = RuleKey("CEKEKCARDS", "DEFAULT", "MEAL_CARD_PAYMENT")
OTHER = RuleKey("ACME", "DEFAULT", "FUEL_CARD_PAYMENT")
TOKEN = "app-token-1234"
CREATE = "/api/v0/enkash-coins/create-coins-config"
OAUTH = {"client_id": "cid", "client_secret": "s3cret", "username": "ops", "password": "pw"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recording(httpx.BaseTransport):
    """Passes every request to ``inner`` and remembers its method and path."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"{request.method} {request.url.path}")
        return self.inner.handle_request(request)


@pytest.fixture
def clients() -> Iterator[list[CoinsClient]]:
    made: list[CoinsClient] = []
    yield made
    for client in made:
        client.close()


def coins_client(
    made: list[CoinsClient],
    transport: httpx.BaseTransport,
    credentials: Credentials,
    **options: Any,
) -> CoinsClient:
    opts = ClientOptions(api_url=API, **options)
    client = CoinsClient(
        make_http_client(opts, transport=transport), credentials, opts, sleep=lambda _: None
    )
    made.append(client)
    return client


def test_real_client_creates_reads_and_updates_through_the_transport(
    clients: list[CoinsClient],
) -> None:
    app = SandboxApp(SandboxOptions(token=TOKEN))
    client = coins_client(clients, app.transport(), Credentials(token=TOKEN))

    created = client.create(KEY, 6)
    assert created.coin_config_id.startswith("WCC") and created.key == KEY
    assert client.get(created.coin_config_id) == created
    updated = client.update(created.coin_config_id, 9, key=KEY)
    assert (updated.coin_config_id, updated.amount) == (created.coin_config_id, 9)
    assert app.configs() == [{"coinConfigId": created.coin_config_id, **KEY.as_dict(), "amount": 9}]
    assert (app.stats["creates"], app.stats["gets"], app.stats["patches"]) == (1, 1, 1)


def test_a_wrong_token_is_refused_and_nothing_is_stored(clients: list[CoinsClient]) -> None:
    app = SandboxApp(SandboxOptions(token=TOKEN))
    client = coins_client(clients, app.transport(), Credentials(token="not-the-token"))
    with pytest.raises(AuthError):
        client.create(KEY, 6)
    assert app.configs() == []


def test_password_grant_then_calls_with_the_issued_token(clients: list[CoinsClient]) -> None:
    app = SandboxApp(SandboxOptions(**OAUTH))
    recording = Recording(app.transport())
    client = coins_client(clients, recording, Credentials(**OAUTH))

    first = client.create(KEY, 6)
    second = client.create(OTHER, 7)
    assert client.get(first.coin_config_id).amount == 6
    assert [c["coinConfigId"] for c in app.configs()] == [
        first.coin_config_id,
        second.coin_config_id,
    ]
    assert recording.calls.count("POST /oauth/token") == 1  # one token, reused


def test_an_expired_token_is_refused_and_the_client_fetches_a_new_one(
    clients: list[CoinsClient],
) -> None:
    clock = FakeClock()
    app = SandboxApp(SandboxOptions(**OAUTH, token_ttl=120, clock=clock))
    recording = Recording(app.transport())
    client = coins_client(clients, recording, Credentials(**OAUTH))
    created = client.create(KEY, 6)

    clock.now += 119  # the client's own clock has not moved: it trusts its token
    assert client.get(created.coin_config_id) == created
    assert recording.calls.count("POST /oauth/token") == 1

    clock.now += 1  # now the sandbox refuses it; one 401, one new token, one retry
    assert client.update(created.coin_config_id, 8).amount == 8
    path = f"/api/v0/enkash-coins/{created.coin_config_id}"
    assert recording.calls[-3:] == [f"PATCH {path}", "POST /oauth/token", f"PATCH {path}"]
    assert app.stats["patches"] == 1


def test_a_refused_password_is_an_auth_error(clients: list[CoinsClient]) -> None:
    app = SandboxApp(SandboxOptions(**OAUTH))
    client = coins_client(clients, app.transport(), Credentials(**{**OAUTH, "password": "no"}))
    with pytest.raises(AuthError):
        client.create(KEY, 6)
    assert app.configs() == []


def test_encrypted_bodies_with_the_real_client(clients: list[CoinsClient]) -> None:
    app = SandboxApp(SandboxOptions(**OAUTH, encryption=True))
    recording = Recording(app.transport())
    client = coins_client(
        clients, recording, Credentials(**OAUTH), encryption=ENCRYPTION_AES_128_ECB
    )
    created = client.create(KEY, 6)
    assert client.update(created.coin_config_id, 7, key=KEY).amount == 7
    assert app.configs()[0]["amount"] == 7


def test_stored_then_unanswered_creates_are_outcome_unknown_and_never_resent(
    clients: list[CoinsClient],
) -> None:
    # Seed 7 gives both "after" faults: 502 answers and dropped connections.
    app = SandboxApp(SandboxOptions(token=TOKEN, fail_after_rate=1.0, seed=7))
    client = coins_client(clients, app.transport(), Credentials(token=TOKEN))
    for _ in range(8):
        with pytest.raises(OutcomeUnknownError):
            client.create(KEY, 6)
    stats = app.stats
    assert len(app.configs()) == stats["creates"] == 8  # each create sent exactly once
    assert stats["drop"] > 0 and stats["fail_after"] > 0
    assert stats["drop"] + stats["fail_after"] == 8


def test_a_drop_is_a_response_flag_and_a_protocol_error_in_the_transport() -> None:
    options = SandboxOptions(token=TOKEN, fail_after_rate=1.0, seed=7)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = b'{"configuration": "D", "companyId": "C", "event": "E", "amount": 1}'

    direct = SandboxApp(options)
    answers = [direct.handle(SandboxRequest("POST", CREATE, auth, body)) for _ in range(8)]
    expected = ["drop" if a.drop_connection else a.status for a in answers]
    assert set(expected) == {"drop", 502}
    assert all(a.body == b"" for a in answers if a.drop_connection)

    app = SandboxApp(options)  # same seed, same faults, now through httpx
    seen: list[object] = []
    with httpx.Client(transport=app.transport(), base_url=API, headers=auth) as http:
        for _ in range(8):
            try:
                seen.append(http.post(CREATE, content=body).status_code)
            except httpx.RemoteProtocolError:
                seen.append("drop")
    assert seen == expected and len(app.configs()) == 8


@pytest.mark.parametrize("path", ["/_sandbox/configs", "/_sandbox/stats"])
def test_debug_routes_need_the_token_through_the_transport(path: str) -> None:
    app = SandboxApp(SandboxOptions(token=TOKEN))
    with httpx.Client(transport=app.transport(), base_url=API) as http:
        assert http.get(path).status_code == 401
        answer = http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.json() == (app.configs() if path.endswith("configs") else app.stats)


def test_handle_refuses_a_body_over_max_body_and_asks_to_close() -> None:
    app = SandboxApp(SandboxOptions(token=TOKEN, max_body=4))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = app.handle(SandboxRequest("POST", CREATE, auth, b"x" * 5))
    assert (answer.status, answer.close, answer.json()["response_code"]) == (413, True, 1)
    assert app.configs() == []


def test_handle_answers_a_failure_with_a_500_that_asks_to_close(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    app = SandboxApp(SandboxOptions(token=TOKEN, data_file=tmp_path / "file" / "data.json"))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = b'{"configuration": "D", "companyId": "C", "event": "E", "amount": 1}'
    answer = app.handle(SandboxRequest("POST", CREATE, auth, body))
    assert (answer.status, answer.close) == (500, True)
    assert answer.json() == {
        "payload": None,
        "response_code": 1,
        "response_message": "Internal server error",
    }
