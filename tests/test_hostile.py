"""Hostile input and security: clear errors, bounded resources, no secret anywhere."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coins_sync.errors import SettingsError
from coins_sync.sandbox import SandboxOptions, SandboxServer
from coins_sync.settings import Settings
from tests.conftest import REPO, SAMPLE_RULES, Invoke, write

GOOD = SAMPLE_RULES


def test_60_mb_config_is_refused_fast_in_bounded_memory(project: Path) -> None:
    big = project / "configs" / "huge.yaml"
    with open(big, "wb") as handle:
        handle.write(b"companyId: ACME\nrules:\n")
        chunk = b"  - event: E\n    amount: 1\n" * 40_000
        while handle.tell() < 60 * 1024 * 1024:
            handle.write(chunk)
    proc = subprocess.Popen(
        [sys.executable, "-m", "coins_sync", "validate"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 1, output
    assert "configs/huge.yaml:1:1: file is" in output and "byte limit" in output
    assert usage.ru_maxrss < 120 * 1024  # KiB: the file was never read into memory
    assert "Traceback" not in output


def test_hundreds_of_mutated_configs_in_one_run(project: Path, invoke: Invoke) -> None:
    rng = random.Random(20261126)
    for index in range(300):
        data = bytearray(GOOD.replace(b"CEKEKCARDS", b"C%03d" % index))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            op = rng.choice(("flip", "insert", "delete"))
            if op == "flip":
                data[pos] = rng.randrange(256)
            elif op == "insert":
                data.insert(pos, rng.randrange(256))
            else:
                del data[pos]
        write(project / f"configs/m{index:03d}.yaml", bytes(data))
    result = invoke("validate")
    assert result.exit_code == 1  # this seed damages some files beyond repair
    *lines, summary = result.output.splitlines()
    assert summary.startswith("invalid: ")
    problems = [line for line in lines if not line.startswith(" ")]  # not continuations
    assert problems and all(re.match(r"configs/m\d{3}\.yaml:\d+:\d+: \S", p) for p in problems)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['echo pwned']",
        "!!python/name:os.system",
        "!!python/object/new:subprocess.Popen [['true']]",
        "!custom {a: 1}",
    ],
)
def test_malicious_tags_are_refused(project: Path, invoke: Invoke, tag: str) -> None:
    write(project / "configs/evil.yaml", f"companyId: ACME\nrules:\n  - event: {tag}\n")
    result = invoke("validate")
    assert result.exit_code == 1
    assert "configs/evil.yaml:3:12: YAML error:" in result.output


def test_garbled_journal_keeps_complete_records(project: Path, invoke: Invoke) -> None:
    write(
        project / "state/default.json",
        '{"version": 1, "lineage": "L1", "serial": 1, "entries": []}',
    )
    record = (
        '{"kind":"%s","lineage":"L1","companyId":"ACME","configuration":"DEFAULT",'
        '"event":"%s","amount":1%s}\n'
    )
    journal = (
        record % ("intent", "A", "")
        + record % ("result", "A", ',"outcome":"created","coinConfigId":"WCC1"')
        + "\x00\x00garbage\n"
        + record % ("result", "B", ',"outcome":"created","coinConfigId":"WCC2"')
        + '{"kind":"intent","lin'
    )
    write(project / "state/default.journal.jsonl", journal)
    result = invoke("state", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "state/default.journal.jsonl:3: garbled record" in result.output
    assert "state/default.journal.jsonl:5: torn last record" in result.output
    assert '"coinConfigId": "WCC1"' in result.output
    assert '"coinConfigId": "WCC2"' in result.output


def test_truncated_state_is_refused_untouched(project: Path, invoke: Invoke) -> None:
    path = write(project / "state/default.json", '{"version": 1, "lineage": "L", "serial"')
    before = path.read_bytes()
    for args in (("plan",), ("state", "list"), ("state", "rm", "A/B/C", "--yes")):
        result = invoke(*args)
        assert result.exit_code == 1
        assert "Error: state/default.json:1:40: corrupt or truncated state" in result.output
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://coins.example.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:9", True),
        ("http://[::1]:9", True),
        ("http://coins.example.com", False),
        ("http://10.0.0.5", False),
        ("ftp://coins.example.com", False),
    ],
)
def test_plain_http_only_to_loopback(url: str, allowed: bool) -> None:
    settings = Settings(api_url=url)
    if allowed:
        assert settings.require_api_url() == url
    else:
        with pytest.raises(SettingsError):
            settings.require_api_url()


def test_insecure_http_can_be_allowed_per_environment(project: Path, invoke: Invoke) -> None:
    write(project / "configs/a.yaml", GOOD.decode())
    write(
        project / "pyproject.toml",
        '[tool.coins-sync.environments.default]\napi_url = "http://coins.internal"\n',
    )
    result = invoke("apply", "--yes", env={"COINS_SYNC_TOKEN": "x" * 12})
    assert result.exit_code == 1
    assert "use https, or set allow_insecure_http = true" in result.output


def test_sandbox_binds_to_loopback_by_default() -> None:
    assert SandboxOptions().host == "127.0.0.1"
    with SandboxServer(SandboxOptions(port=0, token="t" * 8)) as server:
        assert server.url.startswith("http://127.0.0.1:")


def test_no_secret_in_any_output_log_or_file(project: Path, invoke: Invoke) -> None:
    secrets = {
        "COINS_SYNC_CLIENT_ID": "client-9f8e7d",
        "COINS_SYNC_CLIENT_SECRET": "s3cr3t-client-value-42",
        "COINS_SYNC_USERNAME": "ops@example.com",
        "COINS_SYNC_PASSWORD": "hunter2-password-value",
    }
    write(project / "configs/a.yaml", GOOD.decode())
    options = SandboxOptions(
        port=0,
        client_id=secrets["COINS_SYNC_CLIENT_ID"],
        client_secret=secrets["COINS_SYNC_CLIENT_SECRET"],
        username=secrets["COINS_SYNC_USERNAME"],
        password=secrets["COINS_SYNC_PASSWORD"],
    )
    outputs = []
    with SandboxServer(options) as server:
        url = ("--api-url", server.url)
        for args in (
            ("-vv", "apply", "--yes", *url),
            ("-vv", "plan", "--refresh", *url),
            ("plan", "--out", "plan.json"),
            ("report", "--format", "json"),
            ("state", "list", "--format", "json"),
        ):
            result = invoke(*args, env=secrets)
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
        wrong = {**secrets, "COINS_SYNC_PASSWORD": "wrong-password-value"}
        refused = invoke("-vv", "plan", "--refresh", *url, env=wrong)
        assert refused.exit_code == 1
        outputs.append(refused.output)
        assert repr(options).count("s3cr3t") == 0
    files = [p for p in project.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".audit.jsonl") for p in files)
    texts = outputs + [p.read_bytes().decode("utf-8", "replace") for p in files]
    for value in [*secrets.values(), "wrong-password-value"]:
        if value == secrets["COINS_SYNC_CLIENT_ID"] or value == secrets["COINS_SYNC_USERNAME"]:
            continue  # identifiers, not secrets; still never printed, but not required
        assert not any(value in text for text in texts), value
