"""Settings and options found in review: a clear error, exit 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Invoke, write
from tests.small_project import RULES


def test_lookalike_loopback_host_needs_https(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", RULES)
    result = invoke(
        "apply", "--yes", "--api-url", "http://127.evil.example/", env={"COINS_SYNC_TOKEN": "t" * 9}
    )
    assert result.exit_code == 1
    assert "use https" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("apply", "--yes", "--api-url", "http://[::1"),
        ("plan", "--state", ""),
        ("plan", "--state", "state/"),
        ("plan", "--out", "/proc/no/such/plan.json"),
    ],
)
def test_bad_options_are_clear_errors(project: Path, invoke: Invoke, args: tuple[str, ...]) -> None:
    write(project / "configs/a.yaml", RULES)
    result = invoke(*args)
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("tool = 1\n", "tool must be a table, got 1"),
        ('[tool]\n"coins-sync" = 3\n', "[tool.coins-sync] must be a table, got 3"),
        ("[tool.coins-sync]\nenvironments = 5\n", "tool.coins-sync.environments must be a table"),
        ('[tool.coins-sync]\nenvironments = "x"\n', "environments must be a table, got 'x'"),
        ("[tool.coins-sync.environments]\ndefault = 1\n", "environments.default must be a table"),
        (
            "[tool.coins-sync.environments]\ndefault = {}\nother = [1]\n",
            "tool.coins-sync.environments.other must be a table, got [1]",
        ),
    ],
)
def test_odd_pyproject_is_a_clear_error(
    project: Path, invoke: Invoke, toml: str, field: str
) -> None:
    write(project / "configs/a.yaml", RULES)
    write(project / "pyproject.toml", toml)
    for args in (("plan",), ("validate",)):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: pyproject.toml: "), result.output
        assert field in result.output


def test_settings_are_immutable_values(tmp_path: Path) -> None:
    from coins_sync.settings import load_settings

    one, two = load_settings(tmp_path), load_settings(tmp_path)
    assert one == two and hash(one) == hash(two)
    moved = one.with_overrides(configs=Path("elsewhere"))
    assert moved.configs == Path("elsewhere") and moved.state == one.state
    assert one.configs == Path("configs") and moved != one
    with pytest.raises(AttributeError):
        one.configs = Path("elsewhere")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("read_timeout = inf", "read_timeout must be more than 0 and at most 3600 seconds"),
        ("read_timeout = nan", "read_timeout must be more than 0 and at most 3600 seconds"),
        ("connect_timeout = 1e12", "connect_timeout must be more than 0 and at most 3600"),
        ("connect_timeout = 0", "connect_timeout must be more than 0"),
        ("lock_timeout = inf", "lock_timeout must be 0 to 86400 seconds"),
        ("lock_timeout = -1", "lock_timeout must be 0 to 86400 seconds"),
    ],
)
def test_a_timeout_a_socket_cannot_take_is_refused_before_anything_is_sent(
    project: Path, invoke: Invoke, setting: str, words: str
) -> None:
    # An infinite or huge timeout used to reach socket.settimeout, which raised
    # OverflowError in a worker after the create's intent was journaled: the create was
    # left uncertain although nothing was sent.
    write(project / "configs/a.yaml", RULES)
    write(
        project / "pyproject.toml",
        f'[tool.coins-sync.environments.default]\napi_url = "http://127.0.0.1:9"\n{setting}\n',
    )
    result = invoke("apply", "--yes", env={"COINS_SYNC_TOKEN": "t" * 9})
    assert result.exit_code == 1, result.output
    assert words in result.output
    assert not (project / "state").exists()


def test_a_lock_timeout_longer_than_a_day_is_refused(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", RULES)
    result = invoke("apply", "--yes", "--lock-timeout", "100000h")
    assert result.exit_code == 1
    assert "'100000h' is longer than 24h" in result.output
    a_day = invoke("apply", "--yes", "--lock-timeout", "24h")  # taken; no token comes next
    assert a_day.exit_code == 1 and "longer than" not in a_day.output
    assert "no api_url" in a_day.output


def test_an_api_url_whose_host_cannot_be_looked_up_is_refused(
    project: Path, invoke: Invoke
) -> None:
    # "a..b" has an empty label: no name lookup can take it (it raised UnicodeError in
    # the client, past every check, once a create was journaled).
    write(project / "configs/a.yaml", RULES)
    result = invoke(
        "apply", "--yes", "--api-url", "https://a..b/", env={"COINS_SYNC_TOKEN": "t" * 9}
    )
    assert result.exit_code == 1, result.output
    assert "has no valid host name" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e12, 0.0])
def test_the_client_refuses_a_timeout_a_socket_cannot_take(value: float) -> None:
    from coins_sync.enkash import ClientOptions
    from coins_sync.errors import SettingsError

    for name in ("connect_timeout", "read_timeout"):
        with pytest.raises(SettingsError, match=f"{name} must be more than 0"):
            ClientOptions(api_url="http://127.0.0.1:9", **{name: value})
