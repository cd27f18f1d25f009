"""Every marketplace at once: signed webhooks from all nine simulators through the gateway, the processor, and
one fan-out process serving all nine channels; every channel ends showing the master's count.

The buyer's first check, time-compressed: 50 orders across the channels within a few seconds (the checklist
allows 60), each propagated, with the p99 sync lag per channel from the fan-out's own histogram, bounded.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg
import pytest

from lab.local.stack import Stack
from lab.local.traffic import as_records
from lab.marketplaces import Marketplace, marketplaces, stack_config
from schemas import TOPICS, stock_changed, stock_rejected
from schemas.inventory_events import OrderPlaced, StockCounted
from stocksync.kafka import AsyncProducer, ensure_topics, producer_config
from stocksync.metrics import histogram_quantile
from stocksync.settings import KafkaSettings
from tests.helpers import eventually, group_caught_up

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SKUS = ("SKU-A", "SKU-B", "SKU-C")
START = 100


@dataclass
class World:
    markets: dict[str, Marketplace]
    stack: Stack
    kafka: KafkaSettings
    database_url: str

    def master(self) -> dict[str, int]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute("SELECT sku, available FROM inventory WHERE tenant = 'acme'").fetchall()
        return {r[0]: r[1] for r in rows}

    def fanout_idle(self) -> bool:
        return all(
            group_caught_up(self.kafka, f"fanout.{ch}", topic)
            for ch in self.markets
            for topic in (stock_changed.TOPIC, stock_rejected.TOPIC)
        )


@pytest.fixture
async def world(kafka: KafkaSettings, database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    ensure_topics(kafka, TOPICS)
    async with marketplaces(SKUS, tenant="acme") as markets:
        stack = Stack(stack_config(markets, kafka, database_url, tmp_path / "connections.toml"))
        try:
            stack.start_all()
            await eventually(stack.ready, timeout_s=60, what="the gateway")
            yield World(markets, stack, kafka, database_url)
        finally:
            await asyncio.to_thread(stack.close)


async def deliver(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> None:
    """POST a webhook as the channel does: a 503 (a thin payload's order could not be fetched yet) is
    delivered again, as channels redeliver; anything but 200 in the end fails the test."""
    for _attempt in range(20):
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 503:
                assert resp.status == 200, f"{url}: {resp.status} {await resp.text()}"
                return
        await asyncio.sleep(0.5)  # the channel's redelivery delay, shortened
    raise AssertionError(f"{url}: still 503 after 20 deliveries")


async def fanout_metrics(world: World, session: aiohttp.ClientSession) -> str:
    async with session.get(f"http://127.0.0.1:{world.stack.services['fanout'].port}/metrics") as resp:
        return await resp.text()


async def everyone_shows(world: World, session: aiohttp.ClientSession, expected: dict[str, int]) -> None:
    """Once fan-out is idle, each channel is read once: it must show the master's count."""
    await eventually(world.fanout_idle, timeout_s=120, what="every fan-out group to commit its offsets")
    for channel, market in world.markets.items():
        assert await market.shows(session, list(SKUS)) == expected, f"{channel} differs from the master"


async def test_fifty_orders_across_nine_channels_reach_every_channel(world: World) -> None:
    now = datetime.now(UTC)
    seed = [
        StockCounted(
            event_id=f"admin:count:{sku}",
            tenant="acme",
            sku=sku,
            quantity=START,
            occurred_at=now,
            received_at=now,
        )
        for sku in SKUS
    ]
    producer = AsyncProducer(producer_config(world.kafka))
    try:
        await producer.send_batch(world.kafka.topic("inventory.events"), as_records(seed))
    finally:
        await producer.close()
    await eventually(lambda: world.master() == dict.fromkeys(SKUS, START), what="the seeded master")
    async with aiohttp.ClientSession() as session:
        await eventually(world.fanout_idle, timeout_s=120, what="the seeded counts to reach every channel")
        before = await fanout_metrics(world, session)

        sold = dict.fromkeys(SKUS, 0)
        channels = itertools.cycle(world.markets.values())
        for n in range(50):
            market, sku, qty = next(channels), SKUS[n % 3], 1 + n % 2
            body, headers = market.simulator.place_order(
                market.connection, 9000 + n, [(sku, qty)], datetime.now(UTC)
            )
            await deliver(session, f"{world.stack.ingest_url}/webhooks/{market.connection.id}", body, headers)
            sold[sku] += qty
            await asyncio.sleep(0.05)  # pacing the orders over a few seconds, not synchronisation
        expected = {sku: START - sold[sku] for sku in SKUS}
        await eventually(
            lambda: world.master() == expected, timeout_s=60, what="the master to count every order"
        )
        await everyone_shows(world, session, expected)

        metrics = await fanout_metrics(world, session)
    for channel in world.markets:
        p99 = histogram_quantile(metrics, "sync_lag_seconds", 0.99, since=before, channel=channel)
        assert p99 is not None, f"{channel}: no update confirmed"
        # A sanity bound inside the checklist's minute; the figures per channel are `make bench`'s job (the
        # slowest budgets here are WooCommerce's 2 calls/s and Flipkart's 1.5/s, on a busy 2-core machine).
        assert p99 <= 15.0, f"{channel}: p99 sync lag {p99:.2f} s"
    # The simulators keep one budget for reads and writes, so the gateway's order fetches (thin payloads),
    # Walmart's token fetches and this test's reads spend what fan-out plans with: some of its writes meet a
    # 429 and are retried after Retry-After. Zero 429s is asserted where fan-out owns the budget
    # (tests/e2e/test_fanout.py); here every channel converged above, within the lag bound.


async def test_a_thousand_sales_in_a_second_reach_all_nine_channels_in_few_calls(world: World) -> None:
    # 1,500 - 1,000 = 500: under Etsy's per-variant ceiling of 999, so every channel can show the master.
    now = datetime.now(UTC)
    seed = [
        StockCounted(
            event_id=f"admin:count:{sku}",
            tenant="acme",
            sku=sku,
            quantity=1500,
            occurred_at=now,
            received_at=now,
        )
        for sku in SKUS
    ]
    burst = [
        OrderPlaced(
            event_id=f"burst:order:{i}:line:1",
            tenant="acme",
            sku="SKU-A",
            quantity=1,
            connection_id="burst",
            channel="shopify",
            order_id=str(i),
            line_id="1",
            occurred_at=now,
            received_at=now,
        )
        for i in range(1000)
    ]
    producer = AsyncProducer(producer_config(world.kafka))
    try:
        await producer.send_batch(world.kafka.topic("inventory.events"), as_records(seed))
        await eventually(lambda: world.master() == dict.fromkeys(SKUS, 1500), what="the seeded master")
        await eventually(world.fanout_idle, timeout_s=120, what="the seed counts on every channel")
        sold_at = datetime.now(UTC)  # after the count: a count as of T already includes sales at T
        burst = [e.model_copy(update={"occurred_at": sold_at, "received_at": sold_at}) for e in burst]
        calls = {ch: len(m.simulator.calls) for ch, m in world.markets.items()}
        limited = {ch: m.simulator.rate_limited for ch, m in world.markets.items()}
        started = asyncio.get_running_loop().time()
        await producer.send_batch(world.kafka.topic("inventory.events"), as_records(burst))
        assert asyncio.get_running_loop().time() - started < 1.0, (
            "the burst took longer than a second to publish"
        )
    finally:
        await producer.close()
    await eventually(lambda: world.master()["SKU-A"] == 500, timeout_s=60, what="the master at 500")
    await eventually(world.fanout_idle, timeout_s=120, what="every fan-out group to commit its offsets")
    spent = {ch: len(m.simulator.calls) - calls[ch] for ch, m in world.markets.items()}
    refused = {ch: m.simulator.rate_limited - limited[ch] for ch, m in world.markets.items()}
    assert all(n <= 100 for n in spent.values()), f"outbound calls for 1,000 sales: {spent}"
    assert refused == dict.fromkeys(world.markets, 0), f"429s during the burst: {refused}"
    async with aiohttp.ClientSession() as session:
        for channel, market in world.markets.items():
            assert (await market.shows(session, ["SKU-A"])) == {"SKU-A": 500}, channel
