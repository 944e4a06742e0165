"""The coins API client against hand-written fake servers (httpx.MockTransport)."""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.crypto import decrypt_to_text, encrypt_json_text, key_from_secret
from coins_sync.enkash import (
    CREATE_PATH,
    ClientOptions,
    CoinsClient,
    Credentials,
    RemoteConfig,
    make_http_client,
)
from coins_sync.enkash.fresh import FreshTransport
from coins_sync.errors import (
    ApiError,
    AuthError,
    OutcomeUnknownError,
    SettingsError,
    UnreachableError,
    UnusableAmountError,
)
from tests.loopback import Behaviour, RawServer, Received

API = "https://coins.test"
KEY = RuleKey("CEKEKCARDS", "DEFAULT", "MEAL_CARD_PAYMENT")
TOKEN = "static-token-1234"
SECRETS = {
    "token": TOKEN,
    "client_secret": "client-secret-5678",
    "password": "hunter2-password",
}
TOKEN_CREDS = Credentials(token=TOKEN)
OAUTH_CREDS = Credentials(
    client_id="cid",
    client_secret=SECRETS["client_secret"],
    username="alice",
    password=SECRETS["password"],
)
BASIC = "Basic " + base64.b64encode(b"cid:" + SECRETS["client_secret"].encode()).decode()

Handler = Callable[[httpx.Request], httpx.Response]


# -- fakes ---------------------------------------------------------------------------


def payload(
    cid: str | int = "WCC817428", key: RuleKey = KEY, amount: int | float = 6
) -> dict[str, Any]:
    return {"coinConfigId": cid, **key.as_dict(), "amount": amount}


def envelope(body: Any = None, code: int = 0, message: str = "Success") -> dict[str, Any]:
    body = payload() if body is None else body
    return {"payload": body, "response_code": code, "response_message": message}


def ok(body: Any = None) -> httpx.Response:
    return httpx.Response(200, json=envelope(body))


class Script:
    """A fake server that answers with a scripted list, repeating the last item.

    Items are responses, exceptions to raise, or callables ``request -> response``.
    Token requests get their own script. Every request is recorded.
    """

    def __init__(self, *items: object, tokens: list[object] | None = None) -> None:
        self.items = list(items) or [ok()]
        self.tokens = tokens if tokens is not None else []
        self.requests: list[httpx.Request] = []
        self.token_requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if request.url.path == "/oauth/token":
                self.token_requests.append(request)
                queue = self.tokens
            else:
                self.requests.append(request)
                queue = self.items
            item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        if callable(item):
            response = item(request)
            assert isinstance(response, httpx.Response)
            return response
        assert isinstance(item, httpx.Response)
        # A fresh response each time: one response object cannot be sent twice.
        return httpx.Response(item.status_code, headers=item.headers, stream=item.stream)

    def creates(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == CREATE_PATH]


def token_response(token: str = "access-1", expires_in: int = 3600) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "expires_in": expires_in})


class BrokenStream(httpx.SyncByteStream):
    """A body that dies after the headers arrived: the connection dropped mid-answer."""

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"payload":'
        raise httpx.ReadError("connection reset by peer")


class EndlessStream(httpx.SyncByteStream):
    """A body with no Content-Length that never ends."""

    def __init__(self) -> None:
        self.chunks = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            self.chunks += 1
            yield b"x" * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(sleeps: list[float], clock: FakeClock) -> Iterator[Callable[..., CoinsClient]]:
    clients: list[CoinsClient] = []

    def make(
        handler: Handler, credentials: Credentials = TOKEN_CREDS, **options: Any
    ) -> CoinsClient:
        opts = ClientOptions(api_url=API, **options)
        http = make_http_client(opts, transport=httpx.MockTransport(handler))
        try:
            client = CoinsClient(http, credentials, opts, sleep=sleeps.append, clock=clock)
        except BaseException:
            http.close()
            raise
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def assert_no_secret(text: str) -> None:
    for secret in [*SECRETS.values(), BASIC.removeprefix("Basic ")]:
        assert secret not in text


# -- create, get, update: the happy paths ---------------------------------------------


