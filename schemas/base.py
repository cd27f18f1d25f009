"""What every event shares: immutability, a schema version, the tenant/SKU partition key."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Channel = Literal[
    "shopify",
    "amazon",
    "ebay",
    "woocommerce",
    "walmart",
    "tiktok",
    "flipkart",
    "etsy",
    "bigcommerce",
    "admin",
]
# A tenant id never contains "/", so the key "tenant/sku" is unambiguous.
Tenant = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
# PostgreSQL text cannot hold a NUL character: such a string would fail the database write; refused here.
EventId = Annotated[str, StringConstraints(min_length=3, max_length=256, pattern=r"^[^\x00]+$")]
Text = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00]*$")]
"""An id or label carried into the database (connection, order and line ids)."""

MAX_QUANTITY = 2_147_483_647
"""The largest quantity an event may carry: PostgreSQL's ``integer``, the type of the master record's
``available``, the ledger's columns and ``stocksync_apply``'s ``p_quantity``. A sum that would pass it
(a receipt on top of a huge count) is refused by the database and isolated by the processor as ``invalid``."""
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
"""Units of one change (a sale, a restock, a receipt): 1 to MAX_QUANTITY."""
Count = Annotated[int, Field(ge=0, le=MAX_QUANTITY)]
"""An absolute count of units: 0 to MAX_QUANTITY."""


class Event(BaseModel):
    """Base of every canonical event: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1


def partition_key(tenant: str, sku: str) -> bytes:
    """Kafka key of everything about one SKU: same key, same partition, applied in order."""
    return f"{tenant}/{sku}".encode()
