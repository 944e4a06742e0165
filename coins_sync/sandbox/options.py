"""How a sandbox listens, whom it lets in, and which faults it injects."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coins_sync import envvars
from coins_sync.errors import SettingsError

__all__ = ["SandboxOptions"]


@dataclass(frozen=True)
class SandboxOptions:
    """How the sandbox listens, whom it lets in, and which faults it injects.

    ``fail_rate`` is split evenly between "before" and "after" faults and added to
    ``fail_before_rate``/``fail_after_rate``; one roll decides per mutating call, so the
    chance of any fault is ``min(1, fail_before + fail_after)`` and "before" wins when
    the two add up to more than 1. Secrets are kept out of ``repr``. ``clock`` gives
    the seconds that issued tokens expire by (tests pass a fake one instead of sleeping).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    data_file: Path | None = None
    latency_ms: int = 0
    fail_rate: float = 0.0
    fail_before_rate: float = 0.0
    fail_after_rate: float = 0.0
    rate_429: float = 0.0
    #: A rate limit: a token bucket of ``rate`` requests a second (None: no limit)...
    rate: float | None = None
    #: ...that saves up at most ``burst`` requests (None: one second's worth).
    burst: int | None = None
    #: Whether a 429 of the rate limit carries ``Retry-After`` (whole seconds).
    retry_after: bool = True
    seed: int | None = None
    token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token_ttl: int = 3600
    encryption: bool = False
    max_body: int = 1_000_000
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"sandbox port must be in 0..65535, not {self.port}")
        if self.latency_ms < 0:
            raise SettingsError("sandbox latency_ms must not be negative")
        for name in ("fail_rate", "fail_before_rate", "fail_after_rate", "rate_429"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SettingsError(f"sandbox {name} must be between 0 and 1, not {value}")
        if self.rate is not None and not 0 < self.rate < math.inf:
            raise SettingsError(f"sandbox rate must be a positive number, not {self.rate}")
        if self.burst is not None and self.burst < 1:
            raise SettingsError(f"sandbox burst must be 1 or more, not {self.burst}")
        if self.burst is not None and self.rate is None:
            raise SettingsError("sandbox burst needs a rate")
        if self.token_ttl <= 0:
            raise SettingsError("sandbox token_ttl must be positive")
        if self.max_body <= 0:
            raise SettingsError("sandbox max_body must be positive")
        if self.encryption and not self.client_secret:
            raise SettingsError("sandbox encryption needs a client secret (the AES key)")

    @property
    def bucket_size(self) -> int:
        """The burst of the rate limit: as given, else one second's worth of requests."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1))

    @property
    def oauth_enabled(self) -> bool:
        """True when all four password-grant credentials are configured."""
        return all((self.client_id, self.client_secret, self.username, self.password))

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> SandboxOptions:
        """Take the credentials from ``COINS_SYNC_*`` variables; ``overrides`` win.

        Empty variables count as unset, so an exported-but-blank secret never becomes
        an accepted empty token.
        """
        names = {
            "token": envvars.TOKEN,
            "client_id": envvars.CLIENT_ID,
            "client_secret": envvars.CLIENT_SECRET,
            "username": envvars.USERNAME,
            "password": envvars.PASSWORD,
        }
        values: dict[str, Any] = {}
        for attr, var in names.items():
            value = environ.get(var)
            if value:
                values[attr] = value
        values.update(overrides)
        return cls(**values)
