"""Topic ``stock.allocated``: a SKU's escrow grants after a batch (policy ``never_cancel``) and the writes
that raise them, keyed by tenant/SKU like ``stock.changed``.

`seq` grows by one per allocation change of the SKU; the fan-out keeps, per connection, the highest `seq`
whose write it confirmed and never sends an older one. A write is made only where `write` is set: an
absolute set (`expect` None) to a connection whose grant was 0, or a compare-and-set raise from `expect`
(``allocation/rules.py`` says why each keeps the invariant).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, NonNegativeInt, PositiveInt

from schemas.base import Count, Event, EventId, Sku, Tenant

TOPIC = "stock.allocated"


class Allotment(BaseModel):
    """One connection's grant after the batch, and the write that raises it (if any)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: str
    granted: Count
    write: Count | None = None  # what the connection is to show
    expect: Count | None = None  # compare-and-set base; None: an absolute write


class StockAllocated(Event):
    type: Literal["stock_allocated"] = "stock_allocated"
    tenant: Tenant
    sku: Sku
    seq: PositiveInt
    available: Count
    version: NonNegativeInt  # the master version the grants were decided on
    slack: int  # sellable units granted to no connection (negative: grants exceed the stock)
    connections: dict[str, Allotment]
    cause_event_id: EventId
    received_at: AwareDatetime
    committed_at: AwareDatetime


def decode(raw: bytes) -> StockAllocated:
    return StockAllocated.model_validate_json(raw)
