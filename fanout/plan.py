"""What each channel connection should show, decided without I/O.

Coalescing: of many records about one SKU only the newest matters. Records are ordered by (version, kind):
a ``stock.rejected`` carries the version the master had when it refused the sale, so at equal version it
comes after the ``stock.changed`` that produced that version, and the next change (a higher version) comes
after it. A target at or below what a connection last confirmed is never sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

Record = StockChanged | StockRejected
Order = tuple[int, int]  # (master version, 0 for a change / 1 for a rejection at that version)


def order_of(record: Record) -> Order:
    if isinstance(record, StockChanged):
        return (record.version, 0)
    return (record.version or 0, 1)


def latest_per_sku(records: Iterable[Record]) -> list[Record]:
    """The newest record per (tenant, sku), in first-seen order of the SKUs."""
    latest: dict[tuple[str, str], Record] = {}
    for r in records:
        key = (r.tenant, r.sku)
        if key not in latest or order_of(r) > order_of(latest[key]):
            latest[key] = r
    return list(latest.values())


def channel_quantity(available: int, *, buffer: int, allocation: float) -> int:
    """What a connection may show: the master count less its safety buffer, times its share, never < 0."""
    return math.floor(max(0, available - buffer) * allocation)


@dataclass(frozen=True)
class Target:
    """One SKU's quantity for one connection, and why."""

    connection_id: str
    sku: str
    quantity: int
    order: Order
    cause: Record

    @property
    def paused(self) -> bool:
        return isinstance(self.cause, StockRejected)


def target_for(
    record: Record, connection_id: str, *, buffer: int, allocation: float, pause_on_rejection: bool
) -> Target | None:
    """The target a record sets for a connection; None when a rejection should not pause the listing."""
    if isinstance(record, StockChanged):
        quantity = channel_quantity(record.available, buffer=buffer, allocation=allocation)
    elif pause_on_rejection:
        # A refused sale means some channel showed stock that was not there: show none until the next change.
        quantity = 0
    else:
        return None
    return Target(connection_id, record.sku, quantity, order_of(record), record)
