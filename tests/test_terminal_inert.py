"""Terminal and CI-log output is inert: file names, server messages and state values
can neither act on a terminal nor start a GitHub workflow command (console.inert)."""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from coins_sync import console
from coins_sync.plan.render import styled_symbols
from tests.conftest import Invoke, write

#: What GitHub's runner reads as a command: ``::name`` after leading white space, and
#: the legacy ``##[name`` anywhere in a line.
COMMAND = re.compile(r"^\s*::|##\[", re.MULTILINE)
HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}
HOSTILE_NAME = "a\n::error title=pwned::boom\r\x1b[2J\x1b]0;t\x07 ##[error]x \u202egnp.yaml"


def assert_inert(text: str) -> None:
    assert not COMMAND.search(text), text
    shown = {ch for ch in text if ch not in "\n\t" and unicodedata.category(ch) in HIDDEN}
    assert not shown, text


@settings(max_examples=400, deadline=None)
@given(
    st.text(
        st.sampled_from(
            [
                "\n",
                "\r",
                "\t",
                " ",
                "\u2003",
                ":",
                "#",
                "[",
                "e",
                "\x1b",
                "\x85",
                "\u2028",
                "\ud800",
                "\u200b",
            ]
        ),
        max_size=30,
    )
    | st.text(max_size=40)
)
def test_inert_text_starts_no_command_and_hides_nothing(text: str) -> None:
    cleaned = console.inert(text)
    assert_inert(cleaned)
    assert cleaned.count("\n") == text.count("\n")  # lines are kept, never joined


def test_inert_escapes_readably_and_leaves_plain_text_alone() -> None:
    assert console.inert("plain: ok\n\tnext") == "plain: ok\n\tnext"
    assert console.inert("x\x1b[2Jy\rz") == "x\\x1b[2Jy\\rz"
    assert console.inert("  ::error::boom") == "  \\x3a:error::boom"
    assert console.inert("ok ##[error]x") == "ok ##\\x5b" + "error]x"
    assert console.inert("\u202e\ud800") == "\\u202e\\ud800"


def test_plan_shows_a_hostile_file_name_escaped(project: Path, invoke: Invoke) -> None:
    write(
        project / "configs" / HOSTILE_NAME,
        "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 6\n",
    )
    result = invoke("plan")
    assert result.exit_code == 0, result.output
    assert_inert(result.output)
    assert "\\x3a:error title=pwned::boom\\r\\x1b[2J" in result.output


def test_validate_problem_with_a_hostile_file_name_is_escaped(
    project: Path, invoke: Invoke
) -> None:
    write(project / "configs" / HOSTILE_NAME, "companyId: [\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert_inert(result.output)
    assert "\\u202egnp.yaml" in result.output


def test_coloured_plan_keeps_only_its_own_colours() -> None:
    plus = next(s for s in styled_symbols() if "+" in s)
    text = f"  {plus} ACME/DEFAULT/MEAL  amount 6  configs/\x1b[8mhidden.yaml:3\n"
    shown = console.safe(text, keep=styled_symbols())
    assert plus in shown
    assert "configs/\\x1b[8mhidden.yaml:3" in shown
    assert shown.count("\x1b") == plus.count("\x1b")


def test_log_lines_are_inert() -> None:
    console.setup_logging(0)
    stream = io.StringIO()
    handler = logging.getLogger("coins_sync").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logging.getLogger("coins_sync.test").warning("server said %s", "x\n::error::boom\x1b[2J")
    assert_inert(stream.getvalue())
    assert "\\x1b[2J" in stream.getvalue()


def test_an_error_message_quoting_a_value_is_escaped(project: Path, invoke: Invoke) -> None:
    # the same funnel carries a server's message in an `Error:` line
    write(
        project / "state/default.json", '{"version": 1, "lineage": "l", "serial": 1, "entries": []}'
    )
    result = invoke("state", "rm", "A\x1b[2J/B\u202e/C\n::error::x", "--yes")
    assert result.exit_code == 1
    assert_inert(result.output)
    assert "A\\x1b[2J/B\\u202e/C" in result.output
