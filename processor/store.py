"""The master record in PostgreSQL: a batch of events applied inside the caller's transaction.

Each event is one call of ``stocksync_apply`` (stocksync/migrations/R_master_rules.sql): claim the id in
``processed_events`` (``ON CONFLICT DO NOTHING``; a claimed id is a duplicate and changes nothing), a
conditional UPDATE that can never drive ``available`` below zero, the version bump and exactly one ledger
row. The calls of a batch go out in one pipeline, in order, so a SKU's events apply in log order. The record
each event emits is stored with it, so a duplicate re-emits exactly what the first delivery emitted. An event
the database cannot apply is recorded ``invalid`` by ``record_invalid`` (processor.isolation decides when)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import AsyncConnection

from schemas import inventory_events, processor_dlq, stock_changed, stock_rejected
from schemas.base import partition_key
from schemas.inventory_events import AnyInventoryEvent, OrderCancelled, OrderPlaced
from schemas.processor_dlq import EventDeadLettered
from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

Outcome = Literal[
    "applied", "duplicate", "rejected", "unknown_sku", "stale", "ignored", "observed", "invalid"
]

APPLY = (
    "SELECT outcome, before, after, version, reason "
    "FROM stocksync_apply(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

DEFAULT_SKEW = timedelta(0)
"""Clock skew tolerated between a channel and the counting system (PROCESSOR_CLOCK_SKEW_S): a sale stamped
closer than this (plus its stamp's precision) to a count is applied on top of it, never taken as counted.
0 by default: clocks synchronised by NTP; the precision of whole-second stamps is always allowed for."""


@dataclass(frozen=True)
class Result:
    """What happened to one event, and the record to publish for it (topic name without prefix)."""

    event: AnyInventoryEvent
    outcome: Outcome
    topic: str | None
    payload: bytes | None
    after: int | None = None
    version: int | None = None

    @property
    def key(self) -> bytes:
        return partition_key(self.event.tenant, self.event.sku)


def _params(e: AnyInventoryEvent, skew: timedelta) -> tuple[Any, ...]:
    sale_id = e.sale_event_id if isinstance(e, OrderCancelled) else None
    return (
        e.type,
        e.event_id,
        e.tenant,
        e.sku,
        e.quantity,
        e.occurred_at,
        e.channel,
        e.connection_id,
        sale_id,
        skew,
    )


def _emitted(
    e: AnyInventoryEvent, outcome: str, after: int | None, version: int | None
) -> tuple[str, bytes] | None:
    now = datetime.now(UTC)
    if outcome == "applied" and after is not None and version is not None:
        changed = StockChanged(
            tenant=e.tenant,
            sku=e.sku,
            available=after,
            version=version,
            cause_event_id=e.event_id,
            origin_connection_id=e.connection_id,
            occurred_at=e.occurred_at,
            received_at=e.received_at,
            committed_at=now,
        )
        return stock_changed.TOPIC, changed.model_dump_json().encode()
    if outcome in ("rejected", "unknown_sku") and isinstance(e, OrderPlaced):
        rejected = StockRejected(
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
        )
        return stock_rejected.TOPIC, rejected.model_dump_json().encode()
    return None


async def apply_batch(
    conn: AsyncConnection, events: list[AnyInventoryEvent], *, skew: timedelta = DEFAULT_SKEW
) -> list[Result]:
    """Apply `events` in order; return one Result per event. Call inside a transaction."""
    if not events:
        return []
    rows: list[tuple[Any, ...]] = []
    async with conn.cursor() as cur:
        await cur.executemany(APPLY, [_params(e, skew) for e in events], returning=True)
        async for _ in cur.results():
            row = await cur.fetchone()
            if row is None:
                raise RuntimeError("stocksync_apply returned no row")
            rows.append(row)
    results: list[Result] = []
    first: dict[str, Result] = {}  # an id seen twice in one batch: the second is a duplicate of the first
    stored: list[str] = []  # duplicates of earlier batches: their stored records are fetched below
    for event, (outcome, _before, after, version, _reason) in zip(events, rows, strict=True):
        if outcome == "duplicate":
            earlier = first.get(event.event_id)
            results.append(
                Result(
                    event,
                    "duplicate",
                    earlier.topic if earlier else None,
                    earlier.payload if earlier else None,
                )
            )
            if earlier is None:
                stored.append(event.event_id)
            continue
        topic, payload = _emitted(event, outcome, after, version) or (None, None)
        result = Result(event, outcome, topic, payload, after=after, version=version)
        first[event.event_id] = result
        results.append(result)
    fresh = [r for r in first.values() if r.topic is not None and r.payload is not None]
    if fresh:
        await conn.execute(
            "UPDATE processed_events p SET result_topic = v.topic, result = v.result::jsonb "
            "FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(id, topic, result) WHERE p.event_id = v.id",
            (
                [r.event.event_id for r in fresh],
                [r.topic for r in fresh],
                [(r.payload or b"").decode() for r in fresh],
            ),
        )
    if stored:
        cur = await conn.execute(
            "SELECT event_id, result_topic, result FROM processed_events WHERE event_id = ANY(%s)", (stored,)
        )
        found = {
            row[0]: (row[1], json.dumps(row[2]).encode() if row[2] is not None else None) async for row in cur
        }
        results = [
            Result(r.event, "duplicate", *found.get(r.event.event_id, (None, None)))
            if r.outcome == "duplicate" and r.topic is None
            else r
            for r in results
        ]
    return results


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


async def record_invalid(conn: AsyncConnection, event: AnyInventoryEvent, reason: str) -> Result:
    """Record `event` as ``invalid`` (processed_events and one ledger row, master untouched) and return its
    Result: the dead-letter record to publish, stored so that a redelivery re-emits it. Call inside a
    transaction; if the id is already claimed, the event is a duplicate and the stored result is returned."""
    payload = dead_letter(inventory_events.encode(event), "invalid", reason, event)
    cur = await conn.execute(
        "INSERT INTO processed_events (event_id, tenant, sku, outcome, result_topic, result) "
        "VALUES (%s, %s, %s, 'invalid', %s, %s::jsonb) ON CONFLICT (event_id) DO NOTHING",
        (event.event_id, event.tenant, event.sku, processor_dlq.TOPIC, payload.decode()),
    )
    if cur.rowcount == 0:
        cur = await conn.execute(
            "SELECT result_topic, result FROM processed_events WHERE event_id = %s", (event.event_id,)
        )
        row = await cur.fetchone()
        topic, stored = (row[0], json.dumps(row[1]).encode()) if row and row[1] is not None else (None, None)
        return Result(event, "duplicate", topic, stored)
    await conn.execute(
        "INSERT INTO ledger (event_id, tenant, sku, kind, outcome, reason, channel, connection_id, "
        "occurred_at, sale_event_id) VALUES (%s, %s, %s, %s, 'invalid', %s, %s, %s, %s, %s)",
        (
            event.event_id,
            event.tenant,
            event.sku,
            event.type,
            reason,
            event.channel,
            event.connection_id,
            event.occurred_at,
            event.sale_event_id if isinstance(event, OrderCancelled) else None,
        ),
    )
    return Result(event, "invalid", processor_dlq.TOPIC, payload)
