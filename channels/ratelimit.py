"""Token buckets: a channel simulator uses one to enforce an API budget, the fan-out one to stay within it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up. Not thread-safe; one event loop."""

    def __init__(
        self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate_per_s, burst, clock
        self._tokens, self._at = burst, clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens and return 0.0, or take nothing and return the seconds until `n` are there."""
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate

    async def acquire(self, n: float = 1.0) -> float:
        """Wait until `n` tokens can be taken, take them; return how long that took."""
        waited = 0.0
        while (wait := self.take(n)) > 0:
            await asyncio.sleep(wait)  # the budget's own schedule
            waited += wait
        return waited
