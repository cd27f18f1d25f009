"""Synthetic inventory event streams for tests and benchmarks: deterministic for a seed.

Each SKU starts with a count; then sales across channels (some larger than what is left), cancellations
of earlier sales (some of which were rejected, so nothing is restocked), and now and then a count whose
as-of time lies a little in the past, so late counts and stale deltas are exercised too.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from schemas import inventory_events
from schemas.base import Channel, partition_key
from schemas.inventory_events import AnyInventoryEvent, OrderCancelled, OrderPlaced, StockCounted

CHANNELS: tuple[Channel, ...] = ("shopify", "amazon", "ebay", "woocommerce", "walmart")
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def synthetic_stream(
    n: int, *, skus: int = 50, tenant: str = "acme", seed: int = 7
) -> list[AnyInventoryEvent]:
    """`n` events over `skus` SKUs, in the order a producer would emit them."""
    rnd = random.Random(seed)  # noqa: S311 - reproducible test traffic, not secrets
    names = [f"SKU-{i:04d}" for i in range(skus)]
    events: list[AnyInventoryEvent] = []
    sales: dict[str, list[OrderPlaced]] = {name: [] for name in names}

    def at(i: int) -> datetime:
        return T0 + timedelta(milliseconds=10 * i)

    for i, name in enumerate(names[:n]):
        events.append(
            StockCounted(
                event_id=f"admin:count:{name}:0",
                tenant=tenant,
                sku=name,
                quantity=rnd.randint(20, 120),
                occurred_at=at(i),
                received_at=at(i),
            )
        )
    for i in range(len(events), n):
        name = rnd.choice(names)
        roll = rnd.random()
        channel = rnd.choice(CHANNELS)
        if roll < 0.04:
            as_of = at(i) - timedelta(milliseconds=rnd.randint(0, 3000))
            events.append(
                StockCounted(
                    event_id=f"admin:count:{name}:{i}",
                    tenant=tenant,
                    sku=name,
                    quantity=rnd.randint(0, 80),
                    occurred_at=as_of,
                    received_at=at(i),
                )
            )
        elif roll < 0.11 and sales[name]:
            sale = rnd.choice(sales[name])
            events.append(
                OrderCancelled(
                    event_id=f"{sale.connection_id}:cancel:{sale.order_id}:line:{sale.line_id}:{i}",
                    tenant=tenant,
                    sku=name,
                    quantity=sale.quantity,
                    connection_id=sale.connection_id,
                    channel=sale.channel,
                    order_id=sale.order_id,
                    line_id=sale.line_id,
                    sale_event_id=sale.event_id,
                    occurred_at=at(i),
                    received_at=at(i),
                )
            )
        else:
            conn = f"{channel}-{tenant}"
            sale = OrderPlaced(
                event_id=f"{conn}:order:{i}:line:1",
                tenant=tenant,
                sku=name,
                quantity=rnd.choice((1, 1, 1, 2, 3, 8)),
                connection_id=conn,
                channel=channel,
                order_id=str(i),
                line_id="1",
                occurred_at=at(i),
                received_at=at(i),
            )
            sales[name].append(sale)
            events.append(sale)
    return events


def as_records(events: Iterable[AnyInventoryEvent]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs for ``inventory.events``."""
    return [(partition_key(e.tenant, e.sku), inventory_events.encode(e)) for e in events]


def stock_counts(
    tenant: str, counts: Mapping[str, int], *, tag: str, at: datetime | None = None
) -> list[StockCounted]:
    """The seller's counts of `counts` as of `at` (now), ids ``admin:count:<tag>:<sku>``."""
    when = at or datetime.now(UTC)
    return [
        StockCounted(
            event_id=f"admin:count:{tag}:{sku}",
            tenant=tenant,
            sku=sku,
            quantity=quantity,
            occurred_at=when,
            received_at=when,
        )
        for sku, quantity in counts.items()
    ]
