"""The master record in PostgreSQL: one event applied per call, inside the caller's transaction.

Each call first claims the event id in ``processed_events``; a claimed id is a duplicate and changes
nothing (its stored result is returned for re-emission). A sale is one conditional UPDATE that can never
drive ``available`` below zero. Every handled event writes exactly one ledger row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from schemas import stock_changed, stock_rejected
from schemas.base import partition_key
from schemas.inventory_events import OrderPlaced, StockCounted
from schemas.stock_changed import StockChanged
from schemas.stock_rejected import StockRejected

Outcome = Literal["applied", "duplicate", "rejected", "unknown_sku", "stale"]


@dataclass(frozen=True)
class Result:
    """What happened to one event, and the record to publish for it (topic name without prefix)."""

    outcome: Outcome
    topic: str | None
    payload: bytes | None
    key: bytes


async def _claim(conn: AsyncConnection, event_id: str, tenant: str, sku: str) -> bool:
    cur = await conn.execute(
        "INSERT INTO processed_events (event_id, tenant, sku, outcome) VALUES (%s, %s, %s, 'pending') "
        "ON CONFLICT (event_id) DO NOTHING RETURNING 1",
        (event_id, tenant, sku),
    )
    return await cur.fetchone() is not None


async def _stored(conn: AsyncConnection, event_id: str, tenant: str, sku: str) -> Result:
    cur = await conn.execute(
        "SELECT result_topic, result FROM processed_events WHERE event_id = %s", (event_id,)
    )
    row = await cur.fetchone()
    topic, result = (row[0], row[1]) if row else (None, None)
    payload = json.dumps(result).encode() if result is not None else None
    return Result("duplicate", topic, payload, partition_key(tenant, sku))


async def _finish(
    conn: AsyncConnection,
    event: OrderPlaced | StockCounted,
    outcome: Outcome,
    *,
    delta: int | None,
    before: int | None,
    after: int | None,
    version: int | None,
    reason: str | None,
    emit: StockChanged | StockRejected | None,
) -> Result:
    topic = stock_changed.TOPIC if isinstance(emit, StockChanged) else stock_rejected.TOPIC if emit else None
    payload = emit.model_dump_json().encode() if emit else None
    await conn.execute(
        "INSERT INTO ledger (event_id, tenant, sku, kind, delta, absolute, before, after, version, outcome, "
        "reason, channel, connection_id, occurred_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            event.event_id,
            event.tenant,
            event.sku,
            event.type,
            delta,
            event.quantity if isinstance(event, StockCounted) else None,
            before,
            after,
            version,
            outcome,
            reason,
            event.channel,
            event.connection_id,
            event.occurred_at,
        ),
    )
    await conn.execute(
        "UPDATE processed_events SET outcome = %s, result_topic = %s, result = %s WHERE event_id = %s",
        (outcome, topic, Jsonb(json.loads(payload)) if payload else None, event.event_id),
    )
    return Result(outcome, topic, payload, partition_key(event.tenant, event.sku))


@dataclass(frozen=True)
class SkuRow:
    available: int
    version: int
    counted_at: datetime | None

    def counted_since(self, at: datetime) -> bool:
        """True if a count as of `at` or later is applied: a change that happened at `at` is in it."""
        return self.counted_at is not None and self.counted_at >= at


async def _row(conn: AsyncConnection, tenant: str, sku: str, *, for_update: bool = False) -> SkuRow | None:
    query = "SELECT available, version, counted_at FROM inventory WHERE tenant = %s AND sku = %s"
    cur = await conn.execute(query + " FOR UPDATE" if for_update else query, (tenant, sku))
    row = await cur.fetchone()
    return SkuRow(row[0], row[1], row[2]) if row else None


def _changed(event: OrderPlaced | StockCounted, available: int, version: int) -> StockChanged:
    return StockChanged(
        tenant=event.tenant,
        sku=event.sku,
        available=available,
        version=version,
        cause_event_id=event.event_id,
        origin_connection_id=event.connection_id,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        committed_at=datetime.now(UTC),
    )


async def apply_order(conn: AsyncConnection, event: OrderPlaced) -> Result:
    """Decrement only if enough is available and no count as of the sale's time or later is applied."""
    if not await _claim(conn, event.event_id, event.tenant, event.sku):
        return await _stored(conn, event.event_id, event.tenant, event.sku)
    q = event.quantity
    cur = await conn.execute(
        "UPDATE inventory SET available = available - %(q)s, version = version + 1, updated_at = now() "
        "WHERE tenant = %(t)s AND sku = %(s)s AND available >= %(q)s "
        "AND (counted_at IS NULL OR counted_at < %(at)s) RETURNING available, version",
        {"q": q, "t": event.tenant, "s": event.sku, "at": event.occurred_at},
    )
    updated = await cur.fetchone()
    if updated is not None:
        after, version = updated
        return await _finish(
            conn,
            event,
            "applied",
            delta=-q,
            before=after + q,
            after=after,
            version=version,
            reason=None,
            emit=_changed(event, after, version),
        )
    row = await _row(conn, event.tenant, event.sku)
    if row is not None and row.counted_since(event.occurred_at):
        reason = f"sale at {event.occurred_at.isoformat()} is already in the count as of {row.counted_at}"
        return await _finish(
            conn,
            event,
            "stale",
            delta=-q,
            before=row.available,
            after=row.available,
            version=row.version,
            reason=reason,
            emit=None,
        )
    rejected = StockRejected(
        tenant=event.tenant,
        sku=event.sku,
        requested=q,
        available=row.available if row else None,
        version=row.version if row else None,
        reason="unknown_sku" if row is None else "out_of_stock",
        cause_event_id=event.event_id,
        origin_connection_id=event.connection_id,
        order_id=event.order_id,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
        rejected_at=datetime.now(UTC),
    )
    if row is None:
        reason = f"SKU {event.sku!r} is not in the master record of tenant {event.tenant!r}"
        return await _finish(
            conn,
            event,
            "unknown_sku",
            delta=-q,
            before=None,
            after=None,
            version=None,
            reason=reason,
            emit=rejected,
        )
    return await _finish(
        conn,
        event,
        "rejected",
        delta=-q,
        before=row.available,
        after=row.available,
        version=row.version,
        reason=f"requested {q}, only {row.available} available",
        emit=rejected,
    )