def test_create_sends_exact_body_and_headers(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(ok())
    client = make_client(server)

    remote = client.create(KEY, 6)

    assert remote == RemoteConfig("WCC817428", KEY, 6)
    [request] = server.requests
    assert request.method == "POST"
    assert str(request.url) == f"{API}{CREATE_PATH}"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert "Cookie" not in request.headers
    assert json.loads(request.content) == {
        "configuration": "DEFAULT",
        "companyId": "CEKEKCARDS",
        "event": "MEAL_CARD_PAYMENT",
        "amount": 6,
    }


def test_cookie_is_sent_only_when_configured(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(ok())
    client = make_client(server, Credentials(token=TOKEN, cookie="SESSION=abc"))
    client.create(KEY, 6)
    assert server.requests[0].headers["Cookie"] == "SESSION=abc"


def test_server_set_cookies_are_not_replayed(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(httpx.Response(200, json=envelope(), headers={"Set-Cookie": "lb=1; Path=/"}))
    client = make_client(server)
    client.get("WCC817428")
    client.get("WCC817428")
    assert "Cookie" not in server.requests[1].headers


def test_get_reads_one_config(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(ok(payload(cid="WCC_1-a")))
    client = make_client(server)
    assert client.get("WCC_1-a") == RemoteConfig("WCC_1-a", KEY, 6)
    request = server.requests[0]
    assert (request.method, request.url.path) == ("GET", "/api/v0/enkash-coins/WCC_1-a")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"


def test_update_sends_patch_with_amount_only(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(ok(payload(amount=9)))
    client = make_client(server)
    assert client.update("WCC817428", 9, key=KEY) == RemoteConfig("WCC817428", KEY, 9)
    request = server.requests[0]
    assert (request.method, request.url.path) == ("PATCH", "/api/v0/enkash-coins/WCC817428")
    assert request.content == b'{"amount":9}'


def test_api_url_with_path_prefix_is_kept(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(ok())
    opts = ClientOptions(api_url="https://gw.test/enkash/")
    with CoinsClient(
        make_http_client(opts, transport=httpx.MockTransport(server)), TOKEN_CREDS, opts
    ) as client:
        client.get("WCC817428")
    assert str(server.requests[0].url) == "https://gw.test/enkash/api/v0/enkash-coins/WCC817428"


@pytest.mark.parametrize("bad_id", ["", "a/b", "../x", "x" * 65, "id\n", "sp ace", "é"])
def test_invalid_id_is_refused_without_sending(
    make_client: Callable[..., CoinsClient], bad_id: str
) -> None:
    server = Script()
    client = make_client(server)
    with pytest.raises(ApiError, match="invalid coinConfigId"):
        client.get(bad_id)
    with pytest.raises(ApiError, match="invalid coinConfigId"):
        client.update(bad_id, 1)
    assert server.requests == []


# -- envelope and HTTP errors ---------------------------------------------------------


def test_refused_envelope_raises_api_error_with_message(
    make_client: Callable[..., CoinsClient],
) -> None:
    server = Script(httpx.Response(200, json=envelope({}, code=1, message="Config exists")))
    client = make_client(server)
    with pytest.raises(ApiError) as caught:
        client.create(KEY, 6)
    assert type(caught.value) is ApiError  # refused means not created: not "unknown"
    assert "Config exists" in str(caught.value)
    assert f"POST {CREATE_PATH}" in str(caught.value)
    assert (caught.value.status, caught.value.code) == (200, 1)


@pytest.mark.parametrize("status", [400, 404, 422])
@pytest.mark.parametrize("call", ["create", "get", "update"])
def test_client_errors_raise_api_error_with_status_and_message(
    make_client: Callable[..., CoinsClient], status: int, call: str
) -> None:
    body = {"response_code": 1, "response_message": "amount must be positive"}
    server = Script(httpx.Response(status, json=body))
    client = make_client(server)
    with pytest.raises(ApiError) as caught:
        if call == "create":
            client.create(KEY, 6)
        elif call == "get":
            client.get("WCC817428")
        else:
            client.update("WCC817428", 6)
    assert type(caught.value) is ApiError
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    assert "amount must be positive" in str(caught.value)
    assert len(server.requests) == 1


def test_long_server_message_is_truncated(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(httpx.Response(400, json={"response_message": "bad " * 500}))
    client = make_client(server)
    with pytest.raises(ApiError) as caught:
        client.get("WCC817428")
    assert len(str(caught.value)) < 300


def test_create_echo_mismatch_is_outcome_unknown(make_client: Callable[..., CoinsClient]) -> None:
    client = make_client(Script(ok(payload(cid="WCC9", amount=7))))
    with pytest.raises(OutcomeUnknownError) as caught:
        client.create(KEY, 6)
    message = str(caught.value)
    assert "echoed amount=7 but we sent amount=6" in message
    assert "WCC9" in message


def test_create_echo_of_another_key_is_an_error(make_client: Callable[..., CoinsClient]) -> None:
    other = RuleKey("CEKEKCARDS", "DEFAULT", "INVOICE_PAYMENT")
    client = make_client(Script(ok(payload(key=other))))
    with pytest.raises(OutcomeUnknownError, match="event='INVOICE_PAYMENT'"):
        client.create(KEY, 6)


def test_get_echo_of_another_id_is_an_error(make_client: Callable[..., CoinsClient]) -> None:
    client = make_client(Script(ok(payload(cid="WCC2"))))
    with pytest.raises(ApiError, match="echoed coinConfigId WCC2 but we asked for WCC1"):
        client.get("WCC1")


def test_update_echo_mismatch_is_an_error(make_client: Callable[..., CoinsClient]) -> None:
    client = make_client(Script(ok(payload(amount=5))))
    with pytest.raises(ApiError, match="echoed amount=5 but we sent amount=9"):
        client.update("WCC817428", 9)
    other = RuleKey("OTHER", "DEFAULT", "MEAL_CARD_PAYMENT")
    client = make_client(Script(ok(payload(key=other, amount=9))))
    with pytest.raises(ApiError, match="companyId='OTHER'"):
        client.update("WCC817428", 9, key=KEY)


@pytest.mark.parametrize(("amount", "shown"), [(6.5, "6.5"), (-5, "-5"), (-0.5, "-0.5")])
def test_a_read_of_an_unusable_amount_names_it_and_a_create_is_unknown(
    make_client: Callable[..., CoinsClient], amount: float, shown: str
) -> None:
    client = make_client(Script(ok({**payload(), "amount": amount})))
    with pytest.raises(UnusableAmountError, match="not a whole number of 0 or more") as caught:
        client.get("WCC817428")
    assert (caught.value.raw, caught.value.coin_config_id) == (shown, "WCC817428")
    if amount >= 0:  # a create's answer: the config may exist, with what amount is unknown
        with pytest.raises(OutcomeUnknownError, match="amount is missing or not an integer"):
            client.create(KEY, 6)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(200, content=b"<html>oops</html>"), "not JSON"),
        (httpx.Response(200, json=[1, 2]), "not a JSON object"),
        (httpx.Response(200, json={"payload": payload()}), "no integer response_code"),
        (httpx.Response(200, json={"response_code": 0}), "no payload object"),
        (ok({**payload(), "amount": True}), "amount is missing or not an integer"),
        (ok({**payload(), "amount": "6"}), "amount is missing or not an integer"),
        (ok({**payload(), "coinConfigId": True}), "coinConfigId is missing or not a valid"),
        (ok({**payload(), "coinConfigId": 81.5}), "coinConfigId is missing or not a valid"),
        (ok({**payload(), "coinConfigId": 10**70}), "coinConfigId is missing or not a valid"),
        (httpx.Response(200, json={**envelope(), "response_code": False}), "no integer resp"),
        (httpx.Response(200, json={**envelope(), "response_code": "zero"}), "no integer resp"),
        (httpx.Response(200, json={**envelope(), "response_code": "0.5"}), "no integer resp"),
        (ok({k: v for k, v in payload().items() if k != "event"}), "event is missing"),
        (ok({**payload(), "coinConfigId": "a/b"}), "coinConfigId is missing or not a valid"),
    ],
)
def test_unusable_success_answers_are_errors(
    make_client: Callable[..., CoinsClient], response: httpx.Response, reason: str
) -> None:
    client = make_client(Script(response))
    with pytest.raises(ApiError, match=reason) as caught:
        client.get("WCC817428")
    assert type(caught.value) is ApiError
    # For a create, a 2xx we cannot read may still have created the config.
    with pytest.raises(OutcomeUnknownError, match=reason):
        client.create(KEY, 6)


@pytest.mark.parametrize(
    ("answer", "cid"),
    [
        (envelope(payload(cid=817428)), "817428"),
        (envelope(payload(amount=6.0)), "WCC817428"),
        ({**envelope(), "response_code": "0"}, "WCC817428"),
        ({**envelope(), "response_code": 0.0}, "WCC817428"),
    ],
    ids=["integer-id", "float-amount", "string-code", "float-code"],
)
def test_harmless_type_variations_are_accepted(
    make_client: Callable[..., CoinsClient], answer: dict[str, Any], cid: str
) -> None:
    client = make_client(Script(httpx.Response(200, json=answer)))
    assert client.create(KEY, 6) == RemoteConfig(cid, KEY, 6)
    assert client.get(cid) == RemoteConfig(cid, KEY, 6)
    assert client.update(cid, 6, key=KEY) == RemoteConfig(cid, KEY, 6)


def test_numeric_string_refusal_code_is_a_refusal(
    make_client: Callable[..., CoinsClient],
) -> None:
    refused = {"payload": None, "response_code": "1", "response_message": "Config exists"}
    client = make_client(Script(httpx.Response(200, json=refused)))
    with pytest.raises(ApiError, match="refused \\(response_code 1\\): Config exists") as caught:
        client.create(KEY, 6)
    assert type(caught.value) is ApiError
    assert caught.value.code == 1
    client = make_client(Script(httpx.Response(400, json=refused)))
    with pytest.raises(ApiError) as caught:
        client.get("WCC1")
    assert caught.value.code == 1


@pytest.mark.parametrize(
    ("response", "shown"),
    [
        (httpx.Response(200, json={"payload": payload(cid="WCC42")}), "WCC42"),
        (httpx.Response(200, json={**envelope(), "response_code": "OK"}), "WCC817428"),
        (ok({**payload(cid="WCC42"), "amount": 6.5}), "WCC42"),
        (ok({**payload(cid=42), "event": None}), "42"),
        (ok(payload(cid="a/b")), "'a/b'"),
        (httpx.Response(200, json={"coinConfigId": "WCC7", "ok": True}), "WCC7"),
        (httpx.Response(500, json=envelope(payload(cid="WCC43"))), "WCC43"),
        (httpx.Response(302, json=envelope(payload(cid="WCC44"))), "WCC44"),
    ],
    ids=["no-code", "word-code", "half-amount", "int-id", "bad-id", "top-level", "500", "302"],
)
def test_uncertain_create_names_the_id_the_server_gave(
    make_client: Callable[..., CoinsClient], response: httpx.Response, shown: str
) -> None:
    client = make_client(Script(response))
    with pytest.raises(OutcomeUnknownError) as caught:
        client.create(KEY, 6)
    assert f"(the response names coinConfigId {shown})" in str(caught.value)


def test_uncertain_create_without_an_id_names_none(
    make_client: Callable[..., CoinsClient],
) -> None:
    client = make_client(Script(httpx.Response(200, json={"response_code": 0})))
    with pytest.raises(OutcomeUnknownError) as caught:
        client.create(KEY, 6)
    assert "names coinConfigId" not in str(caught.value)


def test_oversized_response_is_an_error(make_client: Callable[..., CoinsClient]) -> None:
    body = json.dumps(envelope({**payload(), "pad": "x" * 5000})).encode()
    client = make_client(Script(httpx.Response(200, content=body)), max_response_bytes=1000)
    with pytest.raises(ApiError, match="larger than max_response_bytes"):
        client.get("WCC817428")


def test_endless_response_is_not_buffered(make_client: Callable[..., CoinsClient]) -> None:
    stream = EndlessStream()
    client = make_client(
        Script(lambda _: httpx.Response(200, stream=stream)), max_response_bytes=10_000
    )
    with pytest.raises(ApiError, match="larger than max_response_bytes"):
        client.get("WCC817428")
    assert stream.chunks <= 11


# -- retries: create is sent again only when surely not processed ---------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no free connection"),
        httpx.Response(429, json={"response_message": "slow down"}),
    ],
    ids=["connect-error", "connect-timeout", "pool-timeout", "429"],
)
def test_create_is_retried_when_surely_not_processed(
    make_client: Callable[..., CoinsClient], sleeps: list[float], failure: object
) -> None:
    server = Script(failure, failure, ok())
    client = make_client(server)
    assert client.create(KEY, 6).coin_config_id == "WCC817428"
    assert len(server.creates()) == 3
    assert len(sleeps) == 2


def test_create_429_honours_retry_after(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    server = Script(
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(429, headers={"Retry-After": "60"}),
        ok(),
    )
    client = make_client(server, backoff_max=10.0)
    client.create(KEY, 6)
    assert sleeps == [3.0, 60.0]  # Retry-After is not capped at backoff_max
    assert len(server.creates()) == 3


def test_create_429_asking_too_long_gives_up_at_once(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    server = Script(httpx.Response(429, headers={"Retry-After": "61"}), ok())
    client = make_client(server)
    with pytest.raises(ApiError) as caught:
        client.create(KEY, 6)
    assert type(caught.value) is ApiError  # a 429 is a definite "not created"
    assert caught.value.status == 429
    message = str(caught.value)
    assert "retry after 61s, longer than retry_after_max (60s)" in message
    assert "the config was not created" in message
    assert (len(server.creates()), sleeps) == (1, [])


@pytest.mark.parametrize("status", [429, 503])
def test_get_retry_after_cap_is_a_setting(
    make_client: Callable[..., CoinsClient], sleeps: list[float], status: int
) -> None:
    wait = httpx.Response(status, headers={"Retry-After": "100"})
    server = Script(wait, ok())
    client = make_client(server, retry_after_max=120.0)
    assert client.get("WCC817428").amount == 6
    assert sleeps == [100.0]

    server = Script(wait, ok())
    client = make_client(server, retry_after_max=30.0)
    with pytest.raises(ApiError, match=r"longer than retry_after_max \(30s\); giving up") as caught:
        client.get("WCC817428")
    assert type(caught.value) is ApiError
    assert caught.value.status == status
    assert (len(server.requests), sleeps) == (1, [100.0])


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json={"response_message": "internal error"}),
        httpx.Response(502),
        httpx.Response(503, headers={"Retry-After": "1"}),
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
        httpx.WriteError("broken pipe"),
        httpx.Response(200, stream=BrokenStream()),
        httpx.Response(303, headers={"Location": "/elsewhere"}),
    ],
    ids=[
        "500",
        "502",
        "503",
        "read-timeout",
        "write-timeout",
        "dropped",
        "read-error",
        "write-error",
        "body-lost",
        "303",
    ],
)
def test_create_with_unknown_outcome_is_sent_exactly_once(
    make_client: Callable[..., CoinsClient], sleeps: list[float], failure: object
) -> None:
    server = Script(failure, ok())
    client = make_client(server)
    with pytest.raises(OutcomeUnknownError) as caught:
        client.create(KEY, 6)
    assert len(server.creates()) == 1
    assert sleeps == []
    assert f"POST {CREATE_PATH}" in str(caught.value)


@pytest.mark.parametrize("status", [403, 409, 308])
def test_create_refused_outright_is_not_retried(
    make_client: Callable[..., CoinsClient], status: int
) -> None:
    server = Script(httpx.Response(status, headers={"Location": "https://other.test/"}), ok())
    client = make_client(server)
    with pytest.raises(ApiError) as caught:
        client.create(KEY, 6)
    assert type(caught.value) is ApiError
    assert len(server.creates()) == 1


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500),
        httpx.Response(503),
        httpx.Response(429),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ConnectError("connection refused"),
        httpx.Response(200, stream=BrokenStream()),
    ],
    ids=["500", "503", "429", "read-timeout", "dropped", "connect-error", "body-lost"],
)
@pytest.mark.parametrize("call", ["get", "update"])
def test_get_and_patch_are_retried_then_succeed(
    make_client: Callable[..., CoinsClient], sleeps: list[float], failure: object, call: str
) -> None:
    server = Script(failure, ok())
    client = make_client(server)
    if call == "get":
        assert client.get("WCC817428").amount == 6
    else:
        assert client.update("WCC817428", 6).amount == 6
    assert len(server.requests) == 2
    assert len(sleeps) == 1


