"""The five checks a seller runs before trusting an inventory sync, against the real pipeline.

1. a burst of 50 orders within a minute reaches every channel (time compressed to seconds);
2. the same SKU sold on several channels at once: the count stays true, nothing oversold;
3. a channel failing its updates: retried, then the persistent failure surfaced (dead letter + metric);
4. 500+ stock updates at once: none dropped, every channel converges;
5. the audit trail answers "what happened to SKU X" with every change.

Each uses the nine marketplace simulators, signed webhooks from their own place_order where buyers are
involved, and real Kafka and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import psycopg
import pytest

from fanout.dlq import read_dead_letters
from lab.local.process import free_port
from lab.local.traffic import as_records, stock_counts
from lab.marketplaces import Marketplace
from schemas.inventory_events import AnyInventoryEvent, OrderPlaced, StockCounted
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.metrics import histogram_quantile
from tests.e2e.test_all_channels import SKUS, World, deliver, everyone_shows, fanout_metrics
from tests.helpers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

TENANT = "acme"


def count(sku: str, quantity: int, at: datetime | None = None) -> StockCounted:
    [counted] = stock_counts(TENANT, {sku: quantity}, tag=str(time.time_ns()), at=at)
    return counted


async def publish(world: World, events: list[AnyInventoryEvent]) -> None:
    """Put events on inventory.events as the seller's admin API does; returns once Kafka acknowledged."""
    producer = AsyncProducer(producer_config(world.kafka))
    try:
        await producer.send_batch(world.kafka.topic("inventory.events"), as_records(events))
    finally:
        await producer.close()


async def seed(world: World, session: aiohttp.ClientSession, counts: dict[str, int]) -> None:
    """The seller's counts, in the master and on every channel."""
    await publish(world, [count(sku, q) for sku, q in counts.items()])
    await eventually(lambda: world.master() == counts, what=f"the master at {counts}")
    await everyone_shows(world, session, counts)


async def sell(
    world: World, session: aiohttp.ClientSession, market: Marketplace, order_id: int, sku: str, qty: int
) -> tuple[bytes, dict[str, str]]:
    """A buyer orders on `market`'s storefront; its signed webhook is delivered to the gateway (200)."""
    body, headers = market.simulator.place_order(market.connection, order_id, [(sku, qty)], datetime.now(UTC))
    await deliver(session, f"{world.stack.ingest_url}/webhooks/{market.connection.id}", body, headers)
    return body, headers


