"""The retry policy of calls to a remote API (the fan-out's writes, the reconciler's reads and writes).

Transient failures (network, timeouts, an error whose ``retryable`` is true) are retried with exponential
backoff and full jitter, or after the server's ``retry_after_s`` when it gave one, until an attempt limit or a
deadline (no attempt starts once a failed one ended past it; the wait the server asked for is honoured).
Errors are classified by duck typing, so this module knows no channel.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
)
from tenacity.stop import stop_base

T = TypeVar("T")


def is_failure(exc: BaseException) -> bool:
    """A remote call's failure (transport, timeout, or an error that says whether to retry), not a bug."""
    return isinstance(exc, aiohttp.ClientError | TimeoutError) or isinstance(
        getattr(exc, "retryable", None), bool
    )


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt: a transport error or timeout, or an error whose ``retryable`` is true."""
    return isinstance(exc, aiohttp.ClientError | TimeoutError) or getattr(exc, "retryable", None) is True


def retry_after(exc: BaseException | None) -> float | None:
    """The wait the server asked for (an error's ``retry_after_s``), if any."""
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Outcome:
    """How a call ended: after `attempts` tries, with `error` the last failure (None: it succeeded)."""

    attempts: int
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures for up to `deadline_s` (and `max_attempts` tries, None: no limit).

    Backoff: the server's Retry-After (at most `retry_after_cap_s`), else uniform in [0, min(cap, base·2^n)];
    `sleep` is injectable so tests can record the waits instead of taking them.
    """

    deadline_s: float
    max_attempts: int | None = None
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 10.0
    retry_after_cap_s: float | None = None
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False, compare=False)

    def wait(self, state: RetryCallState) -> float:
        """The pause before the next attempt, given the one that just failed."""
        asked = retry_after(state.outcome.exception() if state.outcome else None)
        if asked is not None:
            return asked if self.retry_after_cap_s is None else min(asked, self.retry_after_cap_s)
        cap = min(self.backoff_cap_s, self.backoff_base_s * 2**state.attempt_number)
        return random.uniform(0, cap)  # noqa: S311 - jitter, not secrets

    def retrying(self) -> AsyncRetrying:
        """A tenacity loop with this policy; the last failure is re-raised as it was."""
        stop: stop_base = stop_after_delay(self.deadline_s)
        stop = stop | (stop_after_attempt(self.max_attempts) if self.max_attempts else stop_never)
        return AsyncRetrying(
            retry=retry_if_exception(is_retryable), wait=self.wait, stop=stop, sleep=self.sleep, reraise=True
        )

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()`'s result; its last failure raised once the policy gives up (or at once if not transient)."""
        async for attempt in self.retrying():
            with attempt:
                return await fn()
        raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover

    async def attempt(self, fn: Callable[[], Awaitable[object]]) -> Outcome:
        """Run `fn` under the policy and say how it ended; a remote failure is returned, anything else (a bug)
        propagates."""
        attempts = 0
        try:
            async for attempt in self.retrying():
                with attempt:
                    attempts += 1
                    await fn()
        except Exception as exc:
            if not is_failure(exc):
                raise
            return Outcome(attempts, exc)
        return Outcome(attempts)
