"""Fan-out planning: coalescing order, buffer and allocation, pausing (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from channels.connection import channel_quantity
from fanout.plan import latest_per_sku, precedence_of, target_for
from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def change(sku: str, version: int, available: int, tenant: str = "acme") -> StockChanged:
    return StockChanged(
        tenant=tenant,
        sku=sku,
        available=available,
        version=version,
        cause_event_id=f"e-{sku}-{version}",
        origin_connection_id=None,
        occurred_at=NOW,
        received_at=NOW,
        committed_at=NOW,
    )


def rejection(sku: str, version: int, available: int) -> StockRejected:
    return StockRejected(
        tenant="acme",
        sku=sku,
        requested=available + 1,
        available=available,
        version=version,
        reason="out_of_stock",
        cause_event_id=f"r-{sku}-{version}",
        origin_connection_id=None,
        order_id="o",
        occurred_at=NOW,
        received_at=NOW,
        rejected_at=NOW,
    )


def test_newest_version_wins_even_when_delivered_out_of_order() -> None:
    records = [
        change("A", 1, 9),
        change("B", 1, 4),
        change("A", 3, 7),
        change("A", 2, 8),
        change("A", 1, 9, "other"),
    ]
    assert [(r.tenant, r.sku, r.version) for r in latest_per_sku(records)] == [
        ("acme", "A", 3),
        ("acme", "B", 1),
        ("other", "A", 1),
    ]


def test_a_rejection_comes_after_the_change_of_its_version_and_before_the_next() -> None:
    assert (
        precedence_of(change("A", 5, 1))
        < precedence_of(rejection("A", 5, 1))
        < precedence_of(change("A", 6, 1))
    )
    assert latest_per_sku([change("A", 5, 1), rejection("A", 5, 1)])[0].type == "stock_rejected"
    assert latest_per_sku([rejection("A", 5, 1), change("A", 6, 3)])[0].type == "stock_changed"


@pytest.mark.parametrize(
    ("available", "buffer", "allocation", "shown"),
    [(10, 0, 1.0, 10), (10, 2, 1.0, 8), (1, 2, 1.0, 0), (10, 2, 0.5, 4), (7, 0, 0.3, 2), (0, 0, 1.0, 0)],
)
def test_buffer_and_allocation(available: int, buffer: int, allocation: float, shown: int) -> None:
    assert channel_quantity(available, buffer=buffer, allocation=allocation) == shown


def test_a_rejection_pauses_the_listing_unless_told_not_to() -> None:
    paused = target_for(rejection("A", 5, 3), "c1", buffer=0, allocation=1.0, pause_on_rejection=True)
    assert paused is not None
    assert (paused.quantity, paused.paused) == (0, True)
    assert target_for(rejection("A", 5, 3), "c1", buffer=0, allocation=1.0, pause_on_rejection=False) is None
    shown = target_for(change("A", 6, 3), "c1", buffer=1, allocation=1.0, pause_on_rejection=True)
    assert shown is not None
    assert (shown.quantity, shown.paused, shown.precedence) == (2, False, (6, 0))
