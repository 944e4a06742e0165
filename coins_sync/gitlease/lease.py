"""State kept in git without losing it: a lease on a dedicated state branch.

A CI job that applies and then commits the state back can lose that state: the push
is refused, a rebase conflicts, or the runner is cancelled in between. The next run
then plans from the old state and creates the same configs again. The lease protocol
closes that gap with nothing but ``git push`` as a compare-and-swap:

1. ``acquire``: fetch the state branch; refuse if its tip is a lease commit (another
   run holds it). Otherwise commit a lease naming this run on top of the tip and push
   it, expecting the tip we fetched (``--force-with-lease=<ref>:<sha>`` on a commit
   whose parent is that sha: a fast-forward or nothing). Exactly one run wins; the
   loser stops before anything is sent. The branch's state files are then copied
   into the working tree.
2. ``push``: after apply, commit the state files (state, backup, journal,
   audit log, rescue file)
   on top of this run's own lease and push that fast-forward, retrying only it.
3. If that push fails, the lease stays: every later ``acquire`` refuses until a person
   restores the files the failed run kept (``restore --from DIR``), or, when that run
   provably sent nothing, releases its lease (``release --run RUN``).

The lease is "the branch tip is a commit with the trailer ``Coins-Sync-Lease: held``".
A commit a person pushes on top of it by hand also ends the lease. Only ``git`` is
used, through subprocesses with a timeout and no terminal prompts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from coins_sync.errors import GitLeaseError, LeaseHeldError, LeasePushError, StateError
from coins_sync.gitlease.git import Git, commit_message, parse_trailers
from coins_sync.state.audit import audit_path_for, current_actor
from coins_sync.state.file import FileStateStore
from coins_sync.state.files import atomic_write
from coins_sync.state.journal import parse_journal
from coins_sync.state.model import parse_state, utc_now

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "coins-sync-state"
DEFAULT_REMOTE = "origin"
TRAILER = "Coins-Sync-Lease"


class LeaseState(Enum):
    MISSING = "missing"  # the branch does not exist yet
    FREE = "free"
    HELD = "held"


@dataclass(frozen=True)
class RunInfo:
    """Who takes a lease: written into the lease commit for the people who read it."""

    run: str
    actor: str
    commit: str
    at: str

    @classmethod
    def current(cls, environ: Mapping[str, str], run: str | None, commit: str) -> RunInfo:
        if not run:
            gh_run, attempt = environ.get("GITHUB_RUN_ID"), environ.get("GITHUB_RUN_ATTEMPT")
            if gh_run:
                run = f"{gh_run}-{attempt}" if attempt else gh_run
            else:
                run = f"local-{socket.gethostname()}-{os.getpid()}"
        return cls(
            run=_one_line(run), actor=_one_line(current_actor(environ)), commit=commit, at=utc_now()
        )

    def trailers(self) -> dict[str, str]:
        return {
            "Coins-Sync-Run": self.run,
            "Coins-Sync-Actor": self.actor,
            "Coins-Sync-Commit": self.commit,
            "Coins-Sync-At": self.at,
        }

    def describe(self) -> str:
        return f"run {self.run} (by {self.actor} at {self.at}, main commit {self.commit[:12]})"


@dataclass(frozen=True)
class BranchStatus:
    """The state branch as fetched: its tip and, when leased, the run that holds it."""

    branch: str
    state: LeaseState
    tip: str | None
    holder: RunInfo | None

    def describe(self) -> str:
        if self.state is LeaseState.MISSING:
            return f"branch {self.branch} does not exist yet; the first acquire creates it"
        if self.state is LeaseState.HELD and self.holder is not None:
            return f"branch {self.branch} is leased by {self.holder.describe()}"
        return f"branch {self.branch} is free (tip {str(self.tip)[:12]})"

    def to_json(self) -> dict[str, object]:
        return {
            "branch": self.branch,
            "lease": self.state.value,
            "tip": self.tip,
            "holder": None if self.holder is None else self.holder.__dict__,
        }


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown"


def _holder_from(trailers: Mapping[str, str]) -> RunInfo:
    return RunInfo(
        run=trailers.get("Coins-Sync-Run", "unknown"),
        actor=trailers.get("Coins-Sync-Actor", "unknown"),
        commit=trailers.get("Coins-Sync-Commit", "unknown"),
        at=trailers.get("Coins-Sync-At", "unknown"),
    )


class GitLease:
    """The lease protocol for one state file, in the git repository around ``cwd``."""

    def __init__(
        self,
        state_path: Path,
        *,
        branch: str = DEFAULT_BRANCH,
        remote: str = DEFAULT_REMOTE,
        cwd: Path | None = None,
        environ: Mapping[str, str] | None = None,
        env: str = "default",
    ) -> None:
        #: The coins-sync environment whose state this is; hints name it (--env).
        self.env = env
        self.environ = dict(os.environ if environ is None else environ)
        self.git = Git(cwd or Path.cwd(), self.environ)
        if not branch or branch.startswith("-") or any(c in branch for c in " ~^:?*[\\"):
            raise GitLeaseError(f"not a usable branch name: {branch!r}")
        self.branch = branch
        self.remote = remote
        self.ref = f"refs/heads/{branch}"
        self.tracking = f"refs/coins-sync/{branch}"
        done = self.git.run("rev-parse", "--show-toplevel", "--absolute-git-dir", check=False)
        if done.returncode != 0:
            raise GitLeaseError(
                f"{self.git.cwd} is not inside a git working tree: {Git.said(done)}"
            )
        top, git_dir = done.stdout.decode().splitlines()[:2]
        self.top = Path(top)
        self.record_path = Path(git_dir) / "coins-sync" / f"lease-{branch.replace('/', '--')}.json"
        self.store = FileStateStore(state_path)
        absolute = (self.git.cwd / state_path).resolve()
        try:
            relative = absolute.relative_to(self.top.resolve())
        except ValueError as e:
            raise GitLeaseError(
                f"state {state_path} is outside the git working tree {self.top}"
            ) from e
        #: The files that travel with the state, as (local path, path in the branch).
        self.files: tuple[tuple[Path, str], ...] = tuple(
            (local, (relative.parent / local.name).as_posix())
            for local in (
                self.store.path,
                self.store.backup_path,
                self.store.journal_path,
                audit_path_for(self.store.path),
                self.store.rescue_path,
            )
        )

    # reading the branch -------------------------------------------------------

    def fetch(self) -> BranchStatus:
        """The branch as it is on the remote now (fetched into a private ref)."""
        listed = self.git.out("ls-remote", "--heads", self.remote, self.ref)
        if not listed:
            self.git.run("update-ref", "-d", self.tracking, check=False)
            return BranchStatus(self.branch, LeaseState.MISSING, None, None)
        self.git.run("fetch", "--quiet", "--no-tags", self.remote, f"+{self.ref}:{self.tracking}")
        tip = self.git.out("rev-parse", "--verify", f"{self.tracking}^{{commit}}")
        return self._status_of(tip)

    def _status_of(self, tip: str) -> BranchStatus:
        trailers = parse_trailers(self.git.out("log", "-1", "--format=%B", tip))
        if trailers.get(TRAILER) == "held":
            return BranchStatus(self.branch, LeaseState.HELD, tip, _holder_from(trailers))
        return BranchStatus(self.branch, LeaseState.FREE, tip, None)

    def _blob(self, commit: str, path: str) -> bytes | None:
        done = self.git.run("cat-file", "blob", f"{commit}:{path}", check=False)
        return done.stdout if done.returncode == 0 else None

    # writing commits and pushing ----------------------------------------------

    def _commit(self, parent: str | None, sources: Sequence[tuple[Path, str]], message: str) -> str:
        """A commit whose tree is ``parent``'s with the state files taken from ``sources``
        (a missing source file is removed from the tree). Touches no index or HEAD."""
        with tempfile.TemporaryDirectory(prefix="coins-sync-lease-") as tmp:
            index = Path(tmp) / "index"
            if parent is None:
                self.git.run("read-tree", "--empty", index=index)
            else:
                self.git.run("read-tree", parent, index=index)
            for source, path in sources:
                if source.is_file():
                    blob = self.git.out("hash-object", "-w", "--no-filters", "--", str(source))
                    self.git.run(
                        "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", index=index
                    )
                else:
                    self.git.run("update-index", "--force-remove", "--", path, index=index)
            tree = self.git.out("write-tree", index=index)
        parents = [] if parent is None else ["-p", parent]
        done = self.git.run("commit-tree", tree, *parents, "-F", "-", stdin=message.encode())
        return done.stdout.decode().strip()

    def _push(self, commit: str, expected: str | None) -> subprocess.CompletedProcess[bytes]:
        """Compare-and-swap: move the branch to ``commit`` only if it is at ``expected``."""
        return self.git.run(
            "push",
            "--porcelain",
            f"--force-with-lease={self.ref}:{expected or ''}",
            self.remote,
            f"{commit}:{self.ref}",
            check=False,
        )

    def _remote_tip(self) -> str | None:
        listed = self.git.run("ls-remote", "--heads", self.remote, self.ref, check=False)
        if listed.returncode != 0:
            return None
        text = listed.stdout.decode().split()
        return text[0] if text else ""

    def _push_on_lease(self, lease: str, commit: str, attempts: int, delay: float) -> None:
        """Push ``commit`` (a child of ``lease``) as a fast-forward; retry only that push."""
        reason = "no attempt was made"
        for attempt in range(1, attempts + 1):
            done = self._push(commit, lease)
            if done.returncode == 0:
                return
            reason = Git.said(done)
            tip = self._remote_tip()
            if tip == commit:  # an earlier attempt landed; only its answer was lost
                return
            if tip is not None and tip != lease:
                raise LeasePushError(
                    f"branch {self.branch} moved away from this run's lease "
                    f"(now {tip[:12] or 'deleted'}); nothing was overwritten. {reason}",
                    kept=self.kept_files(),
                )
            log.warning(
                "push of the state to %s failed (attempt %d): %s", self.branch, attempt, reason
            )
            if attempt < attempts:
                time.sleep(delay * 2 ** (attempt - 1))
        raise LeasePushError(
            f"could not push the state to branch {self.branch} after {attempts} "
            f"attempt{'s' if attempts != 1 else ''}: {reason}",
            kept=self.kept_files(),
        )

    def kept_files(self) -> tuple[str, ...]:
        return tuple(str(local) for local, _ in self.files if local.is_file())

    # the local record of a lease this clone holds ------------------------------

    def _write_record(self, lease: str, run: RunInfo) -> None:
        record = {"branch": self.branch, "remote": self.remote, "lease": lease, **run.__dict__}
        atomic_write(self.record_path, json.dumps(record, sort_keys=True).encode())

    def _read_record(self) -> dict[str, str]:
        try:
            data = json.loads(self.record_path.read_bytes())
        except FileNotFoundError as e:
            raise GitLeaseError(
                f"this clone holds no lease on {self.branch}; run `coins-sync git-lease "
                "acquire` before apply"
            ) from e
        except (OSError, ValueError, RecursionError) as e:
            raise GitLeaseError(f"{self.record_path}: unreadable lease record: {e!r}") from e
        if not isinstance(data, dict) or not isinstance(data.get("lease"), str):
            raise GitLeaseError(f"{self.record_path}: not a lease record")
        return {str(k): str(v) for k, v in data.items()}

    @contextlib.contextmanager
    def _locked(self, command: str) -> Iterator[None]:
        """The state lock, so no apply in this working tree changes the files meanwhile."""
        with self.store.lock(f"git-lease {command}"):
            yield

    # the protocol -------------------------------------------------------------

    def acquire(self, run_id: str | None = None, attempts: int = 3) -> tuple[str, RunInfo]:
        """Take the lease, or raise LeaseHeldError. Then the branch's state is local."""
        head = self.git.run("rev-parse", "--verify", "HEAD", check=False)
        commit = head.stdout.decode().strip() or self.environ.get("GITHUB_SHA", "unknown")
        run = RunInfo.current(self.environ, run_id, commit)
        body = (
            f"Run {run.run} holds this branch and may be applying now. No other run applies\n"
            "until it pushes its state on top of this commit, or a person restores that\n"
            f"state with `coins-sync git-lease restore --env {self.env} --from DIR`."
        )
        message = commit_message(
            f"coins-sync lease: run {run.run} by {run.actor}",
            body,
            {TRAILER: "held", **run.trailers()},
        )
        with self._locked("acquire"):
            for _ in range(attempts):
                status = self.fetch()
                if status.state is LeaseState.HELD:
                    raise self._held(status)
                seeding = status.state is LeaseState.MISSING
                sources = self.files if seeding else ()
                lease = self._commit(status.tip, sources, message)
                done = self._push(lease, status.tip)
                if done.returncode == 0:
                    self._materialize(lease, remove_missing=not seeding)
                    self._write_record(lease, run)
                    log.info("took the lease on %s as %s", self.branch, lease[:12])
                    return lease, run
                log.info("the lease push was refused (%s); looking again", Git.said(done))
            status = self.fetch()
            if status.state is LeaseState.HELD:
                raise self._held(status)
            raise GitLeaseError(
                f"could not take the lease on {self.branch} in {attempts} attempts: "
                f"{Git.said(done)}; nothing was sent"
            )

    def _held(self, status: BranchStatus) -> LeaseHeldError:
        holder = status.holder.describe() if status.holder else "an unknown run"
        return LeaseHeldError(
            f"{status.describe()}; refusing to apply, nothing was sent. If that run is "
            "still going, wait for it. If it failed, its state was kept as a workflow "
            f"artifact: download it and run `coins-sync git-lease restore --env {self.env} "
            "--from DIR`. "
            f"If that run provably sent nothing, `coins-sync git-lease release --env {self.env} "
            f"--run {status.holder.run if status.holder else 'RUN'}` frees the branch",
            holder=holder,
        )

    def _materialize(self, commit: str, remove_missing: bool) -> None:
        for local, path in self.files:
            data = self._blob(commit, path)
            if data is not None:
                atomic_write(local, data)
            elif remove_missing:
                with contextlib.suppress(FileNotFoundError):
                    local.unlink()

    def push(self, attempts: int = 3, delay: float = 2.0) -> str:
        """Push the local state on top of this clone's lease, which that ends."""
        record = self._read_record()
        lease = record["lease"]
        message = commit_message(
            f"coins-sync state after run {record.get('run', 'unknown')}",
            "The state, its journal and its audit log after this run; the lease is released.",
            {
                TRAILER: "released",
                "Coins-Sync-Run": record.get("run", "unknown"),
                "Coins-Sync-Commit": record.get("commit", "unknown"),
                "Coins-Sync-At": utc_now(),
            },
        )
        with self._locked("push"):
            commit = self._commit(lease, self.files, message)
            self._push_on_lease(lease, commit, max(attempts, 1), delay)
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()
        return commit

    def restore(self, source: Path, run_id: str | None = None, attempts: int = 3) -> str:
        """Put the files a failed run kept (``source``) on the branch, ending its lease."""
        status = self.fetch()
        if status.state is not LeaseState.HELD or status.tip is None:
            raise GitLeaseError(f"{status.describe()}; there is no lease to restore")
        assert status.holder is not None
        if run_id is not None and run_id != status.holder.run:
            raise GitLeaseError(f"{status.describe()}, not by run {run_id}; nothing was restored")
        found = self._restored_files(source, status.tip)
        message = commit_message(
            f"coins-sync state of run {status.holder.run}, restored by "
            f"{current_actor(self.environ)}",
            f"Restored from {source.name}; the lease of run {status.holder.run} is released.",
            {TRAILER: "released", "Coins-Sync-Run": status.holder.run, "Coins-Sync-At": utc_now()},
        )
        with self._locked("restore"):
            for (local, _), data in zip(self.files, found, strict=True):
                if data is not None:
                    atomic_write(local, data)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        local.unlink()
            commit = self._commit(status.tip, self.files, message)
            self._push_on_lease(status.tip, commit, attempts, 1.0)
        return commit

    def _restored_files(self, source: Path, tip: str) -> list[bytes | None]:
        """The state files in ``source`` (by name, or at their path in the branch),
        checked against what the branch holds so that nothing older replaces it."""
        if not source.is_dir():
            raise GitLeaseError(f"{source}: not a folder (give the downloaded artifact's folder)")
        found: list[bytes | None] = []
        for local, path in self.files:
            candidates = (source / local.name, source / path)
            hit = next((c for c in candidates if c.is_file()), None)
            found.append(None if hit is None else hit.read_bytes())
        state_raw, _, journal_raw, audit_raw, _rescue = found
        state_name = self.files[0][0].name
        if state_raw is None:
            raise GitLeaseError(f"{source} holds no {state_name}; nothing was restored")
        restored = parse_state(state_raw, str(source / state_name))
        branch_raw = self._blob(tip, self.files[0][1])
        if branch_raw is not None:
            current = parse_state(branch_raw, f"{self.branch}:{self.files[0][1]}")
            if current.lineage != restored.lineage:
                raise StateError(
                    f"{source / state_name} has lineage {restored.lineage}, the branch "
                    f"{current.lineage}: another environment's state? nothing was restored"
                )
            if restored.serial < current.serial:
                raise StateError(
                    f"{source / state_name} has serial {restored.serial}, older than the "
                    f"branch's {current.serial}; nothing was restored"
                )
        if journal_raw is not None:
            parse_journal(journal_raw, restored.lineage, str(source / self.files[2][0].name))
        branch_audit = self._blob(tip, self.files[3][1])
        if branch_audit and not (audit_raw or b"").startswith(branch_audit):
            raise StateError(
                f"{source / self.files[3][0].name} does not continue the branch's audit log; "
                "nothing was restored"
            )
        return found

    def release(self, run_id: str, attempts: int = 3) -> str:
        """End the lease of ``run_id`` with the branch's state unchanged (it sent nothing)."""
        status = self.fetch()
        if status.state is not LeaseState.HELD or status.tip is None or status.holder is None:
            raise GitLeaseError(f"{status.describe()}; there is no lease to release")
        if status.holder.run != run_id:
            raise GitLeaseError(f"{status.describe()}, not by run {run_id}; nothing was released")
        message = commit_message(
            f"coins-sync lease of run {run_id} released by {current_actor(self.environ)}",
            "Released by hand: that run sent nothing, so the state below is current.",
            {TRAILER: "released", "Coins-Sync-Run": run_id, "Coins-Sync-At": utc_now()},
        )
        commit = self._commit(status.tip, (), message)
        self._push_on_lease(status.tip, commit, attempts, 1.0)
        return commit
