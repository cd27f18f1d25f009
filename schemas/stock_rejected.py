"""Topic ``stock.rejected``: a sale the master record refused, so the channel can cancel it.

Keyed by tenant/SKU like ``stock.changed``; the master count is untouched by a rejection.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, NonNegativeInt

from schemas.base import Count, Event, EventId, Quantity, Sku, Tenant

TOPIC = "stock.rejected"

RejectReason = Literal["out_of_stock", "unknown_sku"]


class StockRejected(Event):
    type: Literal["stock_rejected"] = "stock_rejected"
    tenant: Tenant
    sku: Sku
    requested: Quantity
    available: Count | None
    version: NonNegativeInt | None
    reason: RejectReason
    cause_event_id: EventId
    origin_connection_id: str | None
    order_id: str | None
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    rejected_at: AwareDatetime
    policy: Literal["never_cancel", "mirror"] = "mirror"  # as in stock.changed


def decode(raw: bytes) -> StockRejected:
    return StockRejected.model_validate_json(raw)