def ledger(world: World, sku: str) -> list[tuple[str, str, str, int | None]]:
    """(event id, kind, outcome, after) of every ledger row of `sku`, oldest first."""
    with psycopg.connect(world.database_url) as conn:
        rows = conn.execute(
            "SELECT event_id, kind, outcome, after FROM ledger WHERE tenant = %s AND sku = %s ORDER BY id",
            (TENANT, sku),
        ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def test_1_fifty_orders_within_a_minute_reach_every_channel(world: World) -> None:
    async with aiohttp.ClientSession() as session:
        await seed(world, session, dict.fromkeys(SKUS, 100))
        before = await fanout_metrics(world, session)
        sold = dict.fromkeys(SKUS, 0)
        channels = itertools.cycle(world.markets.values())
        started = time.monotonic()
        for n in range(50):  # the minute's 50 orders, compressed into about 2.5 s
            market, sku = next(channels), SKUS[n % len(SKUS)]
            await sell(world, session, market, 1000 + n, sku, 1)
            sold[sku] += 1
            await asyncio.sleep(0.05)  # pacing the orders, not synchronisation
        expected = {sku: 100 - sold[sku] for sku in SKUS}
        await eventually(lambda: world.master() == expected, timeout_s=60, what="every order in the master")
        await everyone_shows(world, session, expected)
        took = time.monotonic() - started
        metrics = await fanout_metrics(world, session)
    assert took <= 60, f"the 50 orders took {took:.1f} s to reach every channel, more than the minute"
    for channel in world.markets:
        p99 = histogram_quantile(metrics, "sync_lag_seconds", 0.99, since=before, channel=channel)
        assert p99 is not None, f"{channel} confirmed no update"
        assert p99 <= 60, f"{channel}: p99 propagation {p99:.1f} s"


async def test_2_simultaneous_sales_of_one_sku_on_every_channel_never_oversell(world: World) -> None:
    async with aiohttp.ClientSession() as session:
        await seed(world, session, {"SKU-A": 5, "SKU-B": 10, "SKU-C": 10})
        # Every storefront shows 5, so every buyer's order is taken: 18 orders for 5 units, all at once.
        orders = [(m, 2000 + 10 * i + k) for i, m in enumerate(world.markets.values()) for k in range(2)]
        await asyncio.gather(*(sell(world, session, m, order_id, "SKU-A", 1) for m, order_id in orders))
        await eventually(
            lambda: len(ledger(world, "SKU-A")) == 1 + len(orders), timeout_s=60, what="every sale decided"
        )
        outcomes = [outcome for _e, kind, outcome, _a in ledger(world, "SKU-A") if kind == "order_placed"]
        assert outcomes.count("applied") == 5, outcomes
        assert outcomes.count("rejected") == len(orders) - 5, outcomes
        afters = [after for _e, kind, _o, after in ledger(world, "SKU-A") if kind == "order_placed"]
        assert min(a for a in afters if a is not None) == 0
        assert world.master() == {"SKU-A": 0, "SKU-B": 10, "SKU-C": 10}
        await everyone_shows(world, session, {"SKU-A": 0, "SKU-B": 10, "SKU-C": 10})


def restart_fanout(world: World, **env: str) -> None:
    """Run the fan-out again with other settings (its consumer groups carry on where they were)."""
    world.stack.stop_service("fanout")
    flags = [arg for ch in world.markets for arg in ("--channel", ch)]
    port = free_port()
    world.stack.start("fanout", "fanout", *flags, port=port, FANOUT_PORT=str(port), **env)


async def test_3_a_failing_channel_is_retried_then_its_persistent_failure_surfaced(world: World) -> None:
    await asyncio.to_thread(restart_fanout, world, FANOUT_RETRY_DEADLINE_S="3")
    shopify, ebay = world.markets["shopify"], world.markets["ebay"]
    sim = shopify.simulator
    async with aiohttp.ClientSession() as session:
        await seed(world, session, dict.fromkeys(SKUS, 20))
        before = await fanout_metrics(world, session)

        sim.fail_next(503, 2)  # type: ignore[attr-defined]
        await sell(world, session, ebay, 3001, "SKU-A", 1)
        await everyone_shows(world, session, {"SKU-A": 19, "SKU-B": 20, "SKU-C": 20})
        middle = await fanout_metrics(world, session)
        assert read_dead_letters(world.kafka) == []

        sim.fail_for(503, 60)  # type: ignore[attr-defined]
        await sell(world, session, ebay, 3002, "SKU-B", 1)
        letters = await eventually(
            lambda: read_dead_letters(world.kafka), timeout_s=60, what="the failing update in the DLQ"
        )
        after = await fanout_metrics(world, session)
        # The other eight channels were not held back by Shopify's outage.
        for channel, market in world.markets.items():
            if channel != "shopify":
                assert await market.shows(session, ["SKU-B"]) == {"SKU-B": 19}, channel

    def shopify_calls(text: str, result: str) -> float:
        prefix = f'fanout_channel_calls_total{{channel="shopify",result="{result}"}} '
        return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))

    assert shopify_calls(middle, "server_error") - shopify_calls(before, "server_error") == 2
    assert shopify_calls(after, "server_error") - shopify_calls(middle, "server_error") >= 2  # retried
    assert [(d.connection_id, d.sku, d.quantity, d.status) for d in letters] == [
        (shopify.connection.id, "SKU-B", 19, 503)
    ]
    assert "503" in letters[0].last_error
    assert 'fanout_dlq_writes_total{channel="shopify"} 1.0' in after


