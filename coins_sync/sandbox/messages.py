"""The sandbox's request and response values, and the error that becomes an envelope.

The app reads a :class:`SandboxRequest` and returns a :class:`SandboxResponse`; neither
knows about sockets, so the same app runs behind ``http.server`` or inside
``httpx.MockTransport``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HttpError", "SandboxRequest", "SandboxResponse"]


class HttpError(Exception):
    """An error answer: rendered as an envelope with ``response_code`` 1.

    ``close`` asks the transport to close the connection after the answer, for when
    the request left the connection in an unknown state (an unread body, a crash).
    """

    def __init__(
        self,
        status: int,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.close = close


@dataclass(frozen=True)
class SandboxRequest:
    """One HTTP request: method, target (path and query), headers, the whole body.

    Header names are matched without regard to case; of repeated headers the first wins.
    """

    method: str
    target: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def __post_init__(self) -> None:
        items: Iterable[tuple[str, str]] = self.headers.items()
        lowered: dict[str, str] = {}
        for name, value in items:
            lowered.setdefault(name.lower(), value)
        object.__setattr__(self, "headers", lowered)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), or None when it was not sent."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class SandboxResponse:
    """One answer, always JSON.

    ``close`` asks for ``Connection: close`` after it. ``drop_connection`` means no
    answer at all: the transport closes the connection without sending a byte, as a
    server that crashes after doing the work would.
    """

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    close: bool = False
    drop_connection: bool = False

    content_type = "application/json"

    @classmethod
    def json_answer(
        cls, status: int, obj: Any, headers: Mapping[str, str] | None = None, *, close: bool = False
    ) -> SandboxResponse:
        """An answer whose body is ``obj`` as JSON."""
        body = json.dumps(obj).encode("utf-8")
        return cls(status, body, dict(headers or {}), close=close)

    @classmethod
    def dropped(cls) -> SandboxResponse:
        """No answer: the connection is closed after the request was acted on."""
        return cls(0, close=True, drop_connection=True)

    def json(self) -> Any:
        """The body, decoded."""
        return json.loads(self.body)
