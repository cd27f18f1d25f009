"""Topic ``fanout.dlq``: channel updates that could not be delivered, kept with why, for ``dlq replay``.

Keyed by tenant/SKU. Holds the original ``stock.changed`` / ``stock.rejected`` record, the connection, the
quantity that was to be shown, how many attempts were made and the last error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, NonNegativeInt, PositiveInt

from schemas.base import Event, Sku, Tenant

TOPIC = "fanout.dlq"


class UpdateDeadLettered(Event):
    type: Literal["update_dead_lettered"] = "update_dead_lettered"
    connection_id: str
    channel: str
    tenant: Tenant
    sku: Sku
    quantity: NonNegativeInt
    version: NonNegativeInt
    original_topic: str
    original: dict[str, Any]
    attempts: PositiveInt
    status: int | None
    last_error: str
    failed_at: AwareDatetime


def decode(raw: bytes) -> UpdateDeadLettered:
    return UpdateDeadLettered.model_validate_json(raw)
