"""``coins-sync sandbox``: the local stand-in for the EnKash coins API."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import click

from coins_sync import console
from coins_sync.cli.app import EXIT_OK
from coins_sync.settings import is_loopback


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--data",
    "data_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Persist configs to this JSON file (default: in memory only).",
)
@click.option("--latency-ms", default=0, type=click.IntRange(0, 60_000), help="Delay per request.")
@click.option(
    "--fail-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Chance of a fault on create/PATCH, split between before and after storing.",
)
@click.option(
    "--fail-before-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Chance of HTTP 500 without storing.",
)
@click.option(
    "--fail-after-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="Chance of storing, then a 502 or a dropped connection.",
)
@click.option("--rate-429", default=0.0, type=click.FloatRange(0, 1), help="Chance of HTTP 429.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="R",
    help="Rate limit: R requests a second (a token bucket); more are answered 429.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=None,
    metavar="B",
    help="Requests the rate limit saves up (default: one second's worth, R).",
)
@click.option(
    "--retry-after/--no-retry-after",
    default=True,
    show_default=True,
    help="Whether the rate limit's 429 says when to come back (Retry-After).",
)
@click.option("--seed", type=int, default=None, help="Seed for reproducible faults.")
@click.option("--encryption", is_flag=True, help="Expect and send AES-128-ECB bodies.")
@click.option("--token-ttl", default=3600, type=click.IntRange(1), help="expires_in of tokens.")
def sandbox(
    host: str,
    port: int,
    data_file: Path | None,
    latency_ms: int,
    fail_rate: float,
    fail_before_rate: float,
    fail_after_rate: float,
    rate_429: float,
    rate: float | None,
    burst: int | None,
    retry_after: bool,
    seed: int | None,
    encryption: bool,
    token_ttl: int,
) -> int:
    """Run a local stand-in for the EnKash coins API, for demos and tests.

    It serves create, get and PATCH with EnKash's envelopes, and /oauth/token. It
    accepts the bearer token in COINS_SYNC_TOKEN, and the password grant for the
    COINS_SYNC_CLIENT_ID/_CLIENT_SECRET/_USERNAME/_PASSWORD values. Like the real
    API, a second create makes a second config. It binds to loopback by default.

    \b
    Examples:
      COINS_SYNC_TOKEN=dev coins-sync sandbox --port 8765
      coins-sync sandbox --latency-ms 50 --fail-rate 0.1 --seed 7
      coins-sync sandbox --rate 20 --burst 20 --no-retry-after
    """
    if burst is not None and rate is None:
        raise click.UsageError("--burst needs --rate")
    from coins_sync.sandbox import SandboxOptions, SandboxServer

    options = SandboxOptions.from_env(
        os.environ,
        host=host,
        port=port,
        data_file=data_file,
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        fail_before_rate=fail_before_rate,
        fail_after_rate=fail_after_rate,
        rate_429=rate_429,
        rate=rate,
        burst=burst,
        retry_after=retry_after,
        seed=seed,
        encryption=encryption,
        token_ttl=token_ttl,
    )
    server = SandboxServer(options)
    if not options.token and not options.oauth_enabled:
        console.err(
            "Warning: no credentials in the environment, so every request will be refused "
            "with 401. Set COINS_SYNC_TOKEN (or the COINS_SYNC_CLIENT_ID/_CLIENT_SECRET/"
            "_USERNAME/_PASSWORD set) before starting the sandbox."
        )
    if not is_loopback(host.strip("[]")):
        console.err(
            f"Warning: listening on {host}, which other machines may reach; the sandbox "
            "is a test double with test credentials. Use 127.0.0.1 unless you mean it."
        )
    console.err(f"coins-sync sandbox listening on {server.url} (Ctrl-C to stop)")

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # stop cleanly on SIGTERM too (make demo, benchmarks)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return EXIT_OK
