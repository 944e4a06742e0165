"""``git`` as a subprocess, and the commit messages the lease writes.

Every call has a timeout, no terminal prompts and a fixed identity; what git printed on
a failure is kept short and loses any credentials a remote URL carries.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from coins_sync.errors import GitLeaseError

GIT_TIMEOUT = 120.0
_IDENTITY = {
    "GIT_AUTHOR_NAME": "coins-sync",
    "GIT_AUTHOR_EMAIL": "coins-sync@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "coins-sync",
    "GIT_COMMITTER_EMAIL": "coins-sync@users.noreply.github.com",
}
_USERINFO = re.compile(r"(://)[^/@\s]+@")
#: git's lines that say nothing about why a push failed
_NOISE = ("To ", "Done", "error: failed to push some refs", "hint: ")


def parse_trailers(message: str) -> dict[str, str]:
    """The ``Key: value`` lines of a commit message's last paragraph."""
    paragraphs = [p for p in message.strip().split("\n\n") if p.strip()]
    if not paragraphs:
        return {}
    found: dict[str, str] = {}
    for line in paragraphs[-1].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key and " " not in key:
            found[key] = value.strip()
    return found


def commit_message(subject: str, body: str, trailers: Mapping[str, str]) -> str:
    lines = "\n".join(f"{key}: {value}" for key, value in trailers.items())
    return f"{subject}\n\n{body}\n\n{lines}\n"


class Git:
    """``git`` in one repository, with a timeout, no prompts and a fixed identity."""

    def __init__(self, cwd: Path, environ: Mapping[str, str]) -> None:
        self.env = {**_IDENTITY, **environ, "GIT_TERMINAL_PROMPT": "0"}
        self.env.pop("GIT_INDEX_FILE", None)
        self.cwd = cwd

    def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        index: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        env = self.env if index is None else {**self.env, "GIT_INDEX_FILE": str(index)}
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=self.cwd,
                env=env,
                input=stdin,
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except FileNotFoundError as e:
            raise GitLeaseError("git is not installed or not on PATH") from e
        except subprocess.TimeoutExpired as e:
            raise GitLeaseError(f"git {args[0]} took longer than {GIT_TIMEOUT:g}s") from e
        if check and done.returncode != 0:
            raise GitLeaseError(f"git {args[0]} failed: {self.said(done)}")
        return done

    def out(self, *args: str, index: Path | None = None) -> str:
        return self.run(*args, index=index).stdout.decode("utf-8", "replace").strip()

    @staticmethod
    def said(done: subprocess.CompletedProcess[bytes]) -> str:
        """What git printed on failure, without credentials that a URL might carry."""
        text = (done.stderr + done.stdout).decode("utf-8", "replace")
        lines = [
            " ".join(line.split())
            for line in text.splitlines()
            if line.strip() and not line.startswith(_NOISE)
        ]
        return _USERINFO.sub(r"\1***@", "; ".join(lines[-3:])) or f"exit {done.returncode}"
