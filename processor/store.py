"""The master record in PostgreSQL: the rules decide, inside the caller's transaction; the results are kept.

``decide`` makes one call of ``stocksync_apply`` (stocksync/migrations/R_master_rules.sql) per event: claim
the id in ``processed_events`` (``ON CONFLICT DO NOTHING``; a claimed id is a duplicate and changes nothing),
a conditional UPDATE that can never drive ``available`` below zero, the version bump and exactly one ledger
row. The calls of a batch go out in one pipeline, in order, so a SKU's events apply in log order.
``apply_batch`` then has processor.emit serialise each decision and keeps the exact bytes beside the id, so a
duplicate re-emits what the first delivery emitted. ``record_invalid`` records an event the database cannot
apply (processor.isolation decides when).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from psycopg import AsyncConnection

from allocation.policy import rules_for
from allocation.rules import DEFAULT_POLICY
from processor.allocate import AllocationConfig, rebalance
from processor.emit import Decision, Result, emit, invalid
from schemas.inventory_events import AnyInventoryEvent, OrderCancelled

__all__ = ["DEFAULT_SKEW", "Decision", "Result", "apply_batch", "decide", "record_invalid"]

APPLY = (
    "SELECT outcome, before, after, version, reason "
    "FROM stocksync_apply(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)

DEFAULT_SKEW = timedelta(0)
"""Clock skew tolerated between a channel and the counting system (PROCESSOR_CLOCK_SKEW_S): a sale stamped
closer than this (plus its stamp's precision) to a count is applied on top of it, never taken as counted.
0 by default: clocks synchronised by NTP; the precision of whole-second stamps is always allowed for."""


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


async def decide(
    conn: AsyncConnection, events: list[AnyInventoryEvent], *, skew: timedelta = DEFAULT_SKEW
) -> list[Decision]:
    """Run the master rules on `events`, in order, in the caller's transaction; one Decision per event."""
    decisions: list[Decision] = []
    async with conn.cursor() as cur:
        await cur.executemany(APPLY, [_params(e, skew) for e in events], returning=True)
        async for _ in cur.results():
            row = await cur.fetchone()
            if row is None:
                raise RuntimeError("stocksync_apply returned no row")
            decisions.append(Decision(events[len(decisions)], row[0], after=row[2], version=row[3]))
    return decisions


async def _stored(
    conn: AsyncConnection, ids: list[str]
) -> dict[str, tuple[str | None, bytes | None, bytes | None]]:
    """The stored (topic, record, stock.allocated record) of each id."""
    cur = await conn.execute(
        "SELECT event_id, result_topic, result, allotment FROM processed_events WHERE event_id = ANY(%s)",
        (ids,),
    )
    return {
        row[0]: (row[1], bytes(row[2]) if row[2] is not None else None, bytes(row[3]) if row[3] else None)
        async for row in cur
    }


async def apply_batch(
    conn: AsyncConnection,
    events: list[AnyInventoryEvent],
    *,
    skew: timedelta = DEFAULT_SKEW,
    allocation: AllocationConfig | None = None,
) -> list[Result]:
    """Apply `events` in order; return one Result per event. Call inside a transaction. With `allocation`,
    the grants of the batch's ``never_cancel`` SKUs follow (processor.allocate) and each SKU's
    ``stock.allocated`` record rides on its last event's Result."""
    if not events:
        return []
    results: list[Result] = []
    first: dict[str, Result] = {}  # an id seen twice in one batch: the second is a duplicate of the first
    decisions = await decide(conn, events, skew=skew)
    default = allocation.default_policy if allocation else DEFAULT_POLICY
    rules = await rules_for(conn, ((e.tenant, e.sku) for e in events), default=default)
    for decision in decisions:
        event = decision.event
        if decision.outcome == "duplicate":
            earlier = first.get(event.event_id)
            topic, payload = (earlier.topic, earlier.payload) if earlier else (None, None)
            results.append(Result(event, "duplicate", topic, payload))
            continue
        policy = rules[(event.tenant, event.sku)].policy
        result = first[event.event_id] = emit(decision, policy=policy)
        results.append(result)
    if allocation is not None:
        fresh_decisions = [d for d in decisions if d.outcome != "duplicate"]
        allotted = await rebalance(conn, fresh_decisions, rules, allocation.listed)
        last_of = {(r.event.tenant, r.event.sku): r.event.event_id for r in first.values()}
        for key, record in allotted.items():
            event_id = last_of[key]
            first[event_id] = replace(first[event_id], allotment=record.model_dump_json().encode())
        results = [first[r.event.event_id] if r.outcome != "duplicate" else r for r in results]
    fresh = [r for r in first.values() if (r.topic is not None and r.payload is not None) or r.allotment]
    if fresh:
        await conn.execute(
            "UPDATE processed_events p "
            "SET result_topic = v.topic, result = v.result, allotment = v.allotment "
            "FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::bytea[]) "
            "AS v(id, topic, result, allotment) WHERE p.event_id = v.id",
            (
                [r.event.event_id for r in fresh],
                [r.topic for r in fresh],
                [r.payload for r in fresh],
                [r.allotment for r in fresh],
            ),
        )
    earlier_batches = [r.event.event_id for r in results if r.outcome == "duplicate" and r.topic is None]
    if earlier_batches:
        found = await _stored(conn, earlier_batches)
        results = [
            _restored(r, found.get(r.event.event_id)) if r.outcome == "duplicate" and r.topic is None else r
            for r in results
        ]
    return results


def _restored(r: Result, stored: tuple[str | None, bytes | None, bytes | None] | None) -> Result:
    topic, payload, allotment = stored or (None, None, None)
    return Result(r.event, "duplicate", topic, payload, allotment=allotment)


async def record_invalid(conn: AsyncConnection, event: AnyInventoryEvent, reason: str) -> Result:
    """Record `event` as ``invalid`` (processed_events and one ledger row, master untouched) and return its
    Result: the dead-letter record to publish, stored so that a redelivery re-emits it. Call inside a
    transaction; if the id is already claimed, the event is a duplicate and the stored result is returned."""
    result = invalid(event, reason)
    cur = await conn.execute(
        "INSERT INTO processed_events (event_id, tenant, sku, outcome, result_topic, result) "
        "VALUES (%s, %s, %s, 'invalid', %s, %s) ON CONFLICT (event_id) DO NOTHING",
        (event.event_id, event.tenant, event.sku, result.topic, result.payload),
    )
    if cur.rowcount == 0:
        return _restored(result, (await _stored(conn, [event.event_id])).get(event.event_id))
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
    return result
