"""What every event shares: immutability, a schema version, the tenant/SKU partition key."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

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
EventId = Annotated[str, StringConstraints(min_length=3, max_length=256)]


class Event(BaseModel):
    """Base of every canonical event: frozen, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1


def partition_key(tenant: str, sku: str) -> bytes:
    """Kafka key of everything about one SKU: same key, same partition, applied in order."""
    return f"{tenant}/{sku}".encode()
