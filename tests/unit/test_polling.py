"""The polling baseline of the demo: channels sell from their own counts, a sync job copies the master out."""

from __future__ import annotations

import pytest

from lab.polling import Order, cancellations_needed, simulate_polling


def test_every_channel_sells_the_whole_stock_before_the_first_sync() -> None:
    orders = [Order(at_s=float(i), channel=ch, sku="A", quantity=1) for i in range(5) for ch in ("x", "y")]
    result = simulate_polling(orders, {"A": 3}, ["x", "y"], poll_minutes=15)
    assert (result.accepted, result.refused, result.units_sold) == (6, 4, 6)
    assert result.oversells == 3
    assert result.cancellations == 3
    assert result.syncs == 0
    assert result.timeline[-1] == (2.0, 3)


def test_a_sync_copies_what_is_left_so_later_orders_are_refused() -> None:
    early = [Order(10.0, "x", "A", 2), Order(20.0, "y", "A", 2)]
    late = [Order(120.0, ch, "A", 1) for ch in ("x", "y")]
    result = simulate_polling(early + late, {"A": 5}, ["x", "y"], poll_minutes=1, write_gap_s=0)
    # After the sync at 60 s both channels show 5 - 4 = 1: one unit each, so one unit oversold.
    assert (result.accepted, result.units_sold, result.oversells, result.syncs) == (4, 6, 1, 2)
    assert result.undone_units == 0


def test_last_write_wins_undoes_a_sale_taken_between_read_and_write() -> None:
    # The job reads at 60 s (nothing sold: 1 left) and writes y at 70 s; y's sale at 65 s is overwritten,
    # so y shows 1 again and sells the same unit a second time.
    orders = [Order(65.0, "y", "A", 1), Order(80.0, "y", "A", 1)]
    result = simulate_polling(orders, {"A": 1}, ["x", "y"], poll_minutes=1, write_gap_s=10)
    assert result.undone_units == 1
    assert (result.accepted, result.oversells, result.cancellations) == (2, 1, 1)


def test_cancellations_serve_orders_first_come_first_served() -> None:
    taken = [Order(3.0, "x", "A", 1), Order(1.0, "y", "A", 2), Order(2.0, "x", "A", 2)]
    assert cancellations_needed(taken, {"A": 3}) == 1  # 2 at t=1 fills, 2 at t=2 does not, 1 at t=3 fills


def test_orders_on_an_unlisted_channel_or_a_zero_interval_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="does not list"):
        simulate_polling([Order(0.0, "z", "A", 1)], {"A": 1}, ["x"])
    with pytest.raises(ValueError, match="poll_minutes must be positive"):
        simulate_polling([], {"A": 1}, ["x"], poll_minutes=0)
