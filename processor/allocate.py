"""The allocation step of a batch: the escrow state of every ``never_cancel`` SKU the batch touched, moved by
its sales and cancellations, re-decided by ``allocation.allocate`` and written back, in the batch's
transaction (so the grants can never disagree with the master count they were decided on).

Per SKU, after the master rules decided the batch's events (processor.store):

1. lock the SKU's rows of ``allocations`` (``FOR UPDATE``; the master row is already locked by the batch);
2. each sale a connection took lowers its grant by the units sold (applied, refused or already counted: it
   sold them either way) and adds to its velocity; each applied cancellation gives the units back;
3. ``allocate`` decides the raises from the slack; connections that no longer list the SKU keep their grant;
4. the rows, one ``allocation_log`` row per connection that changed, and the ``stock.allocated`` record.

The record is kept with the batch's last event of that SKU (processed_events.allotment), so a redelivered
batch re-emits it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from psycopg import AsyncConnection

from allocation.policy import Key, Rule
from allocation.rules import (
    DEFAULT_POLICY,
    Allocation,
    Holder,
    Policy,
    WriteMode,
    after_cancellation,
    after_sale,
    allocate,
    decay,
)
from channels.connection import Connection, ConnectionRegistry
from channels.registry import SPECS
from processor.emit import Decision
from processor.rules import SOLD
from schemas.inventory_events import OrderCancelled, OrderPlaced
from schemas.stock_allocated import Allotment, StockAllocated


class Listed:
    """The configured connections of each tenant and SKU (enabled, listing the SKU)."""

    def __init__(self, connections: ConnectionRegistry) -> None:
        self._by: dict[Key, dict[str, Connection]] = {}
        for c in connections:
            if c.enabled:
                for sku in c.listings:
                    self._by.setdefault((c.tenant, sku), {})[c.id] = c

    def of(self, key: Key) -> dict[str, Connection]:
        return self._by.get(key, {})


@dataclass(frozen=True)
class AllocationConfig:
    """What the allocation step needs besides the batch: the connections, and the policy of a tenant that
    set none (PROCESSOR_DEFAULT_POLICY)."""

    listed: Listed
    default_policy: Policy = DEFAULT_POLICY

    @classmethod
    def of(cls, connections: ConnectionRegistry, default_policy: Policy = DEFAULT_POLICY) -> AllocationConfig:
        return cls(Listed(connections), default_policy)


@dataclass
class Row:
    connection_id: str
    channel: str
    granted: int = 0
    velocity: float = 0.0
    sold_at: datetime | None = None
    seq: int = 0
    why: list[str] = field(default_factory=list)


def recent(row: Row, now: datetime) -> float:
    """The row's velocity decayed to `now`."""
    return decay(row.velocity, (now - row.sold_at).total_seconds()) if row.sold_at else row.velocity


def write_mode(channel: str) -> WriteMode:
    spec = SPECS.get(channel)
    return spec.write_mode if spec is not None else "absolute"


def _settle(rows: dict[str, Row], decisions: Sequence[Decision], now: datetime) -> None:
    """Move the grants by the sales and cancellations the master just decided, in log order."""
    for d in decisions:
        e = d.event
        row = rows.get(e.connection_id or "")
        if row is None:
            continue
        if isinstance(e, OrderPlaced) and d.outcome in SOLD:
            row.granted = after_sale(row.granted, e.quantity)
            row.velocity, row.sold_at = recent(row, now) + e.quantity, now
            row.why.append(f"sold {e.quantity} ({e.event_id}, {d.outcome})")
        elif isinstance(e, OrderCancelled) and d.outcome == "applied":
            row.granted = after_cancellation(row.granted, e.quantity)
            row.why.append(f"cancelled {e.quantity} back on the channel ({e.event_id})")


def holders(rows: dict[str, Row], listed: dict[str, Connection], now: datetime) -> list[Holder]:
    out = []
    for cid, row in rows.items():
        conn = listed.get(cid)
        out.append(
            Holder(
                cid,
                write_mode(row.channel),
                row.granted,
                weight=conn.allocation if conn else 1.0,
                buffer=conn.safety_buffer if conn else 0,
                velocity=recent(row, now),
                active=conn is not None,
            )
        )
    return out


async def _drop(conn: AsyncConnection, keys: set[Key], decisions: Sequence[Decision]) -> None:
    """SKUs whose policy is now mirror: their grants no longer bound anything (every channel shows the whole
    count), so they are dropped, and logged; a SKU with rows is under allocation as far as the reconciler
    and the dead-letter replay can tell (allocation.policy.grants)."""
    last = {(d.event.tenant, d.event.sku): d.event.event_id for d in decisions}
    cur = await conn.execute(
        "DELETE FROM allocations a USING unnest(%s::text[], %s::text[]) AS k(tenant, sku) "
        "WHERE a.tenant = k.tenant AND a.sku = k.sku "
        "RETURNING a.tenant, a.sku, a.connection_id, a.channel, a.granted, a.seq",
        ([k[0] for k in keys], [k[1] for k in keys]),
    )
    dropped = [
        (t, s, cid, ch, seq + 1, last.get((t, s)), granted, "policy mirror: the grant no longer applies")
        async for t, s, cid, ch, granted, seq in cur
    ]
    if dropped:
        async with conn.cursor() as c:
            await c.executemany(
                "INSERT INTO allocation_log (tenant, sku, connection_id, channel, seq, event_id, "
                "granted_before, granted_after, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s)",
                dropped,
            )


