"""Coalescing: of many changes to one SKU only the newest version needs to reach a channel."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.stock_changed import StockChanged


def latest_per_sku(changes: Iterable[StockChanged]) -> list[StockChanged]:
    """The highest-version change per (tenant, sku), in first-seen order of the SKUs."""
    latest: dict[tuple[str, str], StockChanged] = {}
    for c in changes:
        key = (c.tenant, c.sku)
        if key not in latest or c.version > latest[key].version:
            latest[key] = c
    return list(latest.values())
