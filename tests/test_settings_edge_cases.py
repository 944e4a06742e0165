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
