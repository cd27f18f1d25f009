"""The database's ceiling for the processor's work: the same events, set-based, with no business rules.

``apply_set_based`` applies one batch in the caller's transaction with three statements: one ``INSERT INTO
processed_events … SELECT … FROM unnest(…) ON CONFLICT DO NOTHING RETURNING event_id`` claims the ids (an id
claimed before, or the second copy of an id in the batch, is dropped); one conditional ``UPDATE inventory …
FROM unnest(…)`` applies each SKU's change, aggregated over the batch (the last count, if any, then the deltas
after it), only where the result stays ``>= 0``; one ``COPY ledger`` writes one row per claimed event (delta,
absolute, before, after, version, outcome). ``ceiling_rate`` times it over a whole stream, batch by batch, one
transaction each, on one synchronous connection: the yardstick the processor's events/s is compared to.

What it does not do, on purpose: no per-event decision (a SKU whose batch would go negative is refused whole,
every one of its events ``rejected``; the real rules refuse only the sale that does not fit), no as-of rule
(every count applies, stale or not), no lookup of the sale a cancellation undoes (its quantity is added back),
no unknown-SKU check (``seed_rows`` creates every SKU of the stream at 0 first, untimed, and the stream's own
opening counts set the stock, as they do in the worker's database), no result bytes kept for re-emission, no
allocation, no Kafka. ``processed_events.outcome`` stays ``claimed``. One writer per database is assumed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from schemas.inventory_events import AnyInventoryEvent, OrderCancelled

CLAIM = (
    "INSERT INTO processed_events (event_id, tenant, sku, outcome) "
    "SELECT v.id, v.tenant, v.sku, 'claimed' "
    "FROM unnest(%s::text[], %s::text[], %s::text[]) AS v(id, tenant, sku) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)

# `o` is the row as it was before this statement (the FROM side reads the statement's snapshot): the ledger's
# before/after are computed from it. The condition is on the SKU's net result over the batch.
UPDATE = (
    "UPDATE inventory AS i SET available = coalesce(v.absolute, o.available) + v.delta, "
    "version = o.version + v.changes, counted_at = coalesce(v.counted_at, o.counted_at), updated_at = now() "
    "FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[], %s::int[], %s::timestamptz[]) "
    "AS v(tenant, sku, absolute, delta, changes, counted_at) "
    "JOIN inventory AS o ON o.tenant = v.tenant AND o.sku = v.sku "
    "WHERE i.tenant = v.tenant AND i.sku = v.sku AND coalesce(v.absolute, o.available) + v.delta >= 0 "
    "RETURNING i.tenant, i.sku, o.available, o.version"
)

LEDGER = (
    "COPY ledger (event_id, tenant, sku, kind, delta, absolute, before, after, version, outcome, channel, "
    "connection_id, occurred_at, sale_event_id) FROM STDIN"
)


@dataclass(frozen=True)
class BatchCounts:
    """What one batch did: ids claimed (the rest were duplicates), events applied, events refused."""

    claimed: int
    applied: int
    rejected: int


@dataclass
class _Net:
    """One SKU's change over a batch: the last count (absolute) and its as-of time, the deltas after it, and
    how many events bump the version."""

    absolute: int | None = None
    counted_at: datetime | None = None
    delta: int = 0
    changes: int = 0


def _delta(e: AnyInventoryEvent) -> int:
    if e.type == "order_placed":
        return -e.quantity
    if e.type in ("order_cancelled", "stock_received"):
        return e.quantity
    return 0


def _net(events: Iterable[AnyInventoryEvent]) -> dict[tuple[str, str], _Net]:
    out: dict[tuple[str, str], _Net] = {}
    for e in events:
        net = out.setdefault((e.tenant, e.sku), _Net())
        if e.type == "stock_counted":
            net.absolute, net.counted_at, net.delta = e.quantity, e.occurred_at, 0
        else:
            net.delta += _delta(e)
        net.changes += e.type != "stock_observed"
    return out


def _ledger_rows(
    events: Sequence[AnyInventoryEvent], old: dict[tuple[str, str], tuple[int, int]]
) -> list[tuple[Any, ...]]:
    """One row per event, in order, walking each applied SKU from its old count and version."""
    state = dict(old)
    rows: list[tuple[Any, ...]] = []
    for e in events:
        key = (e.tenant, e.sku)
        absolute = e.quantity if e.type in ("stock_counted", "stock_observed") else None
        before = after = version = None
        delta: int | None = _delta(e)
        if e.type == "stock_observed":
            outcome = "observed"
            if key in state:
                before = after = state[key][0]
                version = state[key][1]
        elif key in state:
            outcome = "applied"
            before, version = state[key]
            after = e.quantity if e.type == "stock_counted" else before + _delta(e)
            delta = after - before
            version += 1
            state[key] = (after, version)
        else:
            outcome = "rejected"
        sale_id = e.sale_event_id if isinstance(e, OrderCancelled) else None
        rows.append(
            (
                e.event_id,
                e.tenant,
                e.sku,
                e.type,
                delta,
                absolute,
                before,
                after,
                version,
                outcome,
                e.channel,
                e.connection_id,
                e.occurred_at,
                sale_id,
            )
        )
    return rows


def apply_set_based(conn: psycopg.Connection[Any], events: Sequence[AnyInventoryEvent]) -> BatchCounts:
    """Claim, update and record `events` in the caller's transaction (see the module docstring)."""
    if not events:
        return BatchCounts(0, 0, 0)
    with conn.cursor() as cur:
        cur.execute(
            CLAIM, ([e.event_id for e in events], [e.tenant for e in events], [e.sku for e in events])
        )
        claimed = {row[0] for row in cur.fetchall()}
        fresh: list[AnyInventoryEvent] = []
        for e in events:
            if e.event_id in claimed:
                claimed.discard(e.event_id)  # a second copy in the same batch is a duplicate
                fresh.append(e)
        nets = _net(fresh)
        keys = list(nets)
        cur.execute(
            UPDATE,
            (
                [t for t, _ in keys],
                [s for _, s in keys],
                [nets[k].absolute for k in keys],
                [nets[k].delta for k in keys],
                [nets[k].changes for k in keys],
                [nets[k].counted_at for k in keys],
            ),
        )
        old = {(row[0], row[1]): (int(row[2]), int(row[3])) for row in cur.fetchall()}
        rows = _ledger_rows(fresh, old)
        with cur.copy(LEDGER) as copy:
            for row in rows:
                copy.write_row(row)
    applied = sum(1 for r in rows if r[9] == "applied")
    return BatchCounts(len(fresh), applied, sum(1 for r in rows if r[9] == "rejected"))


def seed_rows(conn: psycopg.Connection[Any], events: Iterable[AnyInventoryEvent]) -> None:
    """A master row at 0 (version 0) for every tenant/SKU of `events` that has none, so that the UPDATE finds
    it; the stream's own counts and receipts then set the stock."""
    keys = sorted({(e.tenant, e.sku) for e in events})
    conn.execute(
        "INSERT INTO inventory (tenant, sku, available) SELECT t, s, 0 FROM unnest(%s::text[], %s::text[]) "
        "AS v(t, s) ON CONFLICT DO NOTHING",
        ([t for t, _ in keys], [s for _, s in keys]),
    )


def ceiling_rate(database_url: str, stream: Sequence[AnyInventoryEvent], *, batch: int = 1000) -> float:
    """Events/s of apply_set_based over `stream` into `database_url` (a fresh, migrated database), one
    transaction per `batch` events, from the first batch's start to the last commit; seeding is untimed."""
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            seed_rows(conn, stream)
        started = time.perf_counter()
        for i in range(0, len(stream), batch):
            with conn.transaction():
                apply_set_based(conn, stream[i : i + batch])
        return len(stream) / (time.perf_counter() - started)
