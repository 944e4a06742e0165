"""The client's retry policy, case by case, against httpx.MockTransport.

GET and PATCH are idempotent and are retried on 408, 429 and 5xx; a create is retried
only when it surely was not processed. Each case counts the requests the server saw
and the waits the client slept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.enkash import CREATE_PATH, ClientOptions, CoinsClient, Credentials, make_http_client
from coins_sync.errors import ApiError, OutcomeUnknownError

API = "https://coins.test"
KEY = RuleKey("CEKEKCARDS", "DEFAULT", "MEAL_CARD_PAYMENT")
ID = "WCC817428"


def good(request: httpx.Request) -> httpx.Response:
    payload = {"coinConfigId": ID, **KEY.as_dict(), "amount": 6}
    return httpx.Response(
        200, json={"payload": payload, "response_code": 0, "response_message": "Success"}
    )


class Server:
    """Answers each request with the next scripted status (then 200), and counts them."""

    def __init__(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.statuses = list(statuses)
        self.headers = headers or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.statuses:
            status = self.statuses.pop(0)
            return httpx.Response(status, headers=self.headers, json={"response_message": "slow"})
        return good(request)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client_for(sleeps: list[float]) -> Iterator[Callable[..., CoinsClient]]:
    made: list[CoinsClient] = []

    def make(server: Server, **options: Any) -> CoinsClient:
        opts = ClientOptions(api_url=API, **options)
        http = make_http_client(opts, transport=httpx.MockTransport(server))
        client = CoinsClient(http, Credentials(token="t0ken"), opts, sleep=sleeps.append)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def call(client: CoinsClient, method: str) -> int:
    if method == "GET":
        return client.get(ID).amount
    return client.update(ID, 6).amount


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_408_on_get_and_patch_is_retried_then_succeeds(
    client_for: Callable[..., CoinsClient], sleeps: list[float], method: str
) -> None:
    server = Server(408, 408)
    assert call(client_for(server), method) == 6
    assert [r.method for r in server.requests] == [method] * 3
    assert len(sleeps) == 2


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_408_retries_are_bounded_and_named(
    client_for: Callable[..., CoinsClient], sleeps: list[float], method: str
) -> None:
    server = Server(*[408] * 10)
    with pytest.raises(ApiError, match="gave up after 3 attempts; last: HTTP 408: slow") as caught:
        call(client_for(server, max_retries=2), method)
    assert type(caught.value) is ApiError
    assert caught.value.status == 408
    assert len(server.requests) == 3
    assert len(sleeps) == 2


def test_408_on_a_create_is_not_retried(
    client_for: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    """A create is resent only when it surely was not processed; 408 is final."""
    server = Server(408)
    with pytest.raises(ApiError, match="HTTP 408: slow") as caught:
        client_for(server).create(KEY, 6)
    assert caught.value.status == 408
    assert [r.url.path for r in server.requests] == [CREATE_PATH]
    assert sleeps == []


@pytest.mark.parametrize("status", [400, 404, 409, 422])
@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_other_4xx_on_get_and_patch_are_final(
    client_for: Callable[..., CoinsClient], sleeps: list[float], status: int, method: str
) -> None:
    server = Server(status)
    with pytest.raises(ApiError) as caught:
        call(client_for(server), method)
    assert caught.value.status == status
    assert len(server.requests) == 1
    assert sleeps == []


def test_503_retry_after_is_honoured_on_get(
    client_for: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    server = Server(503, headers={"Retry-After": "7"})
    assert client_for(server).get(ID).amount == 6
    assert sleeps == [7.0]


def test_500_retry_after_is_not_taken_as_a_wait(
    client_for: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    """Retry-After counts on 429 and 503 only; a 500 waits the jittered backoff."""
    server = Server(500, headers={"Retry-After": "7"})
    assert client_for(server, backoff_initial=0.1, backoff_max=0.2).get(ID).amount == 6
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.2


def test_5xx_on_a_create_is_uncertain_and_not_retried(
    client_for: Callable[..., CoinsClient], sleeps: list[float]
) -> None:
    server = Server(503, headers={"Retry-After": "1"})
    with pytest.raises(OutcomeUnknownError):
        client_for(server).create(KEY, 6)
    assert len(server.requests) == 1
    assert sleeps == []
