"""`ReconnectPolicy`: capped exponential backoff with jitter between reconnect
attempts, the same arithmetic as client/src/backoff.rs. Pure arithmetic; the reconnect
loop lives in client.py."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ReconnectPolicy:
    """The delay before attempt n (0-based) is min(max_delay, initial_delay *
    multiplier**n), reduced by a random fraction of up to `jitter` (0 = none, 1 =
    anywhere between zero and the full delay). `max_attempts` None = forever."""

    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "jitter", min(max(self.jitter, 0.0), 1.0))
        object.__setattr__(self, "multiplier", max(self.multiplier, 1.0))
        object.__setattr__(self, "initial_delay", max(self.initial_delay, 0.0))
        object.__setattr__(self, "max_delay", max(self.max_delay, 0.0))

    @classmethod
    def disabled(cls) -> ReconnectPolicy:
        """Never reconnect: the first loss closes the client."""
        return cls(max_attempts=0)

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt `attempt`, `rand` uniform in [0, 1)."""
        try:
            base = self.initial_delay * self.multiplier ** min(attempt, 1000)
        except OverflowError:
            base = math.inf
        base = min(base, self.max_delay)
        if math.isnan(rand):
            rand = 0.0
        rand = min(max(rand, 0.0), 1.0)
        return base * (1.0 - self.jitter * rand)

    def gives_up_after(self, failures: int) -> bool:
        """True when `failures` consecutive failed attempts exhaust the policy."""
        return self.max_attempts is not None and failures >= self.max_attempts