async def apply_count(conn: AsyncConnection, event: StockCounted) -> Result:
    """Set the count as of ``occurred_at``; sales applied that happened after it are subtracted again."""
    if not await _claim(conn, event.event_id, event.tenant, event.sku):
        return await _stored(conn, event.event_id, event.tenant, event.sku)
    row = await _row(conn, event.tenant, event.sku, for_update=True)
    if row is not None and row.counted_since(event.occurred_at):
        return await _finish(
            conn,
            event,
            "stale",
            delta=None,
            before=row.available,
            after=row.available,
            version=row.version,
            reason=f"a newer count (as of {row.counted_at}) is already applied",
            emit=None,
        )
    cur = await conn.execute(
        "SELECT COALESCE(sum(delta), 0) FROM ledger WHERE tenant = %s AND sku = %s AND outcome = 'applied' "
        "AND kind = 'order_placed' AND occurred_at > %s",
        (event.tenant, event.sku, event.occurred_at),
    )
    later = await cur.fetchone()
    after = max(0, event.quantity + int(later[0] if later else 0))
    cur = await conn.execute(
        "INSERT INTO inventory AS i (tenant, sku, available, version, counted_at) VALUES (%s, %s, %s, 1, %s) "
        "ON CONFLICT (tenant, sku) DO UPDATE SET available = EXCLUDED.available, version = i.version + 1, "
        "counted_at = EXCLUDED.counted_at, updated_at = now() RETURNING version",
        (event.tenant, event.sku, after, event.occurred_at),
    )
    inserted = await cur.fetchone()
    version = int(inserted[0]) if inserted else 1
    before = row.available if row else None
    return await _finish(
        conn,
        event,
        "applied",
        delta=after - (before or 0),
        before=before,
        after=after,
        version=version,
        reason=None,
        emit=_changed(event, after, version),
    )


async def apply(conn: AsyncConnection, event: OrderPlaced | StockCounted) -> Result:
    if isinstance(event, OrderPlaced):
        return await apply_order(conn, event)
    return await apply_count(conn, event)
