"""State kept in git without losing it: a lease on a dedicated state branch.

A CI job that applies and then commits the state back can lose that state: the push
is refused, a rebase conflicts, or the runner is cancelled in between. The next run
then plans from the old state and creates the same configs again. The lease protocol
closes that gap with nothing but ``git push`` as a compare-and-swap:

1. ``acquire``: fetch the state branch and its lease ref
   (``refs/coins-sync/lease/<branch>``); refuse if the lease ref exists (another run
   holds it). Otherwise push a lease commit naming this run to the lease ref, expecting
   it absent (``--force-with-lease=<ref>:``). Exactly one run wins; the loser stops
   before anything is sent. The branch's state files are then copied into the working
   tree.
2. ``push``: after apply, commit the state files (state, backup, journal, audit log,
   rescue file) on top of the branch's tip and, in one atomic push, move the branch to
   that commit and delete this run's lease ref, expecting both as fetched. A commit
   someone pushed on the branch meanwhile is kept underneath; only this run's own
   lease is ever ended.
3. If that push fails, the lease stays: every later ``acquire`` refuses until a person
   restores the files the failed run kept (``restore --from DIR``), or, when that run
   provably sent nothing, releases its lease (``release --run RUN``).

The lease is the lease ref, owned by its run: no ordinary commit on the branch (a
person's fix, a merge, a revert) can end it. Only ``git`` is used, through
subprocesses with a timeout and no terminal prompts. A branch whose tip is a lease
commit of the older protocol (trailer ``Coins-Sync-Lease: held``, no lease ref) still
reads as held, and ``restore``/``release`` end it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from coins_sync.errors import GitLeaseError, LeaseHeldError, LeasePushError
from coins_sync.gitlease.git import Git, commit_message, parse_trailers
from coins_sync.gitlease.restore import check_restored, read_kept
from coins_sync.gitlease.status import BranchStatus, LeaseState, RunInfo, holder_from
from coins_sync.state.audit import audit_path_for, current_actor
from coins_sync.state.file import FileStateStore
from coins_sync.state.files import atomic_write
from coins_sync.state.model import utc_now

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "coins-sync-state"
DEFAULT_REMOTE = "origin"
TRAILER = "Coins-Sync-Lease"
LEASE_REFS = "refs/coins-sync/lease/"


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
        self.lease_ref = f"{LEASE_REFS}{branch}"
        # where fetch puts both in this clone: private refs, never a branch of its own
        self.tracking = f"refs/coins-sync/fetched/state/{branch}"
        self.lease_tracking = f"refs/coins-sync/fetched/lease/{branch}"
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

    def _listed(self) -> dict[str, str]:
        """The remote's branch and lease ref, as ref -> sha (absent ones left out)."""
        listed = self.git.out("ls-remote", self.remote, self.ref, self.lease_ref)
        found: dict[str, str] = {}
        for line in listed.splitlines():
            sha, _, name = line.partition("\t")
            if name in (self.ref, self.lease_ref):
                found[name] = sha.strip()
        return found

    def fetch(self) -> BranchStatus:
        """The branch and its lease as they are on the remote now (into private refs)."""
        listed = self._listed()
        wanted = [
            f"+{ref}:{local}"
            for ref, local in ((self.ref, self.tracking), (self.lease_ref, self.lease_tracking))
            if ref in listed
        ]
        for ref, local in ((self.ref, self.tracking), (self.lease_ref, self.lease_tracking)):
            if ref not in listed:
                self.git.run("update-ref", "-d", local, check=False)
        if wanted:
            self.git.run("fetch", "--quiet", "--no-tags", self.remote, *wanted)
        tip = listed.get(self.ref)
        lease = listed.get(self.lease_ref)
        if lease is not None:
            trailers = parse_trailers(self.git.out("log", "-1", "--format=%B", lease))
            return BranchStatus(self.branch, LeaseState.HELD, tip, holder_from(trailers), lease)
        if tip is None:
            return BranchStatus(self.branch, LeaseState.MISSING, None, None)
        trailers = parse_trailers(self.git.out("log", "-1", "--format=%B", tip))
        if trailers.get(TRAILER) == "held":  # the older protocol: the tip was the lease
            return BranchStatus(self.branch, LeaseState.HELD, tip, holder_from(trailers))
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

    def _push(
        self, updates: Mapping[str, tuple[str | None, str | None]]
    ) -> subprocess.CompletedProcess[bytes]:
        """One atomic compare-and-swap over several refs: ``ref -> (expected, new)``;
        None means absent (expected) or delete (new). All move, or none."""
        leases = [f"--force-with-lease={ref}:{old or ''}" for ref, (old, _) in updates.items()]
        specs = [f"{new or ''}:{ref}" for ref, (_, new) in updates.items()]
        return self.git.run(
            "push", "--porcelain", "--atomic", *leases, self.remote, *specs, check=False
        )

    def _finish(
        self,
        held: str | None,
        build: Callable[[str], str],
        what: str,
        attempts: int,
        delay: float,
    ) -> str:
        """End the lease ``held`` (the lease ref's commit; None for an older protocol's
        lease at the tip): commit ``build(tip)`` on the branch's current tip and, in one
        atomic push, move the branch there and delete the lease ref. A commit pushed on
        the branch meanwhile is built upon, never overwritten; the push is retried while
        the lease is still this one. Raises LeasePushError (the lease stays)."""
        reason = "no attempt was made"
        status: BranchStatus | None = None
        commit = ""
        for attempt in range(1, attempts + 1):
            try:
                status = self.fetch()
            except GitLeaseError as e:
                reason = str(e)
            else:
                if held is not None and status.lease != held:
                    raise self._moved(status, what)
                if held is None and status.state is not LeaseState.HELD:
                    raise self._moved(status, what)
                if status.tip is None:
                    raise LeasePushError(
                        f"branch {self.branch} was deleted while this run's lease was held; "
                        f"{what} was not pushed",
                        kept=self.kept_files(),
                    )
                commit = build(status.tip)
                updates: dict[str, tuple[str | None, str | None]] = {self.ref: (status.tip, commit)}
                if held is not None:
                    updates[self.lease_ref] = (held, None)
                done = self._push(updates)
                if done.returncode == 0:
                    return commit
                reason = Git.said(done)
                with contextlib.suppress(GitLeaseError):
                    now = self._listed()
                    if now.get(self.ref) == commit and self.lease_ref not in now:
                        return commit  # an earlier attempt landed; only its answer was lost
            log.warning(
                "push of %s to %s failed (attempt %d): %s", what, self.branch, attempt, reason
            )
            if attempt < attempts:
                time.sleep(delay * 2 ** (attempt - 1))
        raise LeasePushError(
            f"could not push {what} to branch {self.branch} after {attempts} "
            f"attempt{'s' if attempts != 1 else ''}: {reason}",
            kept=self.kept_files(),
        )

    def _moved(self, status: BranchStatus, what: str) -> LeasePushError:
        now = status.describe() if status.state is LeaseState.HELD else "its lease was ended"
        return LeasePushError(
            f"this run's lease on {self.branch} is gone ({now}); {what} was not pushed and "
            "nothing was overwritten",
            kept=self.kept_files(),
        )

    def kept_files(self) -> tuple[str, ...]:
        return tuple(str(local) for local, _ in self.files if local.is_file())

    # the local record of a lease this clone holds ------------------------------

    def _write_record(self, lease: str, base: str, run: RunInfo) -> None:
        record = {
            "branch": self.branch,
            "remote": self.remote,
            "lease": lease,
            "base": base,
            **run.__dict__,
        }
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
            f"Run {run.run} holds the state branch {self.branch} and may be applying now.\n"
            "No other run applies until it pushes its state, or a person restores that\n"
            f"state with `coins-sync git-lease restore --env {self.env} --from DIR`."
        )
        message = commit_message(
            f"coins-sync lease: run {run.run} by {run.actor}",
            body,
            {TRAILER: "held", **run.trailers()},
        )
        done: subprocess.CompletedProcess[bytes] | None = None
        with self._locked("acquire"):
            for _ in range(attempts):
                status = self.fetch()
                if status.state is LeaseState.HELD:
                    raise self._held(status)
                if status.tip is not None:
                    self._refuse_unfolded_here(status.tip)
                updates: dict[str, tuple[str | None, str | None]] = {}
                base = status.tip
                if base is None:  # the first run creates the branch with its state
                    base = self._commit(
                        None,
                        self.files,
                        commit_message(
                            f"coins-sync state branch for {self.store.path.name}",
                            f"The state before run {run.run}, the first to take the lease.",
                            {TRAILER: "seeded", "Coins-Sync-Run": run.run},
                        ),
                    )
                    updates[self.ref] = (None, base)
                lease = self._commit(base, (), message)
                updates[self.lease_ref] = (None, lease)
                done = self._push(updates)
                if done.returncode == 0:
                    self._materialize(base, remove_missing=status.tip is not None)
                    self._write_record(lease, base, run)
                    log.info("took the lease on %s as %s", self.branch, lease[:12])
                    return lease, run
                log.info("the lease push was refused (%s); looking again", Git.said(done))
            status = self.fetch()
            if status.state is LeaseState.HELD:
                raise self._held(status)
            said = Git.said(done) if done is not None else "no attempt was made"
            raise GitLeaseError(
                f"could not take the lease on {self.branch} in {attempts} attempts: "
                f"{said}; nothing was sent"
            )

    def _refuse_unfolded_here(self, tip: str) -> None:
        """The branch's files replace the local ones on acquire: never a local journal
        or rescue file the branch does not hold as it is (results it may lack)."""
        for local, path in self.files[2:3] + self.files[4:]:
            if local.is_file() and local.read_bytes() != self._blob(tip, path):
                raise GitLeaseError(
                    f"{local} holds results that the branch {self.branch} does not; taking "
                    "the lease would replace it with the branch's files. Keep it: move it "
                    "aside (and `git-lease restore` its folder if the branch lacks its "
                    "results). Nothing was taken or sent"
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
        """Push the local state onto the branch, ending this clone's lease."""
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
        base = record.get("base", "")

        def build(tip: str) -> str:
            if base and tip != base:
                self._warn_replaced(base, tip)
            return self._commit(tip, self.files, message)

        with self._locked("push"):
            commit = self._finish(lease, build, "the state", max(attempts, 1), delay)
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()
        return commit

    def _warn_replaced(self, base: str, tip: str) -> None:
        """Commits pushed on the branch during the lease that changed the state files:
        this run's files replace them (it holds the lease); say so, never silently."""
        paths = [path for _, path in self.files]
        done = self.git.run("diff", "--name-only", base, tip, "--", *paths, check=False)
        changed = done.stdout.decode("utf-8", "replace").split()
        if changed:
            log.warning(
                "commits pushed on %s during this run's lease changed %s; this run's files "
                "replace them (see `git log %s..%s`)",
                self.branch,
                ", ".join(changed),
                base[:12],
                tip[:12],
            )

    def restore(self, source: Path, run_id: str | None = None, attempts: int = 3) -> str:
        """Put the files a failed run kept (``source``) on the branch, ending its lease."""
        status = self.fetch()
        if status.state is not LeaseState.HELD or status.tip is None:
            raise GitLeaseError(f"{status.describe()}; there is no lease to restore")
        assert status.holder is not None
        if run_id is not None and run_id != status.holder.run:
            raise GitLeaseError(f"{status.describe()}, not by run {run_id}; nothing was restored")
        found = read_kept(source, self.files)
        check_restored(
            source, self.files, found, self.branch, lambda p: self._blob(status.tip or "", p)
        )
        message = commit_message(
            f"coins-sync state of run {status.holder.run}, restored by "
            f"{current_actor(self.environ)}",
            f"Restored from {source.name}; the lease of run {status.holder.run} is released.",
            {TRAILER: "released", "Coins-Sync-Run": status.holder.run, "Coins-Sync-At": utc_now()},
        )

        def build(tip: str) -> str:
            if tip != status.tip:  # the branch moved: check against what it holds now
                check_restored(source, self.files, found, self.branch, lambda p: self._blob(tip, p))
            return self._commit(tip, self.files, message)

        with self._locked("restore"):
            for (local, _), data in zip(self.files, found, strict=True):
                if data is not None:
                    atomic_write(local, data)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        local.unlink()
            return self._finish(status.lease, build, "the restored state", attempts, 1.0)

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
        return self._finish(
            status.lease, lambda tip: self._commit(tip, (), message), "the release", attempts, 1.0
        )

    def pull(self) -> tuple[BranchStatus, list[str]]:
        """Copy the branch's state files here for a local plan, taking no lease.

        Refuses to replace local files that may hold results the branch lacks: a
        journal or rescue file, or a state of another lineage or a newer serial."""
        status = self.fetch()
        if status.tip is None:
            raise GitLeaseError(f"{status.describe()}; there is no state to pull")
        return status, pull_files(self, status.tip)


def pull_files(lease: GitLease, tip: str) -> list[str]:
    """``git-lease pull``: the branch's files at ``tip`` into the working tree."""
    from coins_sync.gitlease.restore import check_pull

    written: list[str] = []
    with lease._locked("pull"):
        state_path = lease.files[0]
        check_pull(lease.store, lease._blob(tip, state_path[1]), f"{lease.branch}:{state_path[1]}")
        for local, path in lease.files:
            data = lease._blob(tip, path)
            if data is not None:
                atomic_write(local, data)
                written.append(str(local))
    return written