def test_retries_are_bounded(make_client: Callable[..., CoinsClient], sleeps: list[float]) -> None:
    server = Script(httpx.Response(500, json={"response_message": "down"}))
    client = make_client(server, max_retries=3, backoff_initial=0.5, backoff_max=2.0)
    with pytest.raises(ApiError, match="gave up after 4 attempts; last: HTTP 500: down") as caught:
        client.get("WCC817428")
    assert type(caught.value) is ApiError
    assert caught.value.status == 500
    assert len(server.requests) == 4
    assert len(sleeps) == 3
    # Full jitter in a window that doubles from backoff_initial, capped at backoff_max.
    for attempt, delay in enumerate(sleeps):
        assert 0 <= delay <= min(2.0, 0.5 * 2**attempt)


def test_create_connect_retries_are_bounded_and_final(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    server = Script(httpx.ConnectError("connection refused"))
    client = make_client(server, max_retries=2)
    with pytest.raises(
        ApiError,
        match=r"cannot reach the API at coins\.test:443: .* on all 3 tries; nothing was sent",
    ) as caught:
        client.create(KEY, 6)
    assert type(caught.value) is UnreachableError  # nothing was ever sent: not "unknown"
    assert caught.value.address == "coins.test:443"
    assert len(server.creates()) == 3


def test_no_retries_when_max_retries_is_zero(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    server = Script(httpx.Response(503))
    client = make_client(server, max_retries=0)
    with pytest.raises(ApiError, match="gave up after 1 attempt;"):
        client.get("WCC817428")
    assert (len(server.requests), sleeps) == (1, [])


# -- authentication -------------------------------------------------------------------


def test_oauth_token_request_is_exact(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(ok(), tokens=[token_response("access-1")])
    creds = Credentials(
        client_id="cid", client_secret=SECRETS["client_secret"], username="alice", password="p@ss&"
    )
    client = make_client(server, creds)
    client.create(KEY, 6)

    [grant] = server.token_requests
    assert grant.method == "POST"
    assert str(grant.url) == f"{API}/oauth/token"
    assert grant.headers["Authorization"] == BASIC
    assert grant.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(grant.content.decode()) == [
        ("username", "alice"),
        ("password", "p@ss&"),
        ("grant_type", "password"),
        ("clientId", "cid"),
    ]
    assert server.requests[0].headers["Authorization"] == "Bearer access-1"


def test_oauth_token_is_reused_across_calls(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(ok(), tokens=[token_response("access-1")])
    client = make_client(server, OAUTH_CREDS)
    client.create(KEY, 6)
    client.get("WCC817428")
    client.update("WCC817428", 6)
    assert len(server.token_requests) == 1
    assert {r.headers["Authorization"] for r in server.requests} == {"Bearer access-1"}


def test_oauth_token_is_refreshed_near_expiry(
    make_client: Callable[..., CoinsClient], clock: FakeClock
) -> None:
    server = Script(ok(), tokens=[token_response("access-1", 100), token_response("access-2")])
    client = make_client(server, OAUTH_CREDS)
    client.get("WCC817428")
    clock.now += 60  # 40 s left: still fine
    client.get("WCC817428")
    clock.now += 15  # 25 s left: inside the 30 s margin
    client.get("WCC817428")
    assert len(server.token_requests) == 2
    assert [r.headers["Authorization"] for r in server.requests] == [
        "Bearer access-1",
        "Bearer access-1",
        "Bearer access-2",
    ]


def test_oauth_token_is_refreshed_once_after_401(
    make_client: Callable[..., CoinsClient],
) -> None:
    server = Script(
        httpx.Response(401), ok(), tokens=[token_response("access-1"), token_response("access-2")]
    )
    client = make_client(server, OAUTH_CREDS)
    assert client.create(KEY, 6).coin_config_id == "WCC817428"
    assert len(server.token_requests) == 2
    assert [r.headers["Authorization"] for r in server.creates()] == [
        "Bearer access-1",
        "Bearer access-2",
    ]


def test_second_401_after_refresh_is_an_auth_error(
    make_client: Callable[..., CoinsClient],
) -> None:
    server = Script(
        httpx.Response(401), tokens=[token_response("access-1"), token_response("access-2")]
    )
    client = make_client(server, OAUTH_CREDS)
    with pytest.raises(AuthError, match="refused a freshly fetched token"):
        client.get("WCC817428")
    assert len(server.token_requests) == 2
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(401, json={"error": "invalid_grant", "error_description": "Bad creds"}),
        httpx.Response(400, json={"error": "invalid_request"}),
        httpx.Response(500),
        httpx.Response(503, headers={"Retry-After": "1"}),
        httpx.Response(200, json={"expires_in": 3600}),
        httpx.Response(200, content=b"not json"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
    ],
    ids=["401", "400", "500", "503", "no-token", "not-json", "read-timeout", "dropped", "reset"],
)
def test_refused_grant_is_never_retried(
    make_client: Callable[..., CoinsClient], sleeps: list[float], refusal: object
) -> None:
    server = Script(ok(), tokens=[refusal, token_response()])
    client = make_client(server, OAUTH_CREDS)
    with pytest.raises(AuthError, match="lock the account") as first:
        client.create(KEY, 6)
    later = "earlier token request failed"
    with pytest.raises(AuthError, match=later):
        client.create(KEY, 6)
    with pytest.raises(AuthError, match=later):
        client.get("WCC1")
    with pytest.raises(AuthError, match=later):
        client.update("WCC1", 6)
    assert len(server.token_requests) == 1
    assert server.requests == []
    assert sleeps == []
    assert_no_secret(str(first.value))


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no free connection"),
    ],
    ids=["connect-error", "connect-timeout", "pool-timeout"],
)
def test_token_request_is_retried_when_nothing_was_sent(
    make_client: Callable[..., CoinsClient], sleeps: list[float], failure: object
) -> None:
    server = Script(ok(), tokens=[failure, failure, token_response("access-1")])
    client = make_client(server, OAUTH_CREDS)
    assert client.create(KEY, 6).coin_config_id == "WCC817428"
    assert len(server.token_requests) == 3
    assert len(sleeps) == 2  # with backoff, through the injected sleep
    assert [r.headers["Authorization"] for r in server.creates()] == ["Bearer access-1"]


def test_token_connect_failures_are_bounded_and_not_remembered(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    refused = httpx.ConnectError("connection refused")
    server = Script(ok(), tokens=[refused, refused, refused, token_response("access-1")])
    client = make_client(server, OAUTH_CREDS, max_retries=2, backoff_initial=0.5)
    with pytest.raises(AuthError, match="gave up after 3 attempts") as caught:
        client.create(KEY, 6)
    assert "no login was attempted" in str(caught.value)
    assert_no_secret(str(caught.value))
    assert (len(server.token_requests), len(sleeps), server.requests) == (3, 2, [])
    for attempt, delay in enumerate(sleeps):
        assert 0 <= delay <= 0.5 * 2**attempt
    # Nothing counted as a login, so a later call may ask again.
    assert client.create(KEY, 6).coin_config_id == "WCC817428"
    assert len(server.token_requests) == 4


def test_token_429_is_retried_honouring_retry_after(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    slow_down = httpx.Response(429, headers={"Retry-After": "20"})
    server = Script(ok(), tokens=[slow_down, token_response("access-1")])
    client = make_client(server, OAUTH_CREDS)
    client.get("WCC817428")
    assert len(server.token_requests) == 2
    assert sleeps == [20.0]


def test_token_429_asking_too_long_is_a_remembered_failure(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    slow_down = httpx.Response(429, headers={"Retry-After": "3600"})
    server = Script(ok(), tokens=[slow_down, token_response()])
    client = make_client(server, OAUTH_CREDS)
    with pytest.raises(AuthError, match="longer than retry_after_max") as caught:
        client.get("WCC817428")
    assert caught.value.status == 429
    with pytest.raises(AuthError, match="earlier token request failed"):
        client.get("WCC817428")
    assert (len(server.token_requests), sleeps, server.requests) == (1, [], [])


def test_token_429_retries_are_bounded_and_remembered(
    make_client: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    server = Script(ok(), tokens=[httpx.Response(429)])  # the last item repeats
    client = make_client(server, OAUTH_CREDS, max_retries=1)
    with pytest.raises(AuthError, match="gave up after 2 attempts; last: HTTP 429"):
        client.get("WCC817428")
    with pytest.raises(AuthError, match="earlier token request failed"):
        client.get("WCC817428")
    assert (len(server.token_requests), len(sleeps)) == (2, 1)


def test_refused_grant_names_the_status_and_reason(
    make_client: Callable[..., CoinsClient],
) -> None:
    # Only the standard OAuth error code is named; the endpoint's free text never is,
    # since a token endpoint or proxy may echo the request body, password included.
    refusal = httpx.Response(
        401, json={"error": "invalid_grant", "error_description": "Bad credentials"}
    )
    client = make_client(Script(tokens=[refusal]), OAUTH_CREDS)
    with pytest.raises(AuthError, match=r"refused \(HTTP 401, invalid_grant\)") as caught:
        client.get("WCC1")
    assert caught.value.status == 401
    assert "Bad credentials" not in str(caught.value)


def test_static_token_refused_is_an_auth_error(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(httpx.Response(401))
    client = make_client(server)
    with pytest.raises(AuthError, match=r"the API refused COINS_SYNC_TOKEN \(401\)"):
        client.create(KEY, 6)
    assert server.token_requests == []
    assert len(server.requests) == 1


def test_threads_share_one_token_request(make_client: Callable[..., CoinsClient]) -> None:
    def slow_token(_: httpx.Request) -> httpx.Response:
        time.sleep(0.05)  # widen the window in which threads would race
        return token_response("access-1")

    server = Script(ok(), tokens=[slow_token])
    client = make_client(server, OAUTH_CREDS)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: client.create(KEY, 6), range(32)))
    assert len(results) == 32
    assert len(server.token_requests) == 1


def test_threads_after_401_share_one_refresh(make_client: Callable[..., CoinsClient]) -> None:
    barrier = threading.Barrier(8)

    def expired_then_ok(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == "Bearer access-1":
            barrier.wait(timeout=5)  # every thread holds the old token before any refresh
            return httpx.Response(401)
        return ok()

    server = Script(
        expired_then_ok, tokens=[token_response("access-1"), token_response("access-2")]
    )
    client = make_client(server, OAUTH_CREDS)
    # The first thread fetches access-1 while the others wait for it, so each sends it.
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: client.get("WCC817428"), range(8)))
    assert len(results) == 8
    assert len(server.token_requests) == 2


# -- credentials ----------------------------------------------------------------------


def test_missing_credentials_names_the_variables(
    make_client: Callable[..., CoinsClient],
) -> None:
    with pytest.raises(AuthError) as caught:
        make_client(Script(), Credentials.from_env({}))
    message = str(caught.value)
    for name in (
        "COINS_SYNC_TOKEN",
        "COINS_SYNC_CLIENT_ID",
        "COINS_SYNC_CLIENT_SECRET",
        "COINS_SYNC_USERNAME",
        "COINS_SYNC_PASSWORD",
    ):
        assert name in message


def test_partial_oauth_names_missing_variables_not_values(
    make_client: Callable[..., CoinsClient],
) -> None:
    env = {
        "COINS_SYNC_CLIENT_ID": "cid",
        "COINS_SYNC_CLIENT_SECRET": SECRETS["client_secret"],
        "COINS_SYNC_USERNAME": "",
    }
    with pytest.raises(AuthError) as caught:
        make_client(Script(), Credentials.from_env(env))
    message = str(caught.value)
    assert "COINS_SYNC_USERNAME, COINS_SYNC_PASSWORD are not set" in message
    assert_no_secret(message)


def test_credentials_from_env_reads_every_variable() -> None:
    env = {
        "COINS_SYNC_TOKEN": " tok \n",
        "COINS_SYNC_CLIENT_ID": "cid",
        "COINS_SYNC_CLIENT_SECRET": "cs",
        "COINS_SYNC_USERNAME": "alice",
        "COINS_SYNC_PASSWORD": " pw ",
        "COINS_SYNC_COOKIE": "",
    }
    assert Credentials.from_env(env) == Credentials("tok", "cid", "cs", "alice", " pw ", None)


def test_credentials_secrets_lists_what_to_scrub() -> None:
    assert set(OAUTH_CREDS.secrets()) == {
        SECRETS["client_secret"],
        SECRETS["password"],
        BASIC.removeprefix("Basic "),
    }
    assert TOKEN_CREDS.secrets() == [TOKEN]
    assert Credentials().secrets() == []


def test_no_repr_or_str_shows_a_secret(make_client: Callable[..., CoinsClient]) -> None:
    creds = dataclasses.replace(OAUTH_CREDS, token=TOKEN, cookie="SESSION=1")
    client = make_client(Script(), creds)
    for text in (repr(creds), str(creds), repr(client), str(client), repr(OAUTH_CREDS)):
        assert_no_secret(text)
    assert "COINS_SYNC_TOKEN" in repr(creds)


def test_errors_never_contain_secrets(make_client: Callable[..., CoinsClient]) -> None:
    # A careless server that echoes everything back, including our credentials.
    def echo(request: httpx.Request) -> httpx.Response:
        said = f"{request.headers.get('Authorization')} {request.content.decode()}"
        return httpx.Response(400, json={"response_message": said, "error_description": said})

    client = make_client(Script(echo, tokens=[echo]), OAUTH_CREDS)
    with pytest.raises(AuthError) as grant:
        client.get("WCC1")
    assert_no_secret(str(grant.value))
    assert "grant_type" not in str(grant.value)  # the token endpoint's body is never copied

    client = make_client(Script(echo), Credentials(token=TOKEN))
    with pytest.raises(ApiError) as call:
        client.create(KEY, 6)
    assert_no_secret(str(call.value))


def test_clipping_never_cuts_a_secret_past_scrubbing(
    make_client: Callable[..., CoinsClient],
) -> None:
    # A careless server whose long message ends with our token right at the clip limit,
    # and an uncertain create whose "id" is our Authorization header.
    def echo(request: httpx.Request) -> httpx.Response:
        said = "x" * 190 + request.headers["Authorization"]
        return httpx.Response(400, json={"response_message": said})

    client = make_client(Script(echo))
    with pytest.raises(ApiError) as caught:
        client.get("WCC1")
    assert "static-" not in str(caught.value)
    assert "***" in str(caught.value)

    def id_echo(request: httpx.Request) -> httpx.Response:
        cid = "y" * 70 + request.headers["Authorization"]
        return httpx.Response(200, json={"payload": {"coinConfigId": cid}})

    client = make_client(Script(id_echo))
    with pytest.raises(OutcomeUnknownError) as uncertain:
        client.create(KEY, 6)
    assert "static-" not in str(uncertain.value)
    assert "names coinConfigId 'yyy" in str(uncertain.value)


def test_invalid_token_characters_are_refused_without_echo(
    make_client: Callable[..., CoinsClient],
) -> None:
    with pytest.raises(AuthError, match="COINS_SYNC_TOKEN holds characters") as caught:
        make_client(Script(), Credentials(token="abc def"))
    assert "abc def" not in str(caught.value)


# -- encryption -----------------------------------------------------------------------


def test_encrypted_round_trip(make_client: Callable[..., CoinsClient]) -> None:
    key = key_from_secret(SECRETS["client_secret"])
    seen: list[dict[str, Any]] = []

    def encrypted_server(request: httpx.Request) -> httpx.Response:
        wrapper = json.loads(request.content)
        assert set(wrapper) == {"request"}
        seen.append(json.loads(decrypt_to_text(wrapper["request"], key)))
        answer = json.dumps(envelope(payload(cid="WCC5")))
        return httpx.Response(200, json={"request": encrypt_json_text(answer, key)})

    server = Script(encrypted_server, tokens=[token_response()])
    client = make_client(server, OAUTH_CREDS, encryption="aes-128-ecb")
    assert client.create(KEY, 6) == RemoteConfig("WCC5", KEY, 6)
    assert seen == [{**KEY.as_dict(), "amount": 6}]
    # The token endpoint stays plain.
    assert dict(parse_qsl(server.token_requests[0].content.decode()))["grant_type"] == "password"


def test_encryption_needs_the_client_secret(make_client: Callable[..., CoinsClient]) -> None:
    with pytest.raises(AuthError, match="COINS_SYNC_CLIENT_SECRET"):
        make_client(Script(), TOKEN_CREDS, encryption="aes-128-ecb")


def test_undecryptable_answer_is_an_error(make_client: Callable[..., CoinsClient]) -> None:
    server = Script(httpx.Response(200, json={"request": "bm90IGEgYmxvY2s="}))
    creds = Credentials(token=TOKEN, client_secret=SECRETS["client_secret"])
    client = make_client(server, creds, encryption="aes-128-ecb")
    with pytest.raises(ApiError, match="could not decrypt the response"):
        client.get("WCC817428")


def test_encrypted_answer_without_encryption_hints_at_the_setting(
    make_client: Callable[..., CoinsClient],
) -> None:
    client = make_client(Script(httpx.Response(200, json={"request": "abcd"})))
    with pytest.raises(ApiError, match="looks encrypted"):
        client.get("WCC817428")


def test_crypto_matches_a_known_answer() -> None:
    # Computed independently with: openssl enc -aes-128-ecb -K <sha256[:16]> | base64
    key = key_from_secret("top-secret")
    assert key.hex() == "190aec7389a3b0b5b6c67ac2756cb7b7"
    assert encrypt_json_text('{"amount":6}', key) == "VAz0pVpqgK/bnmWhHOIFTA=="
    assert decrypt_to_text("VAz0pVpqgK/bnmWhHOIFTA==", key) == '{"amount":6}'


@pytest.mark.parametrize("garbage", ["not base64!", "", "AAAA", "VAz0pVpqgK/bnmWhHOIFTA=="])
def test_crypto_refuses_garbage(garbage: str) -> None:
    with pytest.raises(ApiError, match="could not decrypt the response"):
        decrypt_to_text(garbage, key_from_secret("another-secret"))


# -- options and the HTTP client ------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"encryption": "aes-256-gcm"}, "encryption"),
        ({"api_url": "https://user:pw@coins.test"}, "must not contain a user name"),
        ({"api_url": "ftp://coins.test"}, "http"),
        ({"max_retries": -1}, "max_retries"),
        ({"read_timeout": 0}, "read_timeout"),
        ({"retry_after_max": -1.0}, "retry_after_max"),
        ({"retry_after_max": float("inf")}, "retry_after_max"),
        ({"retry_after_max": float("nan")}, "retry_after_max"),
    ],
)
def test_bad_options_are_settings_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        ClientOptions(**{"api_url": API, **changes})
    assert "pw@" not in str(caught.value)


def test_http_client_settings() -> None:
    opts = ClientOptions(api_url=API, connect_timeout=2.0, read_timeout=7.0)
    with make_http_client(opts) as http:
        assert http.follow_redirects is False
        assert http.timeout == httpx.Timeout(connect=2.0, read=7.0, write=7.0, pool=2.0)
        assert http.base_url.host == "coins.test"


# -- a real socket: the transport errors are the ones the rules above assume ----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_refused_connection_is_retried_then_final(sleeps: list[float]) -> None:
    opts = ClientOptions(api_url=f"http://127.0.0.1:{_free_port()}", max_retries=1)
    client = CoinsClient(make_http_client(opts), TOKEN_CREDS, opts, sleep=sleeps.append)
    with (
        client,
        pytest.raises(
            ApiError,
            match=r"cannot reach the API at 127\.0\.0\.1:[0-9]+: .* on all 2 tries; nothing was sent",
        ) as caught,
    ):
        client.create(KEY, 6)
    assert type(caught.value) is UnreachableError
    assert len(sleeps) == 1


def test_real_connection_dropped_after_sending_is_outcome_unknown(sleeps: list[float]) -> None:
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve_once() -> None:
            conn, _ = listener.accept()
            with conn:
                received.append(conn.recv(65536))  # read the request, then hang up

        server = threading.Thread(target=serve_once)
        server.start()
        opts = ClientOptions(api_url=f"http://127.0.0.1:{port}", read_timeout=5.0)
        client = CoinsClient(make_http_client(opts), TOKEN_CREDS, opts, sleep=sleeps.append)
        with client, pytest.raises(OutcomeUnknownError, match="may or may not have been created"):
            client.create(KEY, 6)
        server.join(timeout=5)
    assert len(received) == 1
    assert received[0].startswith(f"POST {CREATE_PATH} ".encode())
    assert sleeps == []


# -- fresh connections for creates and token requests ---------------------------------


def test_creates_and_tokens_use_the_fresh_connection_client(sleeps: list[float]) -> None:
    pooled = Script(ok())
    fresh = Script(ok(), tokens=[token_response("access-1")])
    opts = ClientOptions(api_url=API)
    client = CoinsClient(
        make_http_client(opts, transport=httpx.MockTransport(pooled)),
        OAUTH_CREDS,
        opts,
        create_http=make_http_client(opts, httpx.MockTransport(fresh), keepalive=False),
        sleep=sleeps.append,
    )
    with client:
        client.create(KEY, 6)
        client.get("WCC817428")
        client.update("WCC817428", 6)
    assert [(r.method, r.url.path) for r in fresh.requests] == [("POST", CREATE_PATH)]
    assert fresh.requests[0].headers["Connection"] == "close"
    assert len(fresh.token_requests) == 1
    assert fresh.token_requests[0].headers["Connection"] == "close"
    assert [r.method for r in pooled.requests] == ["GET", "PATCH"]
    assert pooled.token_requests == []
    assert "Connection" not in pooled.requests[0].headers or (
        pooled.requests[0].headers["Connection"] != "close"
    )


def test_close_closes_both_clients() -> None:
    opts = ClientOptions(api_url=API)
    http = make_http_client(opts, transport=httpx.MockTransport(Script()))
    create_http = make_http_client(opts, httpx.MockTransport(Script()), keepalive=False)
    CoinsClient(http, TOKEN_CREDS, opts, create_http=create_http).close()
    assert http.is_closed and create_http.is_closed


def test_http_client_without_keepalive_keeps_no_idle_connection() -> None:
    opts = ClientOptions(api_url=API, max_connections=8)
    with make_http_client(opts) as pooled, make_http_client(opts, keepalive=False) as fresh:
        pool = pooled._transport._pool  # type: ignore[attr-defined]
        assert (pool._max_connections, pool._max_keepalive_connections) == (8, 8)
        # one connection per request, closed after it (tests/test_fresh_transport.py)
        assert isinstance(fresh._transport, FreshTransport)
        assert fresh.follow_redirects is False


def answer_then_linger(linger: float) -> Behaviour:
    """A server behaviour: answer one request and then hang up a moment later, without
    ever saying ``Connection: close``: a request sent meanwhile on that kept-alive
    connection is lost unread."""

    def behave(conn: socket.socket, received: Received) -> None:
        if received.method == "POST":
            config = {"coinConfigId": f"WCC{received.number}", **json.loads(received.body)}
        else:
            config = payload(cid=received.path.rsplit("/", 1)[1])
        answer = json.dumps(envelope(config)).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n".encode()
            + answer
        )
        time.sleep(linger)  # long enough for the client to reuse the connection

    return behave


