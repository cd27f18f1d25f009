"""Token bucket arithmetic with a fake clock (pure logic)."""

from __future__ import annotations

import pytest

from channels.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token takes 1/rate seconds
    clock.now += 0.5
    assert bucket.take() == 0.0
    clock.now += 10  # idle time saves up no more than the burst
    assert [bucket.take() for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.5)]


def test_refused_take_consumes_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(1.0, 1, clock=clock)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(1.0)
    assert bucket.take() == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.take() == 0.0


def test_nonsense_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="rate_per_s > 0"):
        TokenBucket(0, 1)
