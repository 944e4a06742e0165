"""A local stand-in for the EnKash coins API, for demos, tests and benchmarks.

It speaks the wire protocol of SPEC §1 (envelope, OAuth password grant, optional
AES-128-ECB bodies) and keeps the real API's sharp edges on purpose: a repeated create
makes a second config, three refused token requests lock the account, and faults can be
injected so that callers can prove they never re-send a create blindly.

The parts: :mod:`~coins_sync.sandbox.options` (settings), :mod:`~.store` (configs),
:mod:`~.auth` (tokens), :mod:`~.faults` (injected faults and counters) and
:mod:`~.app`, which routes a request to a response without sockets. :mod:`~.server` is
the thin ``http.server`` adapter; :meth:`SandboxApp.transport` wraps the same app in
``httpx.MockTransport``.

Promises:

- Never open by default: without a static token or OAuth credentials every API call
  is refused with 401.
- A config is stored (and, with ``data_file``, durably written) before any response
  that mentions it is sent; an injected "after" fault happens only once it is stored.
- Latency is slept per request in the handler thread, so parallel clients overlap.
- Nothing is printed; requests are logged at DEBUG level only.
"""

from __future__ import annotations

from coins_sync.sandbox.app import SandboxApp
from coins_sync.sandbox.messages import SandboxRequest, SandboxResponse
from coins_sync.sandbox.options import SandboxOptions
from coins_sync.sandbox.server import SandboxServer, serve

__all__ = [
    "SandboxApp",
    "SandboxOptions",
    "SandboxRequest",
    "SandboxResponse",
    "SandboxServer",
    "serve",
]
