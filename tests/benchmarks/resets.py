"""Uncertain creates from resets on a fault-free sandbox (issue 22): count them.

Run it as ``.venv/bin/python tests/benchmarks/resets.py [options]``. It is not a test
and not part of ``make bench``: it runs ``apply --yes`` of ``--creates`` new configs at
``--parallelism`` against a fresh ``coins-sync sandbox`` (0 ms latency), ``--runs``
times within ``--minutes``, and prints per run: the creates, the uncertain creates whose
message says "reset", the connections the sandbox accepted, and the change of the
kernel's counters (``nstat``, system-wide: other processes count too) for listen-queue
overflows and SYN cookies.

``--backlog N`` runs the sandbox with an N-deep listen queue instead of its own (128);
``--backlog 5`` (``socketserver``'s default) overflows it: the kernel drops the last ACK
of a handshake while the queue is full, and with SYN cookies only a segment that starts
at the request's first byte can revive the connection; a later one (a body sent apart
from its head) fails the cookie check and is answered with a reset, on a connection the
sandbox never accepted.

The client sends a create's head and body in one write (FreshTransport), so such a
connection is revived by the resent segment and nothing is reset. ``--two-writes`` runs
the create client on httpx's pooled transport instead (head, then body: what it does
behind a proxy, and what it did before), to compare the two.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench  # the project layout, configs and environment helpers, beside this file

#: The sandbox, optionally with another listen queue, counting accepted connections.
SANDBOX = """\
import os, sys, atexit
import coins_sync.sandbox.server as server
if os.environ.get("RESETS_BACKLOG"):
    server._HTTPServer.request_queue_size = int(os.environ["RESETS_BACKLOG"])
accepted = [0]
process_request = server._HTTPServer.process_request
def counting(self, request, address):
    accepted[0] += 1
    return process_request(self, request, address)
server._HTTPServer.process_request = counting
atexit.register(lambda: print("accepted", accepted[0], file=sys.stderr, flush=True))
from coins_sync.cli import main
sys.argv = ["coins-sync", "sandbox", *sys.argv[1:]]
main()
"""

#: The command line with the create client on httpx's pooled transport, which sends a
#: request's head and body in two writes (as before FreshTransport, or behind a proxy).
TWO_WRITES = """\
import sys
import coins_sync.enkash.options as options
options._proxied = lambda url: True  # no proxy is set, so httpx connects directly
from coins_sync.cli import main
sys.argv = ["coins-sync", *sys.argv[1:]]
main()
"""

COUNTERS = ("TcpExtListenOverflows", "TcpExtSyncookiesSent", "TcpExtSyncookiesFailed")


def kernel_counters() -> dict[str, int]:
    """The counters of :data:`COUNTERS` (absolute), or none without ``nstat``."""
    if shutil.which("nstat") is None:
        return {}
    out = subprocess.run(["nstat", "-az", *COUNTERS], capture_output=True, text=True).stdout
    return {p[0]: int(p[1]) for p in (line.split() for line in out.splitlines()) if len(p) > 1}


def one_run(root: Path, env: dict[str, str], n: int, args: argparse.Namespace) -> dict[str, object]:
    work = root / f"run-{n}"
    bench.write_project(work)
    files = max(1, args.creates // bench.RULES_PER_FILE)
    bench.write_configs(work / "configs", files, args.creates // files, f"RESETS{n:03d}X")
    log = work / "sandbox.log"
    run_env = dict(env, RESETS_BACKLOG=str(args.backlog or ""))
    with open(log, "wb") as handle:
        sandbox = subprocess.Popen(
            [bench.PYTHON, "-c", SANDBOX, "--port", "0"],
            cwd=work,
            env=run_env,
            stdout=handle,
            stderr=handle,
        )
        try:
            for _ in range(200):  # 10 s
                if "listening on " in log.read_text("utf-8", "replace"):
                    break
                time.sleep(0.05)
            text = log.read_text("utf-8", "replace")
            url = text.split("listening on ", 1)[1].split()[0]
            command = ["-c", TWO_WRITES] if args.two_writes else ["-m", "coins_sync"]
            options = ["--configs", "configs", "--state", "state/bench.json", "--env", "bench"]
            options += ["--api-url", url, "--yes", "--parallelism", str(args.parallelism)]
            before = kernel_counters()
            apply = subprocess.run(
                [bench.PYTHON, *command, "apply", *options],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=bench.TIMEOUT,
            )
            after = kernel_counters()
        finally:
            sandbox.terminate()
            sandbox.wait(10)
    output = apply.stdout + apply.stderr
    created = re.search(r"Apply: (\d+) created", output)
    accepted = re.search(r"accepted (\d+)", log.read_text("utf-8", "replace"))
    return {
        "run": n,
        "created": int(created.group(1)) if created else None,
        "uncertain_resets": sum(
            1 for line in output.splitlines() if "uncertain" in line and "reset" in line.lower()
        ),
        "accepted": int(accepted.group(1)) if accepted else None,
        "kernel": {k: after[k] - before.get(k, 0) for k in after},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--creates", type=int, default=5000)
    parser.add_argument("--parallelism", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=10.0, help="stop starting runs after")
    parser.add_argument("--backlog", type=int, default=None, help="the sandbox's listen queue")
    parser.add_argument(
        "--two-writes", action="store_true", help="creates on httpx's transport (head, body)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="coins-sync-resets-"))
    started = time.monotonic()
    creates = resets = runs = 0
    try:
        env = bench.child_env(root)
        for n in range(args.runs):
            if time.monotonic() - started > args.minutes * 60:
                print("time box reached", flush=True)
                break
            result = one_run(root, env, n, args)
            print(json.dumps(result), flush=True)
            runs += 1
            creates += int(str(result["created"] or 0))
            resets += int(str(result["uncertain_resets"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{runs} runs, {creates} creates, {resets} uncertain creates from resets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
