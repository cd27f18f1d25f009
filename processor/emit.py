"""What the processor publishes for each decision, serialised once: ``stock.changed`` for an applied change,
``stock.rejected`` for a refused sale, ``processor.dlq`` for an event that could not be applied.

Pure (no I/O): the store keeps the exact bytes made here beside the event id, so a redelivered event re-emits
them unchanged instead of being serialised again.

``stock.changed`` and ``stock.rejected`` records are serialised from their fields by pydantic-core in the
schema's field order, without building the model: their values come from events the gateway validated and
from the master record (whose constraints keep counts in range), and the model's validation was 70 % of what
a record cost (5.3 of 7 µs on the bench box, a thousand times per batch). tests/unit/test_processor_emit.py
requires the bytes the schema's own ``model_dump_json`` makes, and that they decode, on generated decisions.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import to_json

from allocation.rules import Policy
from schemas import inventory_events, processor_dlq, stock_changed, stock_rejected
from schemas.base import partition_key
from schemas.inventory_events import AnyInventoryEvent, OrderPlaced
from schemas.inventory_events import ReservationCommitted as Committed
from schemas.processor_dlq import EventDeadLettered
from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

Outcome = Literal[
    "applied", "duplicate", "rejected", "unknown_sku", "stale", "ignored", "observed", "invalid"
]


@dataclass(frozen=True)
class Decision:
    """What the master rules decided for one event (processor.store), before anything is serialised."""

    event: AnyInventoryEvent
    outcome: Outcome
    after: int | None = None
    version: int | None = None


@dataclass(frozen=True)
class Result:
    """What happened to one event, and the record to publish for it (topic name without prefix)."""

    event: AnyInventoryEvent
    outcome: Outcome
    topic: str | None
    payload: bytes | None
    after: int | None = None
    version: int | None = None
    allotment: bytes | None = None  # the SKU's stock.allocated record, on the batch's last event of the SKU

    @property
    def key(self) -> bytes:
        return partition_key(self.event.tenant, self.event.sku)


def _serialised(schema: type[BaseModel], **values: Any) -> bytes:
    """The JSON bytes ``schema(**values).model_dump_json()`` makes (field order and defaults the schema's),
    for values that the schema accepts as they are."""
    fields = schema.model_fields
    return to_json({name: values[name] if name in values else fields[name].default for name in fields})


def emit(decision: Decision, *, policy: Policy = "mirror", now: datetime | None = None) -> Result:
    """The Result of a fresh decision, its record serialised (none for stale, ignored and observed, nor for
    a committed reservation: its units left the count at the hold);
    `policy` is the SKU's allocation policy, which tells the fan-out how to show it."""
    e, outcome, after, version = decision.event, decision.outcome, decision.after, decision.version
    now = now or datetime.now(UTC)
    topic: str | None = None
    payload: bytes | None = None
    if outcome == "applied" and after is not None and version is not None and not isinstance(e, Committed):
        topic = stock_changed.TOPIC
        payload = _serialised(
            StockChanged,
            tenant=e.tenant,
            sku=e.sku,
            available=after,
            version=version,
            cause_event_id=e.event_id,
            origin_connection_id=e.connection_id,
            occurred_at=e.occurred_at,
            received_at=e.received_at,
            committed_at=now,
            policy=policy,
        )
    elif outcome in ("rejected", "unknown_sku") and isinstance(e, OrderPlaced):
        topic = stock_rejected.TOPIC
        payload = _serialised(
            StockRejected,
            tenant=e.tenant,
            sku=e.sku,
            requested=e.quantity,
            available=after,
            version=version,
            reason="unknown_sku" if outcome == "unknown_sku" else "out_of_stock",
            cause_event_id=e.event_id,
            origin_connection_id=e.connection_id,
            order_id=e.order_id,
            occurred_at=e.occurred_at,
            received_at=e.received_at,
            rejected_at=now,
            policy=policy,
        )
    return Result(e, outcome, topic, payload, after=after, version=version)


def dead_letter(
    raw: bytes, problem: processor_dlq.Problem, reason: str, event: AnyInventoryEvent | None = None
) -> bytes:
    """The ``processor.dlq`` record of an event that could not be applied (`raw` is its record value)."""
    return (
        EventDeadLettered(
            problem=problem,
            reason=reason,
            event_id=event.event_id if event else None,
            tenant=event.tenant if event else None,
            sku=event.sku if event else None,
            value_b64=base64.b64encode(raw).decode(),
            dead_lettered_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode()
    )


def invalid(event: AnyInventoryEvent, reason: str) -> Result:
    """The Result of an event that cannot be applied: its dead letter."""
    payload = dead_letter(inventory_events.encode(event), "invalid", reason, event)
    return Result(event, "invalid", processor_dlq.TOPIC, payload)
