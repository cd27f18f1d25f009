"""Topic ``stock.changed``: the master count of a SKU after a committed change, keyed by tenant/SKU.

`version` grows by one per applied change of that SKU; consumers keep the highest version they saw and
ignore older ones, so redelivery and reordering across retries are harmless.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, PositiveInt

from schemas.base import Count, Event, EventId, Sku, Tenant

TOPIC = "stock.changed"


class StockChanged(Event):
    type: Literal["stock_changed"] = "stock_changed"
    tenant: Tenant
    sku: Sku
    available: Count
    version: PositiveInt
    cause_event_id: EventId
    origin_connection_id: str | None
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    committed_at: AwareDatetime
    # never_cancel: the fan-out writes only what stock.allocated grants; mirror: every channel shows the
    # master count. Records from before allocation carry none: mirror, as they were written.
    policy: Literal["never_cancel", "mirror"] = "mirror"


def decode(raw: bytes) -> StockChanged:
    return StockChanged.model_validate_json(raw)
