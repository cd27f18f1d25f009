"""The set-based batch apply (processor.rules + processor.store) decides exactly what the per-event SQL rules
decided: outcomes, ledgers, final master rows and idempotency rows, on random streams.

Each example is a stream of sales, cancellations (of earlier sales, of sales never seen, of another SKU's
sale), receipts, counts and channel observations on three SKUs (one the master never learns of), stamped
out of order, whole-second or not, with events delivered twice, cut into batches at random places, with the
processed_events retention pruning between batches and a random clock skew. It goes once through
``stocksync_apply`` (stocksync/migrations/R_master_rules.sql: the rules as they were applied until issue 15,
one SQL call per event, kept as this test's oracle) and once through ``apply_batch``, each into its own
database, and everything both leave behind must be identical.

The search can fail: test_the_search_finds_a_rule_switched_off switches one rule off in the pure function
(a whole-second stamp's precision) and requires the same search to find a stream where the two differ.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection

import processor.rules
from processor.store import apply_batch
from schemas.inventory_events import (
    AnyInventoryEvent,
    OrderCancelled,
    OrderPlaced,
    StockCounted,
    StockObserved,
    StockReceived,
)
from stocksync.db import migrate

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SKUS = ("A", "B", "GHOST")  # GHOST: only sales, cancellations and observations name it

ORACLE = "SELECT outcome FROM stocksync_apply(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"  # one call per event


@dataclass(frozen=True)
class Op:
    kind: str
    sku: int
    quantity: int
    at: int  # seconds after T0: a few, so that stamps often tie or straddle a count
    micros: int  # 0: a whole-second stamp
    ref: int = 0  # a cancellation's sale / a redelivery's event, modulo what exists so far


stamps = {"at": st.integers(0, 4), "micros": st.sampled_from([0, 0, 0, 1, 999_999])}
ops = st.lists(
    st.one_of(
        st.builds(Op, st.just("sale"), st.integers(0, 2), st.integers(1, 4), **stamps),
        st.builds(
            Op, st.just("cancel"), st.integers(0, 2), st.integers(1, 4), **stamps, ref=st.integers(0, 99)
        ),
        st.builds(Op, st.just("receive"), st.integers(0, 1), st.integers(1, 5), **stamps),
        st.builds(Op, st.just("count"), st.integers(0, 1), st.integers(0, 8), **stamps),
        st.builds(Op, st.just("observe"), st.integers(0, 2), st.integers(0, 8), **stamps),
        st.builds(Op, st.just("again"), st.just(0), st.just(1), **stamps, ref=st.integers(0, 99)),
    ),
    min_size=1,
    max_size=30,
)


def stream(tenant: str, steps: list[Op]) -> list[AnyInventoryEvent]:
    events: list[AnyInventoryEvent] = []
    sales: list[OrderPlaced] = []
    for i, op in enumerate(steps):
        at = T0 + timedelta(seconds=op.at, microseconds=op.micros)
        sku, common = SKUS[op.sku], {"tenant": tenant, "occurred_at": at, "received_at": at}
        if op.kind == "again":
            if events:
                events.append(events[op.ref % len(events)])
            continue
        if op.kind == "sale":
            sale = OrderPlaced(
                event_id=f"{tenant}:sale:{i}",
                sku=sku,
                quantity=op.quantity,
                connection_id="shopify-1",
                channel="shopify",
                order_id=str(i),
                line_id="1",
                **common,
            )
            sales.append(sale)
            events.append(sale)
        elif op.kind == "cancel":
            of = sales[op.ref % len(sales)].event_id if sales and op.ref % 5 else f"{tenant}:sale:never"
            events.append(
                OrderCancelled(
                    event_id=f"{tenant}:cancel:{i}",
                    sku=sku,
                    quantity=op.quantity,
                    connection_id="shopify-1",
                    channel="shopify",
                    order_id=str(i),
                    line_id="1",
                    sale_event_id=of,
                    **common,
                )
            )
        elif op.kind == "receive":
            events.append(
                StockReceived(event_id=f"{tenant}:receipt:{i}", sku=sku, quantity=op.quantity, **common)
            )
        elif op.kind == "count":
            events.append(
                StockCounted(event_id=f"{tenant}:count:{i}", sku=sku, quantity=op.quantity, **common)
            )
        else:
            events.append(
                StockObserved(
                    event_id=f"{tenant}:seen:{i}",
                    sku=sku,
                    quantity=op.quantity,
                    connection_id="ebay-1",
                    channel="ebay",
                    **common,
                )
            )
    return events


def batches(events: list[AnyInventoryEvent], cuts: list[int]) -> list[list[AnyInventoryEvent]]:
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    return [events[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def _oracle_params(e: AnyInventoryEvent, skew: timedelta) -> tuple[Any, ...]:
    sale = e.sale_event_id if isinstance(e, OrderCancelled) else None
    return (
        e.type,
        e.event_id,
        e.tenant,
        e.sku,
        e.quantity,
        e.occurred_at,
        e.channel,
        e.connection_id,
        sale,
        skew,
    )


async def _prune(conn: AsyncConnection, tenant: str) -> None:
    """What the processed_events retention does to ids old enough: only the ledger remembers them."""
    await conn.execute("DELETE FROM processed_events WHERE tenant = %s", (tenant,))


ApplyPart = Callable[[AsyncConnection, list[AnyInventoryEvent], timedelta], Awaitable[list[str]]]


async def by_sql_rules(conn: AsyncConnection, part: list[AnyInventoryEvent], skew: timedelta) -> list[str]:
    """The oracle: one stocksync_apply call per event."""
    outcomes = []
    for e in part:
        row = await (await conn.execute(ORACLE, _oracle_params(e, skew))).fetchone()
        assert row is not None
        outcomes.append(str(row[0]))
    return outcomes


async def by_batch(conn: AsyncConnection, part: list[AnyInventoryEvent], skew: timedelta) -> list[str]:
    return [r.outcome for r in await apply_batch(conn, part, skew=skew)]


async def through(
    apply_part: ApplyPart,
    url: str,
    tenant: str,
    parts: list[list[AnyInventoryEvent]],
    prunes: list[bool],
    skew: timedelta,
) -> list[str]:
    """Each part in a transaction of its own, the retention pruning after the parts marked so."""
    outcomes: list[str] = []
    async with await AsyncConnection.connect(url) as conn:
        await conn.execute("SET TimeZone = 'UTC'")  # the SQL rules' reasons print timestamps in it
        for part, prune in zip(parts, prunes, strict=True):
            async with conn.transaction():
                outcomes += await apply_part(conn, part, skew)
            if prune:
                await _prune(conn, tenant)
    return outcomes


def left_behind(url: str, tenant: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql, (tenant,)).fetchall()

        return {
            "ledger": rows(
                "SELECT event_id, sku, kind, delta, absolute, before, after, version, outcome, reason, "
                "channel, connection_id, occurred_at, sale_event_id FROM ledger WHERE tenant = %s ORDER BY id"
            ),
            "master": rows(
                "SELECT sku, available, version, counted_at FROM inventory WHERE tenant = %s ORDER BY sku"
            ),
            "processed": rows(
                "SELECT event_id, outcome FROM processed_events WHERE tenant = %s ORDER BY event_id"
            ),
        }


def equivalence_search(
    urls: tuple[str, str], *, max_examples: int, shrink: bool = True
) -> Callable[[], None]:
    """The search as a callable: runs `max_examples` streams through both paths, fails on a difference."""
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        steps=ops,
        cuts=st.lists(st.integers(0, 40), max_size=5),
        prune_every=st.integers(0, 3),
        skew_s=st.sampled_from([0, 0, 2]),
    )
    def search(steps: list[Op], cuts: list[int], prune_every: int, skew_s: int) -> None:
        tenant = f"eq-{uuid.uuid4().hex[:12]}"  # the databases serve every example: each has its own tenant
        parts = batches(stream(tenant, steps), cuts)
        prunes = [prune_every > 0 and n % prune_every == 0 for n in range(len(parts))]
        skew = timedelta(seconds=skew_s)
        oracle_url, batch_url = urls
        expected = asyncio.run(through(by_sql_rules, oracle_url, tenant, parts, prunes, skew))
        got = asyncio.run(through(by_batch, batch_url, tenant, parts, prunes, skew))
        assert got == expected, "outcomes differ"
        oracle, batch = left_behind(oracle_url, tenant), left_behind(batch_url, tenant)
        for table in ("master", "ledger", "processed"):
            assert batch[table] == oracle[table], f"{table} differs"

    return search


@pytest.fixture
def two_databases(new_database: Callable[[], str]) -> tuple[str, str]:
    urls = new_database(), new_database()
    for url in urls:
        migrate(url)
    return urls


def test_the_batch_apply_decides_what_the_sql_rules_decided(two_databases: tuple[str, str]) -> None:
    equivalence_search(two_databases, max_examples=150)()


def test_the_search_finds_a_rule_switched_off(
    two_databases: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With whole-second stamps taken as exact in the pure rules only, some stream must tell them apart
    (a sale stamped in the second of a count is then taken as counted, where the SQL rules apply it)."""
    monkeypatch.setattr(processor.rules, "precision", lambda _t: timedelta(0))
    with pytest.raises(AssertionError, match="differ"):
        equivalence_search(two_databases, max_examples=1500, shrink=False)()  # stops at the first difference