async def test_4_five_hundred_stock_updates_at_once_none_dropped_every_channel_converges(
    world: World,
) -> None:
    async with aiohttp.ClientSession() as session:
        await seed(world, session, dict.fromkeys(SKUS, 100))
        # 170 updates per SKU, 510 in all, in one go: recounts and sales alternating, each a moment later.
        t0 = datetime.now(UTC)
        updates: list[AnyInventoryEvent] = []
        for sku in SKUS:
            for i in range(170):
                at = t0 + timedelta(milliseconds=i)
                if i % 2 == 0:
                    updates.append(count(sku, 200 + i, at).model_copy(update={"event_id": f"bulk:{sku}:{i}"}))
                else:
                    updates.append(
                        OrderPlaced(
                            event_id=f"bulk-conn:order:{sku}-{i}:line:1",
                            tenant=TENANT,
                            sku=sku,
                            quantity=1,
                            connection_id="bulk-conn",
                            channel="shopify",
                            order_id=f"{sku}-{i}",
                            line_id="1",
                            occurred_at=at,
                            received_at=at,
                        )
                    )
        await publish(world, updates)
        expected = dict.fromkeys(SKUS, 200 + 168 - 1)  # the last recount (368), then one sale
        await eventually(lambda: world.master() == expected, timeout_s=60, what="the master at 367")
        for sku in SKUS:
            rows = ledger(world, sku)
            ids = [r[0] for r in rows]
            assert len(ids) == len(set(ids)) == 1 + 170, f"{sku}: {len(ids)} ledger rows"
            assert {r[2] for r in rows} == {"applied"}, f"{sku}: {sorted({r[2] for r in rows})}"
        await everyone_shows(world, session, expected)


async def test_5_the_audit_trail_tells_what_happened_to_a_sku(world: World) -> None:
    etsy, amazon = world.markets["etsy"], world.markets["amazon"]
    async with aiohttp.ClientSession() as session:
        await seed(world, session, {"SKU-A": 10, "SKU-B": 10, "SKU-C": 10})
        body, headers = await sell(world, session, etsy, 4001, "SKU-C", 3)
        await deliver(session, f"{world.stack.ingest_url}/webhooks/{etsy.connection.id}", body, headers)
        await sell(world, session, amazon, 4002, "SKU-C", 20)  # more than the 7 left: refused
        await eventually(lambda: len(ledger(world, "SKU-C")) == 3, what="the sales decided")
        # The seller's recount, as of a moment surely after the Etsy sale: Etsy stamps whole seconds, and a
        # count within the second of a sale cannot tell whether it holds it (it is taken not to).
        await publish(world, [count("SKU-C", 8, at=datetime.now(UTC) + timedelta(seconds=2))])
        await eventually(lambda: world.master()["SKU-C"] == 8, what="the recount in the master")

        ops = f"http://127.0.0.1:{world.stack.services['processor'].port}"
        async with session.get(f"{ops}/audit/{TENANT}/SKU-C") as resp:
            assert resp.status == 200
            trail = (await resp.json())["changes"]
    story = [(c["kind"], c["channel"], c["delta"], c["absolute"], c["outcome"], c["after"]) for c in trail]
    assert story == [  # newest first: every change once (the redelivered webhook is not a second sale)
        ("stock_counted", "admin", 1, 8, "applied", 8),
        ("order_placed", "amazon", -20, None, "rejected", 7),
        ("order_placed", "etsy", -3, None, "applied", 7),
        ("stock_counted", "admin", 10, 10, "applied", 10),
    ]
    assert trail[0]["after"] == world.master()["SKU-C"]

    env = {
        **os.environ,
        "DATABASE_URL": world.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": world.kafka.bootstrap_servers,
        "COLUMNS": "250",
    }
    exe = str(Path(sys.executable).parent / "stocksync")
    done = await asyncio.to_thread(
        subprocess.run, [exe, "audit", TENANT, "SKU-C"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "stock_counted" in line or "order_placed" in line]
    assert len(lines) == 4, done.stdout
    assert "requested 20, only 7 available" in done.stdout
