"""Fan-out against the Shopify simulator, with the processor and fan-out as real processes.

Sales are put on inventory.events directly (the gateway is tested elsewhere), so a burst is as dense as
the test wants it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from fanout.dlq import read_dead_letters
from lab.local.stack import Stack
from lab.local.traffic import as_records
from schemas.inventory_events import OrderPlaced, StockCounted
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings
from tests.fix_stack import ShopifyWorld
from tests.helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def sales(sku: str, n: int, start: int = 0) -> list[OrderPlaced]:
    now = datetime.now(UTC)
    return [
        OrderPlaced(
            event_id=f"burst:order:{sku}-{i}:line:1",
            tenant="acme",
            sku=sku,
            quantity=1,
            connection_id="burst",
            channel="amazon",
            order_id=f"{sku}-{i}",
            line_id="1",
            occurred_at=now,
            received_at=now,
        )
        for i in range(start, start + n)
    ]


def count(sku: str, quantity: int) -> StockCounted:
    now = datetime.now(UTC)
    return StockCounted(
        event_id=f"admin:count:{sku}:{time.time_ns()}",
        tenant="acme",
        sku=sku,
        quantity=quantity,
        occurred_at=now,
        received_at=now,
    )


async def publish(kafka: KafkaSettings, events: list[OrderPlaced] | list[StockCounted]) -> float:
    """Put events on inventory.events; return how long until all were acknowledged."""
    producer = AsyncProducer(producer_config(kafka))
    try:
        started = time.monotonic()
        await producer.send_batch(kafka.topic("inventory.events"), as_records(events))
        return time.monotonic() - started
    finally:
        await producer.close()


def master(database_url: str, sku: str) -> int | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT available FROM inventory WHERE sku = %s", (sku,)).fetchone()
    return int(row[0]) if row else None


def shows(world: ShopifyWorld, sku: str, quantity: int) -> Callable[[], bool]:
    return lambda: world.simulator.available.get(world.item(sku)) == quantity


def master_is(database_url: str, sku: str, quantity: int) -> Callable[[], bool]:
    return lambda: master(database_url, sku) == quantity


def accepted(world: ShopifyWorld, sku: str, since: int = 0) -> list[int]:
    """Quantities the simulator accepted for `sku`, in arrival order, from call number `since` on."""
    item = world.item(sku)
    return [
        c.quantity
        for c in world.simulator.calls[since:]
        if c.inventory_item_id == item and c.user_error is None
    ]


async def seeded(kafka: KafkaSettings, world: ShopifyWorld, counts: dict[str, int]) -> None:
    await publish(kafka, [count(sku, q) for sku, q in counts.items()])
    for sku, q in counts.items():
        await eventually(shows(world, sku, q), what=f"Shopify {sku}={q}")


async def test_a_thousand_sales_in_a_second_reach_shopify_in_few_calls(
    pipeline: Stack, shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str
) -> None:
    sim = shopify_world.simulator
    await seeded(kafka, shopify_world, {"SKU-1": 2000})
    before = len(sim.calls)
    took = await publish(kafka, sales("SKU-1", 1000))
    assert took < 1.0, f"the burst took {took:.2f} s to publish, not under a second"
    await eventually(lambda: master(database_url, "SKU-1") == 1000, timeout_s=60, what="the master at 1000")
    await eventually(
        lambda: sim.available.get(shopify_world.item("SKU-1")) == 1000, timeout_s=60, what="Shopify=1000"
    )
    calls = len(sim.calls) - before
    assert calls <= 50, f"{calls} outbound calls for 1,000 sales: coalescing is not working"
    assert sim.rate_limited == 0
    shown = accepted(shopify_world, "SKU-1", before)
    assert shown == sorted(shown, reverse=True), "an older (higher) count overwrote a newer one"
    assert shown[-1] == 1000


async def test_an_outage_is_waited_out_and_a_refusal_is_dead_lettered_then_replayed(
    pipeline: Stack, shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str
) -> None:
    sim, item = shopify_world.simulator, shopify_world.item("SKU-2")
    await seeded(kafka, shopify_world, {"SKU-2": 50})

    sim.fail_for(503, 30)
    started = time.monotonic()
    await publish(kafka, sales("SKU-2", 1))
    await eventually(lambda: sim.available.get(item) == 49, timeout_s=90, what="Shopify=49 after the outage")
    assert time.monotonic() - started >= 29  # it really was held back by the outage, then got through
    assert read_dead_letters(kafka) == []

    sim.fail_next(400)
    await publish(kafka, sales("SKU-2", 1, start=1))
    letters = await eventually(lambda: read_dead_letters(kafka), timeout_s=60, what="a dead letter")
    assert [(d.connection_id, d.sku, d.quantity, d.status) for d in letters] == [
        ("shop-acme", "SKU-2", 48, 400)
    ]
    assert "400" in letters[0].last_error
    assert sim.available[item] == 49  # the channel is behind the master (48)

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "DATABASE_URL": database_url,
        "FANOUT_CONNECTIONS_FILE": str(shopify_world.connections_file),
        "COLUMNS": "200",
    }
    exe = str(Path(sys.executable).parent / "stocksync")
    listed = await asyncio.to_thread(
        subprocess.run, [exe, "dlq", "list"], capture_output=True, text=True, env=env
    )
    assert "1 dead-lettered updates" in listed.stdout, listed.stdout + listed.stderr
    replayed = await asyncio.to_thread(
        subprocess.run,
        [exe, "dlq", "replay", "--connection", "shop-acme"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert sim.available[item] == master(database_url, "SKU-2") == 48


async def test_killing_fanout_mid_burst_converges_and_never_goes_back(
    pipeline: Stack, shopify_world: ShopifyWorld, kafka: KafkaSettings, database_url: str
) -> None:
    sim = shopify_world.simulator
    skus = ("SKU-1", "SKU-2", "SKU-3")
    await seeded(kafka, shopify_world, dict.fromkeys(skus, 3000))
    before = len(sim.calls)
    burst = asyncio.create_task(paced(kafka, skus, per_sku=600, seconds=2.0))
    await eventually(lambda: len(sim.calls) - before >= 5, timeout_s=30, what="fan-out to be mid-burst")
    assert pipeline.stop_service("fanout-shopify", sig=signal.SIGKILL) == -signal.SIGKILL
    assert not burst.done()
    pipeline.start("fanout-shopify", "fanout", "--channel", "shopify")
    await burst
    for sku in skus:
        await eventually(master_is(database_url, sku, 2400), timeout_s=60, what=f"master {sku}=2400")
        await eventually(shows(shopify_world, sku, 2400), timeout_s=90, what=f"Shopify {sku}=2400")
        shown = accepted(shopify_world, sku, before)
        assert shown == sorted(shown, reverse=True), f"{sku}: an older count overwrote a newer one: {shown}"


async def paced(kafka: KafkaSettings, skus: tuple[str, ...], *, per_sku: int, seconds: float) -> None:
    """Publish `per_sku` sales of each SKU spread over `seconds`, in ten slices."""
    for step in range(10):
        chunk = [e for sku in skus for e in sales(sku, per_sku // 10, start=step * (per_sku // 10))]
        await publish(kafka, chunk)
        await asyncio.sleep(seconds / 10)  # pacing the load, not synchronisation
