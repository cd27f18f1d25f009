"""allocation.availability: what an agent may see and hold, and its status (no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allocation.availability import agent_visible, status


def test_never_cancel_shows_only_the_slack_and_mirror_the_count_less_the_buffer() -> None:
    assert agent_visible(10, policy="never_cancel", buffer=1, granted=6) == 3
    assert agent_visible(10, policy="mirror", buffer=1, granted=6) == 9
    assert agent_visible(3, policy="never_cancel", buffer=0, granted=5) == 0  # a count below the grants


@given(
    available=st.integers(0, 10_000),
    buffer=st.integers(0, 100),
    granted=st.integers(0, 10_000),
)
def test_what_an_agent_sees_plus_the_grants_never_exceeds_the_stock_under_never_cancel(
    available: int, buffer: int, granted: int
) -> None:
    visible = agent_visible(available, policy="never_cancel", buffer=buffer, granted=granted)
    assert visible >= 0
    if granted + buffer <= available:  # the allocation's own invariant holds
        assert visible + granted + buffer == available


def test_status_is_out_at_zero_limited_at_or_below_the_threshold_else_in_stock() -> None:
    assert [status(v, limited_at=5) for v in (0, 1, 5, 6)] == [
        "out_of_stock",
        "limited_stock",
        "limited_stock",
        "in_stock",
    ]
