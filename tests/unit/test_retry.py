"""The shared retry policy: what is retried, how long it waits (Retry-After first), and when it gives up."""

from __future__ import annotations

import aiohttp
import pytest

from channels.errors import ChannelError, CompareMismatch
from stocksync.retry import RetryPolicy, is_failure, is_retryable, retry_after


class Waits:
    """A sleep that records the waits instead of taking them."""

    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


class Flaky:
    """Fails with each of `errors` in turn, then returns `value`."""

    def __init__(self, *errors: BaseException, value: str = "done") -> None:
        self.errors, self.value, self.calls = list(errors), value, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def busy(retry_after_s: float | None = None) -> ChannelError:
    return ChannelError("429", status=429, retryable=True, retry_after_s=retry_after_s)


def test_classification() -> None:
    assert is_retryable(aiohttp.ClientConnectionError())
    assert is_retryable(TimeoutError())
    assert is_retryable(busy())
    assert is_failure(busy())
    refused = ChannelError("400", status=400, retryable=False)
    assert not is_retryable(refused)
    assert is_failure(refused)
    assert not is_retryable(CompareMismatch("moved", current=3))
    assert not is_retryable(ValueError("a bug"))
    assert not is_failure(ValueError("a bug"))
    assert retry_after(busy(2.5)) == 2.5
    assert retry_after(busy()) is None
    assert retry_after(None) is None


async def test_transient_failures_are_retried_with_capped_jittered_backoff() -> None:
    waits = Waits()
    policy = RetryPolicy(deadline_s=60, backoff_base_s=1.0, backoff_cap_s=3.0, sleep=waits)
    call = Flaky(TimeoutError(), busy(), aiohttp.ClientConnectionError())
    assert await policy.call(call) == "done"
    assert call.calls == 4
    assert len(waits.taken) == 3
    assert all(0 <= w <= 3.0 for w in waits.taken)


async def test_retry_after_is_honoured_and_capped() -> None:
    waits = Waits()
    assert await RetryPolicy(deadline_s=60, sleep=waits).call(Flaky(busy(7.0))) == "done"
    capped = Waits()
    assert await RetryPolicy(deadline_s=60, retry_after_cap_s=2.0, sleep=capped).call(Flaky(busy(7.0)))
    assert waits.taken == [7.0]
    assert capped.taken == [2.0]


async def test_no_attempt_starts_after_the_deadline() -> None:
    waits = Waits()
    call = Flaky(busy(0.0), busy(0.0))
    outcome = await RetryPolicy(deadline_s=0, sleep=waits).attempt(call)
    assert not outcome.ok
    assert outcome.attempts == 1
    assert waits.taken == []
    assert isinstance(outcome.error, ChannelError)
    assert outcome.error.status == 429


async def test_attempt_limit_and_real_attempt_count() -> None:
    outcome = await RetryPolicy(deadline_s=60, max_attempts=3, sleep=Waits()).attempt(
        Flaky(*(busy(0.0) for _ in range(5)))
    )
    assert outcome.attempts == 3
    assert isinstance(outcome.error, ChannelError)
    ok = await RetryPolicy(deadline_s=60, sleep=Waits()).attempt(Flaky(busy(0.0)))
    assert ok.ok
    assert ok.attempts == 2


async def test_permanent_failures_are_not_retried_and_bugs_propagate() -> None:
    policy = RetryPolicy(deadline_s=60, sleep=Waits())
    refused = Flaky(ChannelError("400", status=400, retryable=False))
    outcome = await policy.attempt(refused)
    assert outcome.attempts == 1
    assert refused.calls == 1
    with pytest.raises(CompareMismatch):
        await policy.call(Flaky(CompareMismatch("moved", current=1)))
    with pytest.raises(ValueError, match="bug"):
        await policy.attempt(Flaky(ValueError("bug")))
