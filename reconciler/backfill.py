"""Backfill: list a connection's orders since its checkpoint (less an overlap), keep the events the processor
has not seen, and publish them as the gateway does; then wait until the processor applied them.

Published to ``inventory.events`` with the gateway's key and ids (an order applied meanwhile is a duplicate
there); refused orders go to ``ingest.quarantine``. The checkpoint moves to a page's high water only once
Kafka acknowledged that page.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from psycopg import AsyncConnection

from channels.connection import Connection
from channels.ratelimit import TokenBucket
from channels.spec import ListOrders, OrderBatch
from reconciler import store
from reconciler.progress import Progress
from reconciler.report import ConnectionReport
from reconciler.settings import ReconcilerSettings
from schemas import inventory_events, quarantine
from schemas.base import partition_key
from schemas.inventory_events import OrderCancelled, OrderPlaced
from stocksync.kafka import AsyncProducer, DeliveryError
from stocksync.retry import RetryPolicy


class PublishError(RuntimeError):
    """Kafka did not acknowledge a page of backfilled events: the checkpoint stays where it was."""


@dataclass
class Learned:
    """What the backfill of one connection taught, for the correction phase."""

    pages: list[OrderBatch] = field(default_factory=list)  # listed pages, only the events not yet seen
    published: list[str] = field(default_factory=list)
    net_sold: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # new events only, per SKU
    shown_before: dict[str, int] | None = None  # the channel's counts before the backfill was published
    error: BaseException | None = None


async def list_missed(
    conn: Connection,
    rep: ConnectionReport,
    source: ListOrders,
    *,
    db: AsyncConnection[Any],
    session: aiohttp.ClientSession,
    budget: TokenBucket,
    settings: ReconcilerSettings,
    policy: RetryPolicy,
    started_at: datetime,
    progress: Progress,
) -> Learned:
    """List the connection's orders and sort out what the pipeline has not seen; publish nothing yet. A
    failure is kept in `Learned.error`: what was listed before it is still published."""
    learned = Learned()
    progress.phase(conn.id, "listing orders")
    rep.checkpoint_before = rep.checkpoint_after = await store.checkpoint(db, conn.id)
    if rep.checkpoint_before is not None:
        since = rep.checkpoint_before - timedelta(seconds=settings.overlap_s)
    else:
        since = started_at - timedelta(hours=settings.lookback_h)
    rep.listed_since = since
    seen: set[str] = set()
    orders: set[str] = set()
    new_orders: set[str] = set()
    position = since
    try:
        async for attempt in policy.retrying():
            with attempt:
                # A retry lists again from the last page's high water; what is re-listed is skipped.
                async for page in source(session, conn, position, budget=budget, received_at=started_at):
                    events = [e for e in page.events if e.event_id not in seen]
                    seen.update(e.event_id for e in events)
                    known = await store.known_ids(db, (e.event_id for e in events))
                    new = [e for e in events if e.event_id not in known]
                    learned.pages.append(OrderBatch(new, page.rejected, page.high_water))
                    rep.events_listed += len(events)
                    rep.events_duplicate += len(events) - len(new)
                    rep.rejected += len(page.rejected)
                    orders.update(e.order_id for e in events)
                    new_orders.update(e.order_id for e in new)
                    for e in new:
                        learned.net_sold[e.sku] += e.quantity if isinstance(e, OrderPlaced) else -e.quantity
                    if page.high_water is not None:
                        position = max(position, page.high_water)
                    progress.advance(conn.id)
    except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the others
        learned.error = exc
    rep.orders_listed, rep.orders_backfilled = len(orders), len(new_orders)
    return learned


async def publish_learned(
    conn: Connection,
    rep: ConnectionReport,
    learned: Learned,
    *,
    db: AsyncConnection[Any],
    producer: AsyncProducer,
    settings: ReconcilerSettings,
    run_id: str,
    started_at: datetime,
) -> None:
    """Publish the listed pages in order; the checkpoint follows each acknowledged page. A failure is kept
    in `learned.error` (the first one wins)."""
    try:
        for page in learned.pages:
            await publish_page(conn, producer, page, settings=settings, run_id=run_id, started_at=started_at)
            learned.published += [e.event_id for e in page.events]
            rep.events_published += len(page.events)
            if page.high_water is not None:
                rep.checkpoint_after = await store.move_checkpoint(db, conn.id, page.high_water)
    except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the others
        learned.error = learned.error or exc


async def publish_page(
    conn: Connection,
    producer: AsyncProducer,
    page: OrderBatch,
    *,
    settings: ReconcilerSettings,
    run_id: str,
    started_at: datetime,
) -> None:
    """Publish a page as the gateway does; return only once Kafka acknowledged every record."""
    kafka = settings.kafka
    events: list[OrderPlaced | OrderCancelled] = list(page.events)
    sends = [
        producer.send(
            kafka.topic(inventory_events.TOPIC),
            inventory_events.encode(e),
            key=partition_key(e.tenant, e.sku),
            headers={"channel": conn.channel, "type": e.type, "source": "reconciler"},
        )
        for e in events
    ]
    for body, reason in page.rejected:
        record = quarantine.WebhookQuarantined(
            connection_id=conn.id,
            channel=conn.channel,
            reason=f"order list (reconciler): {reason}",
            headers={"source": "reconciler", "run": run_id},
            body_b64=base64.b64encode(body).decode(),
            received_at=started_at,
        )
        sends.append(
            producer.send(
                kafka.topic(quarantine.TOPIC),
                record.model_dump_json().encode(),
                key=conn.id.encode(),
                headers={"channel": conn.channel, "source": "reconciler"},
            )
        )
    if not sends:
        return
    try:
        await asyncio.wait_for(asyncio.gather(*sends), settings.publish_timeout_s)
    except (TimeoutError, DeliveryError) as exc:
        raise PublishError(
            f"Kafka did not acknowledge the backfilled events of connection {conn.id!r} ({exc!r}); "
            "the checkpoint stays before them, so the next run publishes them again"
        ) from exc


async def wait_applied(db: AsyncConnection[Any], ids: list[str], timeout_s: float) -> int:
    """Wait until the processor handled every id or the deadline passed; return how many are missing."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = len(wanted - await store.known_ids(db, wanted))
        if not missing or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.1)  # polling the database, bounded by the deadline
