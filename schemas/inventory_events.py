"""Topic ``inventory.events``: everything that may change a master count, keyed by tenant/SKU.

``event_id`` is stable per real-world change (channel-prefixed, one per order line), so a webhook retry,
a backfill by the reconciler and a replay all carry the same id and apply at most once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints, TypeAdapter

from schemas.base import Channel, Count, Event, EventId, Quantity, Sku, Tenant, Text, partition_key

TOPIC = "inventory.events"


class OrderPlaced(Event):
    """A buyer ordered `quantity` of `sku` on a channel: one event per order line."""

    type: Literal["order_placed"] = "order_placed"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Quantity
    connection_id: Text
    channel: Channel
    order_id: Text
    line_id: Text
    occurred_at: AwareDatetime
    received_at: AwareDatetime


class OrderCancelled(Event):
    """An order line was cancelled or refunded with restock: the units its sale took return to stock.

    Only a sale that took stock (applied, or already inside a count) is restocked; ``sale_event_id`` names it.
    """

    type: Literal["order_cancelled"] = "order_cancelled"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Quantity
    connection_id: Text
    channel: Channel
    order_id: Text
    line_id: Text
    sale_event_id: EventId
    occurred_at: AwareDatetime
    received_at: AwareDatetime


class StockCounted(Event):
    """The seller's system of record says `quantity` units were available as of `occurred_at`."""

    type: Literal["stock_counted"] = "stock_counted"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Count
    connection_id: Text | None = None
    channel: Channel = "admin"
    occurred_at: AwareDatetime
    received_at: AwareDatetime


class StockReceived(Event):
    """`quantity` units were received into stock (a delivery, a return back on the shelf) at `occurred_at`.

    Added on top of the master count; a receipt for a SKU the master has never seen creates it.
    """

    type: Literal["stock_received"] = "stock_received"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Quantity
    connection_id: Text | None = None
    channel: Channel = "admin"
    reference: Text | None = Field(None, max_length=200, description="The seller's receipt or PO number.")
    occurred_at: AwareDatetime
    received_at: AwareDatetime


class StockObserved(Event):
    """A channel reported its own count of a SKU (an edit on the channel side, or its echo of a write of
    ours): a drift signal. Recorded in the ledger beside the master's count; the master does not change
    (master wins; the reconciler corrects a channel that drifted)."""

    type: Literal["stock_observed"] = "stock_observed"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Count
    connection_id: Text
    channel: Channel
    occurred_at: AwareDatetime
    received_at: AwareDatetime


ReservationId = Annotated[str, StringConstraints(pattern=r"^rsv_[0-9a-f]{8,64}$")]
"""A reservation's id: ``rsv_`` and hex digits (ingest.reservations derives it from the tenant and the
idempotency key)."""


class ReservationHeld(Event):
    """An agent checkout asks to hold `quantity` of `sku` until `expires_at` (issue 16): taken from the
    master count like a sale when the units are there (under never_cancel only from what no marketplace was
    granted), refused otherwise. ``event_id`` is ``rsv:<reservation_id>:hold``."""

    type: Literal["reservation_held"] = "reservation_held"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Quantity
    reservation_id: ReservationId
    expires_at: AwareDatetime
    connection_id: Text | None = None
    channel: Literal["agent"] = "agent"
    occurred_at: AwareDatetime
    received_at: AwareDatetime


class ReservationCommitted(Event):
    """The agent's checkout completed: the held units become a sale (the count does not move again). Refused
    once the hold expired or was released. ``event_id`` is ``rsv:<reservation_id>:commit``."""

    type: Literal["reservation_committed"] = "reservation_committed"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Quantity
    reservation_id: ReservationId
    connection_id: Text | None = None
    channel: Literal["agent"] = "agent"
    occurred_at: AwareDatetime
    received_at: AwareDatetime


class ReservationReleased(Event):
    """A hold given back (``released`` by the agent, or ``expired``): its units return to the count unless it
    was committed. ``event_id`` is ``rsv:<reservation_id>:release``, whichever the reason, so a release and
    an expiry of the same hold apply once."""

    type: Literal["reservation_released"] = "reservation_released"
    event_id: EventId
    tenant: Tenant
    sku: Sku
    quantity: Quantity
    reservation_id: ReservationId
    reason: Literal["released", "expired"]
    connection_id: Text | None = None
    channel: Literal["agent"] = "agent"
    occurred_at: AwareDatetime
    received_at: AwareDatetime


ReservationEvent = ReservationHeld | ReservationCommitted | ReservationReleased
AnyInventoryEvent = (
    OrderPlaced
    | OrderCancelled
    | StockReceived
    | StockCounted
    | StockObserved
    | ReservationHeld
    | ReservationCommitted
    | ReservationReleased
)
ChannelEvent = OrderPlaced | OrderCancelled | StockObserved
"""What a channel's webhook can say: sales, restocks, and its own count (a drift signal)."""
InventoryEvent = Annotated[AnyInventoryEvent, Field(discriminator="type")]
_adapter: TypeAdapter[InventoryEvent] = TypeAdapter(InventoryEvent)


def decode(raw: bytes) -> AnyInventoryEvent:
    """Parse one record value; raises pydantic.ValidationError on anything malformed."""
    return _adapter.validate_json(raw)


def encode(event: AnyInventoryEvent) -> bytes:
    """The record value of `event`: the bytes of ``event.model_dump_json()``, as its serializer makes them."""
    return event.__pydantic_serializer__.to_json(event)


def key(event: AnyInventoryEvent) -> bytes:
    """The record key of `event`: its tenant/SKU, so a SKU's events share a partition and keep their order."""
    return partition_key(event.tenant, event.sku)


def reservation_event_id(reservation_id: str, step: Literal["hold", "commit", "release"]) -> str:
    """The event id of one step of a reservation: each step happens at most once per reservation."""
    return f"rsv:{reservation_id}:{step}"


def headers(event: AnyInventoryEvent, **extra: str) -> dict[str, str]:
    """The record headers every publisher sets: the event's channel and type (plus `extra`)."""
    return {"channel": event.channel, "type": event.type, **extra}
