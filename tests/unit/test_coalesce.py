"""Coalescing keeps only the newest version per SKU."""

from __future__ import annotations

from datetime import UTC, datetime

from fanout.coalesce import latest_per_sku
from schemas.stock_changed import StockChanged

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


def test_newest_version_wins_even_when_delivered_out_of_order() -> None:
    changes = [
        change("A", 1, 9),
        change("B", 1, 4),
        change("A", 3, 7),
        change("A", 2, 8),
        change("A", 1, 9, "other"),
    ]
    latest = latest_per_sku(changes)
    assert [(c.tenant, c.sku, c.version, c.available) for c in latest] == [
        ("acme", "A", 3, 7),
        ("acme", "B", 1, 4),
        ("other", "A", 1, 9),
    ]


def test_nothing_in_nothing_out() -> None:
    assert latest_per_sku([]) == []
