"""Issue 10, smaller defects: odd settings, big integers and secrets in every encoding.

Every test here goes through the CLI (CliRunner or a real process) or a public class,
and fails on the code before the fix.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from coins_sync.configs.model import RuleKey
from coins_sync.state.audit import AuditLog, AuditRecord, audit_path_for
from tests.conftest import REPO, Invoke, write

PASSWORD = "Tr0ub4dor&3 horse!"
CLIENT_ID = "coins-client"
CLIENT_SECRET = "cl1ent/s3cret+x"
BASIC = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
OAUTH_ENV = {
    "COINS_SYNC_CLIENT_ID": CLIENT_ID,
    "COINS_SYNC_CLIENT_SECRET": CLIENT_SECRET,
    "COINS_SYNC_USERNAME": "ops",
    "COINS_SYNC_PASSWORD": PASSWORD,
}
RULES = "companyId: ACME\nrules:\n  - event: MEAL\n    amount: 6\n"


def forms(secret: str) -> list[str]:
    """The encodings a secret can leak in (each must differ from the others to matter)."""
    return sorted(
        {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}, key=len, reverse=True
    )


#: Every encoding of every secret of OAUTH_ENV, and the Basic value they make.
LEAKS = [*forms(PASSWORD), *forms(CLIENT_SECRET), BASIC]


def assert_clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} leaked into:\n{text}"


# -- settings: a non-table on the settings path --------------------------------------


def test_non_table_tool_fails_in_a_real_process(project: Path) -> None:
    write(project / "configs/a.yaml", RULES)
    write(project / "pyproject.toml", "tool = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "coins_sync", "plan"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 1, done
    assert done.stderr == "Error: pyproject.toml: tool must be a table, got 1\n"
    assert done.stdout == ""


# -- integers too long for int() ------------------------------------------------------

HUGE = "9" * 5000


@pytest.mark.parametrize(
    ("text", "where", "shown"),
    [
        (f"companyId: ACME\nrules:\n  - event: A\n    amount: {HUGE}\n", "4:13", "9999"),
        (f"companyId: ACME\nrules:\n  - {{event: A, amount: {HUGE}}}\n", "3:24", "9999"),
        (f"companyId: ACME\nrules:\n  - event: A\n    amount: 0x{'f' * 5000}\n", "4:13", "0xff"),
        (f"companyId: ACME\nrules: []\n? {HUGE}\n: 1\n", "3:3", "9999"),
        (f"companyId: {HUGE}\nrules: [1]\n", "1:12", "9999"),
        (f"companyId: ACME\nrules:\n  - event: A\n    amount: {'1_' * 3000}1\n", "4:13", "1_1_"),
    ],
    ids=["block", "flow", "hex", "key", "identifier", "underscores"],
)
def test_an_integer_over_4300_digits_is_a_problem_at_its_line(
    project: Path, invoke: Invoke, text: str, where: str, shown: str
) -> None:
    write(project / "configs/big.yaml", text)
    for args in (("validate",), ("validate", "--format", "json"), ("plan",)):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert HUGE not in result.output  # never echoed in full
    lines = invoke("validate").output.splitlines()
    assert lines[0].startswith(f"configs/big.yaml:{where}: integer {shown}"), lines
    assert "characters long; at most 100 are accepted" in lines[0]


def test_a_100_character_integer_is_still_read(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", RULES.replace("amount: 6", "amount: 1" + "0" * 99))
    result = invoke("validate")
    assert result.exit_code == 1
    assert "is above the maximum of 10000" in result.output


# -- one redaction for all output ------------------------------------------------------


@pytest.mark.parametrize("leak", LEAKS)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_validate_output_never_shows_any_encoding_of_a_secret(
    project: Path, invoke: Invoke, leak: str, fmt: str
) -> None:
    # an invalid identifier is echoed in the problem message
    write(project / "configs/a.yaml", f"companyId: {json.dumps(leak)}\nrules: []\n")
    result = invoke("validate", "--format", fmt, env=OAUTH_ENV)
    assert result.exit_code == 1
    assert_clean(result.output)
    assert "***" in result.output
    if fmt == "json":
        problem = json.loads(result.output)["problems"][0]
        assert (problem["path"], problem["line"]) == ("configs/a.yaml", 1)


def test_json_escaped_secret_is_scrubbed(project: Path, invoke: Invoke) -> None:
    secret = 'pa"ss\\word\u00e9'
    write(project / "configs/a.yaml", f"companyId: {json.dumps(secret)}\nrules: []\n")
    result = invoke("validate", "--format", "json", env={"COINS_SYNC_TOKEN": secret})
    assert result.exit_code == 1
    assert json.dumps(secret)[1:-1] not in result.output
    assert "pa\\" not in result.output and "***" in result.output


@pytest.mark.parametrize(
    ("secret", "company", "kept"),
    [
        ("ab!", "x ab! y", "x *** y"),
        ("ab!", "password=ab%21&x", "password=***&x"),
        ("z9", "tabz9 z9", "tabz9 ***"),
        ("Q", "Q-Qq Q", "***-Qq ***"),
    ],
)
def test_short_secrets_are_scrubbed_as_whole_tokens(
    project: Path, invoke: Invoke, secret: str, company: str, kept: str
) -> None:
    # the rule (see coins_sync/redact.py): a secret under 4 characters is masked where
    # it stands alone, not inside a longer word, so the rest of the output stays readable
    write(project / "configs/a.yaml", f"companyId: {json.dumps(company)}\nrules: []\n")
    result = invoke("validate", env={"COINS_SYNC_PASSWORD": secret})
    assert result.exit_code == 1
    assert f"'{kept}' is not a valid identifier" in result.output


def test_usage_errors_are_scrubbed(project: Path, invoke: Invoke) -> None:
    result = invoke("state", "rm", PASSWORD, "--yes", env=OAUTH_ENV)
    assert result.exit_code == 1
    assert "Invalid value for KEY" in result.output
    assert_clean(result.output)


def test_audit_messages_are_scrubbed(tmp_path: Path) -> None:
    state = tmp_path / "state/prod.json"
    audit = AuditLog.beside(state, "prod", {**OAUTH_ENV, "GITHUB_ACTOR": "ci", "GITHUB_SHA": "x"})
    echoed = f"HTTP 400: username=ops&password={quote_plus(PASSWORD)} Basic {BASIC}"
    audit.record(AuditRecord("create", RuleKey("A", "B", "C"), "failed", None, 6, None, echoed))
    audit.close()
    text = audit_path_for(state).read_text()
    assert_clean(text)
    assert json.loads(text)["message"] == "HTTP 400: username=ops&password=*** Basic ***"


class _EchoHandler(BaseHTTPRequestHandler):
    """A token endpoint (or proxy) that echoes the request in its error answer."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        said = f"bad request: {body} auth={self.headers.get('Authorization')}"
        if self.server.json_answer:  # type: ignore[attr-defined]
            data = json.dumps({"error": "invalid_request", "error_description": said}).encode()
        else:
            data = said.encode()
        self.send_response(400)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=[True, False], ids=["json", "text"])
def echo_server(request: pytest.FixtureRequest) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.json_answer = request.param  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_token_endpoint_echo_reaches_neither_output_nor_audit(
    project: Path, invoke: Invoke, echo_server: str
) -> None:
    write(project / "configs/a.yaml", RULES)
    result = invoke("-vv", "apply", "--yes", "--api-url", echo_server, env=OAUTH_ENV)
    assert result.exit_code == 1
    assert "token endpoint refused (HTTP 400" in result.output
    audit = (project / "state/default.audit.jsonl").read_text()
    assert json.loads(audit)["outcome"] == "failed"
    for text in (result.output, audit):
        assert_clean(text)
        assert "grant_type" not in text and "bad request" not in text  # the body, not copied