async def _load(
    conn: AsyncConnection, keys: list[Key]
) -> tuple[dict[Key, tuple[int, int]], dict[Key, dict[str, Row]]]:
    tenants, skus = [k[0] for k in keys], [k[1] for k in keys]
    cur = await conn.execute(
        "SELECT i.tenant, i.sku, i.available, i.version FROM inventory i "
        "JOIN unnest(%s::text[], %s::text[]) AS k(tenant, sku) USING (tenant, sku)",
        (tenants, skus),
    )
    master = {(t, s): (int(a), int(v)) async for t, s, a, v in cur}
    cur = await conn.execute(
        "SELECT a.tenant, a.sku, a.connection_id, a.channel, a.granted, a.velocity, a.sold_at, a.seq "
        "FROM allocations a JOIN unnest(%s::text[], %s::text[]) AS k(tenant, sku) USING (tenant, sku) "
        "ORDER BY a.tenant, a.sku, a.connection_id FOR UPDATE OF a",
        (tenants, skus),
    )
    rows: dict[Key, dict[str, Row]] = {}
    async for t, s, cid, ch, granted, velocity, sold_at, seq in cur:
        rows.setdefault((t, s), {})[cid] = Row(cid, ch, int(granted), float(velocity), sold_at, int(seq))
    return master, rows


def _record(
    key: Key,
    seq: int,
    master: tuple[int, int],
    alloc: Allocation,
    rows: dict[str, Row],
    last: Decision,
    now: datetime,
) -> StockAllocated:
    writes = {w.connection_id: w for w in alloc.writes}
    return StockAllocated(
        tenant=key[0],
        sku=key[1],
        seq=seq,
        available=master[0],
        version=master[1],
        slack=alloc.slack,
        connections={
            cid: Allotment(
                channel=row.channel,
                granted=alloc.granted[cid],
                write=writes[cid].quantity if cid in writes else None,
                expect=writes[cid].expect if cid in writes else None,
            )
            for cid, row in rows.items()
        },
        cause_event_id=last.event.event_id,
        received_at=last.event.received_at,
        committed_at=now,
    )


async def rebalance(
    conn: AsyncConnection,
    decisions: Sequence[Decision],
    rules: dict[Key, Rule],
    listed: Listed,
    *,
    now: datetime | None = None,
) -> dict[Key, StockAllocated]:
    """Run the allocation step for the ``never_cancel`` SKUs of `decisions` (duplicates excluded by the
    caller); return the ``stock.allocated`` record of each SKU whose grants or writes changed."""
    now = now or datetime.now(UTC)
    per_key: dict[Key, list[Decision]] = {}
    mirrored: set[Key] = set()
    for d in decisions:
        key = (d.event.tenant, d.event.sku)
        if rules[key].policy != "never_cancel":
            mirrored.add(key)
        elif d.outcome != "invalid":
            per_key.setdefault(key, []).append(d)
    if mirrored:
        await _drop(conn, mirrored, [d for d in decisions if (d.event.tenant, d.event.sku) in mirrored])
    keys = list(per_key)
    if not keys:
        return {}
    master, stored = await _load(conn, keys)
    out: dict[Key, StockAllocated] = {}
    updates: list[tuple[object, ...]] = []
    log: list[tuple[object, ...]] = []
    for key in keys:
        if key not in master:
            continue  # a SKU the master does not hold (a refused sale of an unknown SKU): nothing to split
        rows = stored.get(key, {})
        for cid, c in listed.of(key).items():
            rows.setdefault(cid, Row(cid, c.channel))
        if not rows:
            continue  # no connection lists it, none ever held it
        before = {cid: r.granted for cid, r in rows.items()}
        _settle(rows, per_key[key], now)
        rule = rules[key]
        alloc = allocate(
            master[key][0], holders(rows, listed.of(key), now), buffer=rule.buffer, spread=rule.spread
        )
        writes = {w.connection_id: w for w in alloc.writes}
        changed = [cid for cid in rows if alloc.granted[cid] != before[cid] or rows[cid].why]
        if not changed:
            continue
        seq = max(r.seq for r in rows.values()) + 1
        last = per_key[key][-1]
        out[key] = _record(key, seq, master[key], alloc, rows, last, now)
        for cid in changed:
            r, w = rows[cid], writes.get(cid)
            why = list(r.why)
            if w is not None:
                how = f"compare-and-set from {w.expect}" if w.expect is not None else "set"
                why.append(f"raised to {w.quantity} from the slack ({how})")
            updates.append((key[0], key[1], cid, r.channel, alloc.granted[cid], r.velocity, r.sold_at, seq))
            log.append(
                (
                    key[0],
                    key[1],
                    cid,
                    r.channel,
                    seq,
                    last.event.event_id,
                    master[key][0],
                    before[cid],
                    alloc.granted[cid],
                    w.quantity if w else None,
                    w.expect if w else None,
                    "; ".join(why) or "unchanged",
                )
            )
    if updates:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO allocations AS a (tenant, sku, connection_id, channel, granted, velocity, "
                "sold_at, seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (tenant, sku, connection_id) DO UPDATE SET granted = EXCLUDED.granted, "
                "velocity = EXCLUDED.velocity, sold_at = EXCLUDED.sold_at, seq = EXCLUDED.seq, "
                "updated_at = now()",
                updates,
            )
            await cur.executemany(
                "INSERT INTO allocation_log (tenant, sku, connection_id, channel, seq, event_id, available, "
                "granted_before, granted_after, write_quantity, write_expect, reason) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                log,
            )
    return out
