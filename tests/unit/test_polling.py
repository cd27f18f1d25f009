"""The polling baseline of the demo: channels sell from their own counts, a sync job copies the master out."""

from __future__ import annotations

import pytest

from lab.polling import (
    Order,
    by_phase,
    cancellations_needed,
    demanded,
    sell_through,
    sellable,
    simulate_polling,
)


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


def test_units_sold_are_the_filled_ones_and_sell_through_is_over_what_could_sell() -> None:
    orders = [Order(at_s=float(i), channel=ch, sku="A", quantity=1) for i in range(5) for ch in ("x", "y")]
    result = simulate_polling(orders, {"A": 3}, ["x", "y"], poll_minutes=15)
    # six taken, the first three filled, the three after them to cancel
    assert (result.units_sold, result.units_filled, result.cancellations) == (6, 3, 3)
    assert result.cancelled_at == [1.0, 2.0, 2.0]
    assert demanded(orders) == {"A": 10}
    assert sellable({"A": 3, "B": 4}, orders) == 3  # B was asked for by no one: it could not sell
    assert sell_through(result.units_filled, {"A": 3}, orders) == 1.0
    assert sell_through(2, {"A": 5}, [Order(0.0, "x", "A", 4)]) == 0.5  # min(5 in stock, 4 asked)


def test_the_first_pass_comes_at_the_phase_and_a_shorter_sale_sees_none() -> None:
    # A sale of 60 s against a 5-minute job whose next pass is 150 s away: no pass, every channel sells the
    # stock; the same job passing 30 s after the opening brings both channels to what is left.
    orders = [Order(10.0, "x", "A", 3), *(Order(40.0 + i, ch, "A", 1) for i in range(3) for ch in ("x", "y"))]
    late = simulate_polling(orders, {"A": 3}, ["x", "y"], poll_minutes=5, write_gap_s=0, phase_s=150)
    assert (late.syncs, late.accepted, late.cancellations, late.phase_s) == (0, 4, 3, 150)
    early = simulate_polling(orders, {"A": 3}, ["x", "y"], poll_minutes=5, write_gap_s=0, phase_s=30)
    assert (early.syncs, early.accepted, early.cancellations) == (1, 1, 0)


def test_a_pass_never_takes_longer_than_the_interval() -> None:
    # 30-second interval, three channels: the writes come 10 s apart (at 30, 40, 50), not the 20 s asked for,
    # so y already shows 0 at 45 s and refuses the buyer.
    orders = [Order(1.0, "x", "A", 2), Order(45.0, "y", "A", 1)]
    result = simulate_polling(orders, {"A": 2}, ["x", "y", "z"], poll_minutes=0.5, write_gap_s=20)
    assert (result.accepted, result.refused, result.oversells) == (1, 1, 0)


def test_by_phase_plays_the_sale_at_every_phase_of_the_cycle() -> None:
    orders = [Order(10.0, "x", "A", 3), *(Order(40.0 + i, ch, "A", 1) for i in range(3) for ch in ("x", "y"))]
    runs = by_phase(orders, {"A": 3}, ["x", "y"], poll_minutes=1, phases=4, write_gap_s=0)
    assert [r.phase_s for r in runs] == [15.0, 30.0, 45.0, 60.0]
    # a pass before the late buyers (15 s, 30 s) stops them; one after them (45 s, 60 s) comes too late
    assert [r.cancellations for r in runs] == [0, 0, 3, 3]
    with pytest.raises(ValueError, match="phase_s must be above 0"):
        simulate_polling(orders, {"A": 3}, ["x"], poll_minutes=1, phase_s=61)
