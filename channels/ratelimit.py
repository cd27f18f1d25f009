"""Token buckets: a channel simulator enforces an API budget with one, a channel client stays within it.

A connection's budget is charged once per HTTP request, by the client that makes the request: a bulk write
that takes one call per product (TikTok) or a read and a write per listing (Etsy) pays for each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels.connection import Connection

HEADROOM = 0.9  # stay a little under the published rate: network jitter must not turn into 429s


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up. Not thread-safe; one event loop."""

    def __init__(
        self, rate_per_s: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate_per_s > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate_per_s, burst, clock
        self._tokens, self._at = burst, clock()
        self.waited_s = 0.0  # total time acquire() has waited so far (the fan-out's budget-wait metric)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def level(self) -> float:
        """The tokens saved up now."""
        self._refill()
        return self._tokens

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
        self.waited_s += waited
        return waited


def connection_budget(connection: Connection, rate_per_s: float, burst: float) -> TokenBucket:
    """The connection's own budget if it sets one, else the channel's (`rate_per_s`, `burst`), each request
    at HEADROOM of it."""
    rate = (connection.rate_limit_per_s or rate_per_s) * HEADROOM
    return TokenBucket(rate, max(1.0, connection.rate_burst or burst))
