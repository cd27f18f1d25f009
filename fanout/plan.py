"""What each channel connection should show, decided without I/O.

Coalescing: of many records about one SKU only the newest matters. Records take precedence by (version, kind):
a ``stock.rejected`` carries the version the master had when it refused the sale, so at equal version it
comes after the ``stock.changed`` that produced that version, and the next change (a higher version) comes
after it. A target at or below what a connection last confirmed is never sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from channels.connection import channel_quantity
from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

Record = StockChanged | StockRejected
Precedence = tuple[int, int]
"""Which of two records about a SKU is newer: (master version, 0 for a change / 1 for a rejection at it)."""


def precedence_of(record: Record) -> Precedence:
    if isinstance(record, StockChanged):
        return (record.version, 0)
    return (record.version or 0, 1)


def latest_per_sku(records: Iterable[Record]) -> list[Record]:
    """The newest record per (tenant, sku), in first-seen order of the SKUs."""
    latest: dict[tuple[str, str], Record] = {}
    for r in records:
        key = (r.tenant, r.sku)
        if key not in latest or precedence_of(r) > precedence_of(latest[key]):
            latest[key] = r
    return list(latest.values())


@dataclass(frozen=True)
class Target:
    """One SKU's quantity for one connection, and why."""

    connection_id: str
    sku: str
    quantity: int
    precedence: Precedence
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
    return Target(connection_id, record.sku, quantity, precedence_of(record), record)
