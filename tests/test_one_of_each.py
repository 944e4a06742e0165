"""Issue 11 "one of each": one list of variable names, one URL check."""

from __future__ import annotations

import re

import pytest

from coins_sync import envvars
from coins_sync.enkash import ClientOptions
from coins_sync.errors import SettingsError
from coins_sync.settings import check_api_url
from tests.conftest import REPO

NAME = re.compile(r"COINS_SYNC_[A-Z_]*[A-Z]")


def test_every_variable_the_package_names_is_in_the_one_list_and_the_readme() -> None:
    named = set()
    for path in (REPO / "coins_sync").rglob("*.py"):
        if path.name != "envvars.py":
            named |= set(NAME.findall(path.read_text("utf-8")))
    # names in prose (help texts, messages) must be real variables too
    assert named <= set(envvars.ALL), named - set(envvars.ALL)
    readme = (REPO / "README.md").read_text("utf-8")
    assert [v for v in envvars.ALL if v not in readme] == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://coins.example.com", "is not an http(s) URL"),
        ("https://", "is not an http(s) URL"),
        ("https://user:hunter2@coins.example.com", "must not contain a user name"),
        ("https://coins.example.com/api?x=1", "must not have a query"),
        ("https://coins.example.com/api#top", "must not have a query"),
        ("http://coins.example.com", "plain http to a non-loopback host"),
        ("https://[::1", "is not a valid URL"),
    ],
)
def test_one_url_check_for_settings_and_client(url: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        check_api_url(url, allow_insecure_http=False)
    assert "hunter2" not in str(caught.value)
    if "plain http" not in message:  # the client leaves that policy to the settings
        with pytest.raises(SettingsError, match=re.escape(message)):
            ClientOptions(api_url=url)


def test_good_urls_pass_without_their_trailing_slash() -> None:
    assert check_api_url("https://coins.example.com/api/", allow_insecure_http=False) == (
        "https://coins.example.com/api"
    )
    assert check_api_url("http://127.0.0.1:8765", allow_insecure_http=False) == (
        "http://127.0.0.1:8765"
    )
    assert check_api_url("http://coins.internal", allow_insecure_http=True) == (
        "http://coins.internal"
    )