@pytest.fixture
def closing_server() -> Iterator[RawServer]:
    server = RawServer(answer_then_linger(0.05))
    yield server
    server.close()


def test_real_server_closing_after_each_response_makes_no_create_uncertain(
    closing_server: RawServer, sleeps: list[float]
) -> None:
    opts = ClientOptions(api_url=closing_server.url, read_timeout=5.0)
    client = CoinsClient(
        make_http_client(opts),
        TOKEN_CREDS,
        opts,
        create_http=make_http_client(opts, keepalive=False),
        sleep=sleeps.append,
    )
    uncertain = 0
    with client:
        for _ in range(50):
            try:
                remote = client.create(KEY, 6)
            except OutcomeUnknownError:
                uncertain += 1
                continue
            # Reads between creates leave kept-alive connections in the pool; a GET on a
            # dead one is simply retried.
            assert client.get(remote.coin_config_id).coin_config_id == remote.coin_config_id
    assert uncertain == 0
    assert closing_server.count("POST", CREATE_PATH) == 50


def test_real_server_closing_after_each_response_breaks_reused_creates(
    closing_server: RawServer, sleeps: list[float]
) -> None:
    # The control: without create_http, a create after a GET goes out on the GET's
    # kept-alive connection, and this server makes it uncertain although it never got it.
    opts = ClientOptions(api_url=closing_server.url, read_timeout=5.0)
    client = CoinsClient(make_http_client(opts), TOKEN_CREDS, opts, sleep=sleeps.append)
    uncertain = 0
    with client:
        for _ in range(10):
            client.get("WCC1")
            try:
                client.create(KEY, 6)
            except OutcomeUnknownError as e:
                assert "may or may not have been created" in str(e)
                uncertain += 1
    assert uncertain > 0
    assert (
        closing_server.count("POST", CREATE_PATH) == 10 - uncertain
    )  # the lost ones never arrived
