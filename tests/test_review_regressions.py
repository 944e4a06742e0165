"""Defects a review of the restructuring found: each was reproduced, then fixed."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from coins_sync.enkash import ClientOptions, CoinsClient, Credentials, make_http_client
from coins_sync.errors import AuthError, PlanFileError, SettingsError
from coins_sync.plan.saved import load_plan
from coins_sync.settings import Encryption
from tests.conftest import Invoke, write


def test_a_refused_answer_is_read_only_up_to_the_response_limit() -> None:
    """After a 401 the refused body is read before the resend; an endless one must not
    fill the memory."""
    pulled = {"bytes": 0}

    class Endless(httpx.SyncByteStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            chunk = b"x" * 65536
            while pulled["bytes"] < 32 * 2**20:  # bounded, so a regression still ends
                pulled["bytes"] += len(chunk)
                yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "tok" + "a" * 20, "expires_in": 60})
        return httpx.Response(401, stream=Endless())

    options = ClientOptions(api_url="https://coins.test", max_response_bytes=100_000, max_retries=0)
    credentials = Credentials(
        client_id="id", client_secret="s" * 16, username="u", password="p" * 8
    )
    with (
        CoinsClient(
            make_http_client(options, transport=httpx.MockTransport(handler)), credentials, options
        ) as client,
        pytest.raises(AuthError),
    ):
        client.get("WCC1")
    # two 401 answers (the first and the resend), each cut at the limit plus a chunk
    assert pulled["bytes"] <= 2 * (100_000 + 65536)


def test_messages_name_the_encryption_as_it_is_written_in_the_settings(
    project: Path, invoke: Invoke
) -> None:
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\napi_url = "https://coins.test"\n'
        'encryption = "aes-128-ecb"\n',
    )
    write(project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: E\n    amount: 1\n")
    done = invoke("apply", "--yes", env={"COINS_SYNC_TOKEN": "a-token-of-some-length"})
    assert done.exit_code == 1
    assert "encryption 'aes-128-ecb' needs COINS_SYNC_CLIENT_SECRET" in done.output
    assert "Encryption." not in done.output
    client = CoinsClient(
        make_http_client(ClientOptions(api_url="https://coins.test")),
        Credentials(token="t0ken-abcdef", client_secret="s" * 16),
        ClientOptions(api_url="https://coins.test", encryption=Encryption.AES_128_ECB),
    )
    with client:
        assert "encryption='aes-128-ecb'" in repr(client)


@pytest.mark.parametrize("url", ["https://coins.test:abc", "https://127.0.0.1:99999"])
def test_a_bad_port_is_a_settings_error(url: str, project: Path, invoke: Invoke) -> None:
    with pytest.raises(SettingsError, match="is not a valid URL"):
        ClientOptions(api_url=url)
    write(project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: E\n    amount: 1\n")
    done = invoke("plan", "--refresh", "--api-url", url, env={"COINS_SYNC_TOKEN": "t0ken-abcdef"})
    assert done.exit_code == 1
    assert "is not a valid URL" in done.output
    assert "Traceback" not in done.output


@pytest.fixture
def saved(project: Path, invoke: Invoke) -> Path:
    write(project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: E\n    amount: 2\n")
    assert invoke("plan", "--out", "p.json").exit_code == 0
    return project / "p.json"


def edit(path: Path, change: object) -> None:
    data = json.loads(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


def test_a_saved_plan_source_with_a_non_ascii_digit_is_no_crash(saved: Path) -> None:
    edit(saved, lambda d: d["changes"][0].__setitem__("source", "configs/acme.yaml:²"))
    assert load_plan(saved).changes[0].source is None


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("changes/0/amount", lambda d: d["changes"][0].__setitem__("amount", 2.0)),
        ("managed", lambda d: d.__setitem__("managed", 0.0)),
        ("state/serial", lambda d: d["state"].__setitem__("serial", 0.0)),
    ],
)
def test_a_saved_plan_number_must_be_a_json_whole_number(
    saved: Path, invoke: Invoke, where: str, change: object
) -> None:
    edit(saved, change)
    with pytest.raises(PlanFileError, match=f"{where}: .* is not a whole number"):
        load_plan(saved)
    done = invoke(
        "apply",
        str(saved),
        "--yes",
        "--api-url",
        "http://127.0.0.1:9",
        env={"COINS_SYNC_TOKEN": "t0ken-abcdef"},
    )
    assert done.exit_code == 1 and "is not a whole number" in done.output


def test_a_deeply_nested_state_elsewhere_in_the_project_is_no_crash(
    project: Path, invoke: Invoke, fast_retries: None
) -> None:
    """A new state looks for states of the same name elsewhere; one it cannot parse is
    not one (it is skipped), whatever its nesting."""
    write(project / "configs/acme.yaml", "companyId: ACME\nrules:\n  - event: E\n    amount: 2\n")
    elsewhere = project / "sub" / "state" / "default.json"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    done = invoke(
        "apply",
        "--yes",
        "--api-url",
        "http://127.0.0.1:9",
        env={"COINS_SYNC_TOKEN": "t0ken-abcdef"},
    )
    assert "Traceback" not in done.output and "RecursionError" not in done.output, done.output
    assert "cannot reach the API at 127.0.0.1:9" in done.output
