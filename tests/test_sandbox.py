"""The sandbox server speaks SPEC §1 over real loopback HTTP, faults included."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from coins_sync.crypto import decrypt_to_text, encrypt_json_text, key_from_secret
from coins_sync.errors import SettingsError
from coins_sync.sandbox import SandboxOptions, SandboxServer

CREATE = "/api/v0/enkash-coins/create-coins-config"
BODY = {
    "configuration": "DEFAULT",
    "companyId": "CEKEKCARDS",
    "event": "MEAL_CARD_PAYMENT",
    "amount": 6,
}


def oauth_options(token_ttl: int = 3600) -> SandboxOptions:
    return SandboxOptions(
        port=0,
        client_id="cid",
        client_secret="s3cret",
        username="ops",
        password="pw",
        token_ttl=token_ttl,
    )


def client(srv: SandboxServer, token: str | None = "t0k") -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=srv.url, headers=headers, timeout=5.0, trust_env=False)


def token_request(c: httpx.Client, password: str = "pw") -> httpx.Response:
    return c.post(
        "/oauth/token",
        data={"username": "ops", "password": password, "grant_type": "password", "clientId": "cid"},
        auth=("cid", "s3cret"),
    )


def test_create_get_patch_round_trip_uses_the_envelope() -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        created = c.post(CREATE, json=BODY)
        assert created.status_code == 200
        body = created.json()
        config_id = body["payload"]["coinConfigId"]
        assert config_id.startswith("WCC") and len(config_id) == 9 and config_id[3:].isdigit()
        assert body == {
            "payload": {"coinConfigId": config_id, **BODY},
            "response_code": 0,
            "response_message": "Success",
        }

        got = c.get(f"/api/v0/enkash-coins/{config_id}")
        assert got.status_code == 200
        assert got.json() == body

        patched = c.patch(f"/api/v0/enkash-coins/{config_id}", json={"amount": 9})
        assert patched.status_code == 200
        assert patched.json()["payload"] == {"coinConfigId": config_id, **BODY, "amount": 9}
        assert c.get(f"/api/v0/enkash-coins/{config_id}").json()["payload"]["amount"] == 9
        assert srv.stats["creates"] == 1 and srv.stats["patches"] == 1
        assert srv.stats["gets"] == 2


def test_duplicate_create_makes_a_second_config() -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        first = c.post(CREATE, json=BODY).json()["payload"]["coinConfigId"]
        second = c.post(CREATE, json=BODY).json()["payload"]["coinConfigId"]
        assert first != second
        assert [cfg["coinConfigId"] for cfg in srv.configs()] == [first, second]


def test_unknown_config_is_404_with_envelope() -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        for response in (
            c.get("/api/v0/enkash-coins/WCC999999"),
            c.patch("/api/v0/enkash-coins/WCC999999", json={"amount": 1}),
        ):
            assert response.status_code == 404
            assert response.json() == {
                "payload": None,
                "response_code": 1,
                "response_message": "Coins config not found",
            }
        unknown = c.get("/nowhere")
        assert unknown.status_code == 404 and unknown.json()["response_code"] == 1


@pytest.mark.parametrize("amount", [6.0, "6", True, -1, None])
def test_create_rejects_an_amount_that_is_not_a_non_negative_integer(amount: Any) -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        response = c.post(CREATE, json={**BODY, "amount": amount})
        assert response.status_code == 400
        assert response.json()["response_code"] == 1
        assert "amount" in response.json()["response_message"]
        assert srv.configs() == []


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in BODY.items() if k != "event"},
        {**BODY, "companyId": ""},
        {**BODY, "extra": 1},
        [BODY],
    ],
)
def test_create_rejects_missing_empty_or_unknown_fields(body: Any) -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        response = c.post(CREATE, json=body)
        assert response.status_code == 400 and response.json()["response_code"] == 1
        assert srv.configs() == []


def test_patch_rejects_unknown_fields_and_bad_types() -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        config_id = c.post(CREATE, json=BODY).json()["payload"]["coinConfigId"]
        for body in ({"colour": "red"}, {"amount": 1.5}, {}):
            response = c.patch(f"/api/v0/enkash-coins/{config_id}", json=body)
            assert response.status_code == 400
        assert srv.configs()[0]["amount"] == 6


def test_malformed_json_is_400_and_the_connection_stays_usable() -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        bad = c.post(CREATE, content=b'{"amount": ', headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
        assert bad.json()["response_message"] == "Malformed JSON body"
        assert c.post(CREATE, json=BODY).status_code == 200


def test_oversized_body_is_413() -> None:
    with (
        SandboxServer(SandboxOptions(port=0, token="t0k", max_body=64)) as srv,
        client(srv) as c,
    ):
        response = c.post(CREATE, json={**BODY, "event": "X" * 200})
        assert response.status_code == 413
        assert srv.configs() == []


def test_requests_without_or_with_a_wrong_token_are_401() -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv:
        with client(srv, token=None) as anonymous:
            response = anonymous.post(CREATE, json=BODY)
            assert response.status_code == 401
            assert response.json() == {
                "payload": None,
                "response_code": 1,
                "response_message": "Unauthorized",
            }
        with client(srv, token="wrong") as wrong:
            assert wrong.post(CREATE, json=BODY).status_code == 401
            # The refused body was drained, so keep-alive still works on this connection.
            listed = wrong.get("/_sandbox/configs", headers={"Authorization": "Bearer t0k"})
            assert listed.json() == []
        assert srv.configs() == []


def test_without_any_credentials_everything_is_refused() -> None:
    with SandboxServer(SandboxOptions(port=0)) as srv, client(srv, token="anything") as c:
        assert c.post(CREATE, json=BODY).status_code == 401
        assert token_request(c).status_code == 401


def test_oauth_grant_issues_a_token_that_the_api_accepts() -> None:
    with SandboxServer(oauth_options(token_ttl=120)) as srv:
        with client(srv, token=None) as c:
            grant = token_request(c)
            assert grant.status_code == 200
            answer = grant.json()
            assert answer["token_type"] == "bearer" and answer["expires_in"] == 120
            access = answer["access_token"]
        with client(srv, token=access) as c:
            assert c.post(CREATE, json=BODY).status_code == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_issued_tokens_expire_after_token_ttl_seconds() -> None:
    clock = FakeClock()
    options = dataclasses.replace(oauth_options(token_ttl=120), clock=clock)
    with SandboxServer(options) as srv:
        with client(srv, token=None) as c:
            access = token_request(c).json()["access_token"]
        with client(srv, token=access) as c:
            assert c.get("/api/v0/enkash-coins/WCC000000").status_code == 404
            clock.now += 119.9
            assert c.get("/api/v0/enkash-coins/WCC000000").status_code == 404
            clock.now += 0.1
            assert c.get("/api/v0/enkash-coins/WCC000000").status_code == 401


def test_three_refused_token_requests_lock_the_account() -> None:
    with SandboxServer(oauth_options()) as srv, client(srv, token=None) as c:
        for _ in range(3):
            refused = token_request(c, password="nope")
            assert refused.status_code == 401
            assert refused.json() == {
                "error": "invalid_grant",
                "error_description": "Bad credentials",
            }
        locked = token_request(c)
        assert locked.status_code == 401
        assert "account locked" in locked.json()["error_description"]


def test_wrong_basic_secret_counts_as_a_failed_attempt() -> None:
    with SandboxServer(oauth_options()) as srv, client(srv, token=None) as c:
        form = {"username": "ops", "password": "pw", "grant_type": "password", "clientId": "cid"}
        for _ in range(3):
            assert c.post("/oauth/token", data=form, auth=("cid", "bad")).status_code == 401
        assert "account locked" in token_request(c).json()["error_description"]


def test_encrypted_bodies_round_trip() -> None:
    options = SandboxOptions(port=0, token="t0k", client_secret="s3cret", encryption=True)
    key = key_from_secret("s3cret")
    with SandboxServer(options) as srv, client(srv) as c:
        response = c.post(CREATE, json={"request": encrypt_json_text(json.dumps(BODY), key)})
        assert response.status_code == 200
        wire = response.json()
        assert set(wire) == {"request"}
        envelope = json.loads(decrypt_to_text(wire["request"], key))
        assert envelope["response_code"] == 0
        assert envelope["payload"] == {"coinConfigId": envelope["payload"]["coinConfigId"], **BODY}

        plain = c.post(CREATE, json=BODY)
        assert plain.status_code == 400
        garbage = c.post(CREATE, json={"request": base64.b64encode(b"x" * 16).decode()})
        assert garbage.status_code == 400
        assert json.loads(decrypt_to_text(garbage.json()["request"], key))["response_code"] == 1
        assert len(srv.configs()) == 1


def test_aes_helpers_match_the_documented_scheme() -> None:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = key_from_secret("s3cret")
    assert len(key) == 16
    padder = padding.PKCS7(128).padder()
    padded = padder.update(b'{"a":1}') + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    expected = base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()
    assert encrypt_json_text('{"a":1}', key) == expected
    assert decrypt_to_text(expected, key) == '{"a":1}'


def test_fail_before_stores_nothing() -> None:
    options = SandboxOptions(port=0, token="t0k", fail_before_rate=1.0, seed=1)
    with SandboxServer(options) as srv, client(srv) as c:
        for _ in range(3):
            response = c.post(CREATE, json=BODY)
            assert response.status_code == 500
            assert response.json()["response_code"] == 1
        assert srv.configs() == []
        assert srv.stats["fail_before"] == 3


def test_fail_after_stores_but_the_client_sees_an_error_or_a_drop() -> None:
    options = SandboxOptions(port=0, token="t0k", fail_after_rate=1.0, seed=7)
    outcomes: list[str] = []
    with SandboxServer(options) as srv, client(srv) as c:
        for _ in range(8):
            try:
                response = c.post(CREATE, json=BODY)
            except httpx.RemoteProtocolError:
                outcomes.append("drop")
            else:
                assert response.status_code == 502
                outcomes.append("502")
        assert len(srv.configs()) == 8
        stats = srv.stats
        assert stats["drop"] == outcomes.count("drop")
        assert stats["fail_after"] == outcomes.count("502")
        assert stats["creates"] == 8
    assert set(outcomes) == {"drop", "502"}  # seed 7 gives both kinds


def test_rate_429_refuses_without_storing() -> None:
    with (
        SandboxServer(SandboxOptions(port=0, token="t0k", rate_429=1.0)) as srv,
        client(srv) as c,
    ):
        response = c.post(CREATE, json=BODY)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "0"
        assert srv.configs() == [] and srv.stats["429"] == 1


def test_faults_spare_reads() -> None:
    options = SandboxOptions(port=0, token="t0k", fail_rate=1.0, rate_429=1.0)
    with SandboxServer(options) as srv, client(srv) as c:
        assert c.get("/api/v0/enkash-coins/WCC100001").status_code == 404


def test_data_file_survives_a_restart(tmp_path: Path) -> None:
    data_file = tmp_path / "sandbox.json"
    options = SandboxOptions(port=0, token="t0k", data_file=data_file)
    with SandboxServer(options) as srv, client(srv) as c:
        first = c.post(CREATE, json=BODY).json()["payload"]["coinConfigId"]
        c.patch(f"/api/v0/enkash-coins/{first}", json={"amount": 7})
    saved = json.loads(data_file.read_text())
    assert set(saved) == {"next_id", "configs"} and len(saved["configs"]) == 1
    assert list(tmp_path.iterdir()) == [data_file]  # no temporary file left behind

    with SandboxServer(options) as srv, client(srv) as c:
        got = c.get(f"/api/v0/enkash-coins/{first}")
        assert got.json()["payload"] == {"coinConfigId": first, **BODY, "amount": 7}
        second = c.post(CREATE, json=BODY).json()["payload"]["coinConfigId"]
        assert second != first
        assert len(srv.configs()) == 2


def test_debug_endpoints_list_configs_and_stats_with_the_token() -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv, client(srv) as c:
        c.post(CREATE, json=BODY)
        c.post(CREATE, json=BODY)
        listed = c.get("/_sandbox/configs")
        assert listed.status_code == 200
        assert listed.json() == srv.configs() and len(listed.json()) == 2
        assert c.get("/_sandbox/stats").json()["creates"] == 2


@pytest.mark.parametrize("path", ["/_sandbox/configs", "/_sandbox/stats"])
@pytest.mark.parametrize("token", [None, "wrong"])
def test_debug_endpoints_refuse_requests_without_the_token(path: str, token: str | None) -> None:
    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv:
        with client(srv) as c:
            c.post(CREATE, json=BODY)
        with client(srv, token=token) as stranger:
            response = stranger.get(path)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json() == {
            "payload": None,
            "response_code": 1,
            "response_message": "Unauthorized",
        }


def test_latency_is_per_request_so_parallel_calls_overlap() -> None:
    options = SandboxOptions(port=0, token="t0k", latency_ms=200)
    with SandboxServer(options) as srv, client(srv) as c, ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        statuses = list(pool.map(lambda _: c.post(CREATE, json=BODY).status_code, range(8)))
        elapsed = time.monotonic() - started
    assert statuses == [200] * 8
    assert 0.2 <= elapsed < 1.0


def test_options_repr_hides_secrets() -> None:
    options = SandboxOptions(token="tok-SECRET", client_secret="cs-SECRET", password="pw-SECRET")
    assert "SECRET" not in repr(options)
    with SandboxServer(SandboxOptions(port=0, token="tok-SECRET")) as srv:
        assert "SECRET" not in repr(srv)


def test_options_from_env_reads_credentials_and_overrides_win() -> None:
    env = {
        "COINS_SYNC_TOKEN": "env-token",
        "COINS_SYNC_CLIENT_ID": "cid",
        "COINS_SYNC_CLIENT_SECRET": "",
        "COINS_SYNC_USERNAME": "ops",
        "COINS_SYNC_PASSWORD": "pw",
    }
    options = SandboxOptions.from_env(env, port=0, token="flag-token")
    assert options.token == "flag-token"
    assert (options.client_id, options.username, options.password) == ("cid", "ops", "pw")
    assert options.client_secret is None  # blank counts as unset
    assert options.port == 0


@pytest.mark.parametrize(
    "bad",
    [{"fail_rate": 1.5}, {"port": 70000}, {"latency_ms": -1}, {"encryption": True}],
)
def test_invalid_options_are_settings_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        SandboxOptions(**bad)


def test_stop_is_idempotent_and_closes_the_port() -> None:
    srv = SandboxServer(SandboxOptions(port=0, token="t0k"))
    srv.start()
    url = srv.url
    srv.stop()
    srv.stop()
    with httpx.Client(timeout=5.0, trust_env=False) as c, pytest.raises(httpx.ConnectError):
        c.get(f"{url}/_sandbox/configs")


def test_a_server_that_never_started_stops_at_once() -> None:
    SandboxServer(SandboxOptions(port=0, token="t0k")).stop()


def test_a_connection_without_a_thread_to_spare_is_served_not_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a loaded machine a handler thread may fail to start. The connection must then
    # still be answered: closed unread, it is a reset after the request was sent, which
    # a client can only book as an uncertain create although nothing was stored.
    import threading

    start = threading.Thread.start
    refused: list[str] = []

    def no_thread_for_connections(self: threading.Thread) -> None:
        if getattr(self, "_target", None) is not None and (
            self._target.__name__ == "process_request_thread"  # type: ignore[attr-defined]
        ):
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        start(self)

    with SandboxServer(SandboxOptions(port=0, token="t0k")) as srv:
        monkeypatch.setattr(threading.Thread, "start", no_thread_for_connections)
        with client(srv) as c:
            created = c.post(CREATE, json=BODY, headers={"Connection": "close"})
            read = c.get("/api/v0/enkash-coins/WCC100001")  # keep-alive: served, closed
        monkeypatch.setattr(threading.Thread, "start", start)
        with client(srv) as c:  # and the server goes on as before
            again = c.get("/api/v0/enkash-coins/WCC100001")
    assert refused  # the fault was injected
    assert created.status_code == 200
    assert read.status_code == 200 and again.status_code == 200
    assert len(srv.configs()) == 1
