"""The reconciler across several channels, with ingest, processor and one fan-out process for all of them
running as processes (issue 6, must-show 1 and 4).

1. A burst of orders on several channels during which 3 % of the webhooks are dropped (never delivered, no
   retry): the master is wrong afterwards; after one run it equals the initial count less every real sale, and
   every channel shows it. The report counts the backfilled orders and the corrected drifts.
4. A channel outage during a run: the run reports that connection failed and corrects the others; once the
   channel is back, the next run finishes the job.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from channels.errors import ChannelError
from lab.local.stack import Stack
from lab.marketplaces import Marketplace, marketplaces, stack_config
from reconciler.report import CORRECTED, FANOUT_FIXED, MISSED_ORDER, SKIPPED_MASTER_MOVED
from schemas import TOPICS, stock_changed, stock_rejected
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings
from tests.e2e.reconcile_kit import (
    checkpoints,
    deliver,
    master,
    reconcile,
    reconciler_settings,
    seed_counts,
)
from tests.helpers import eventually, group_caught_up

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Channels with an order list, including a thin-payload one (BigCommerce: the gateway fetches the order).
CHANNELS = ("shopify", "woocommerce", "walmart", "bigcommerce")
SKUS = ("SKU-A", "SKU-B", "SKU-C")
START = 400


@dataclass
class World:
    markets: dict[str, Marketplace]
    stack: Stack
    kafka: KafkaSettings
    database_url: str
    sold: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKUS, 0))  # every real sale
    delivered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKUS, 0))  # webhook arrived
    dropped: dict[str, int] = field(default_factory=dict)  # dropped orders per channel

    def master(self) -> dict[str, int]:
        return master(self.database_url, "acme")

    def fanout_idle(self) -> bool:
        return all(
            group_caught_up(self.kafka, f"fanout.{ch}", topic)
            for ch in self.markets
            for topic in (stock_changed.TOPIC, stock_rejected.TOPIC)
        )

    async def shows(
        self, session: aiohttp.ClientSession, channels: list[str] | None = None
    ) -> dict[str, dict[str, int]]:
        """What each channel shows, read through its client; a 429 (the test shares the channel's budget
        with the pipeline and the reconciler) is waited out as the channel asks."""
        out = {}
        for ch in channels or list(self.markets):
            for _attempt in range(30):
                try:
                    out[ch] = await self.markets[ch].shows(session, list(SKUS))
                    break
                except ChannelError as exc:
                    if exc.status != 429:
                        raise
                    await asyncio.sleep(exc.retry_after_s or 1.0)  # the channel's Retry-After
        return out


@pytest.fixture
async def world(kafka: KafkaSettings, database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    ensure_topics(kafka, TOPICS)
    async with marketplaces(SKUS, tenant="acme", channels=CHANNELS) as markets:
        stack = Stack(stack_config(markets, kafka, database_url, tmp_path / "connections.toml"))
        try:
            stack.start_all()
            await eventually(stack.ready, timeout_s=60, what="the gateway")
            w = World(markets, stack, kafka, database_url)
            await seed_counts(kafka, "acme", dict.fromkeys(SKUS, START))
            await eventually(lambda: w.master() == dict.fromkeys(SKUS, START), what="the seeded master")
            await eventually(w.fanout_idle, timeout_s=120, what="the seeded counts to reach every channel")
            yield w
        finally:
            await asyncio.to_thread(stack.close)


async def burst(world: World, orders: int, dropped: set[int], *, seed: int) -> None:
    """`orders` single-line orders placed round-robin on the channels (each channel counts its own sale and
    books the order); the webhooks of the orders in `dropped` are never delivered, the rest concurrently."""
    rnd = random.Random(seed)
    channels = list(world.markets.values())
    deliveries = []
    for n in range(orders):
        market = channels[n % len(channels)]
        sku, qty = rnd.choice(SKUS), 1 + n % 2
        body, headers = market.simulator.place_order(
            market.connection, 70_000 + n, [(sku, qty)], datetime.now(UTC)
        )
        world.sold[sku] += qty
        if n in dropped:
            world.dropped[market.channel] = world.dropped.get(market.channel, 0) + 1
            continue
        world.delivered[sku] += qty
        deliveries.append((f"{world.stack.ingest_url}/webhooks/{market.connection.id}", body, headers))
    limit = asyncio.Semaphore(16)

    async def one(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> None:
        async with limit:
            await deliver(session, url, body, headers)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, *d) for d in deliveries))
    expected = {s: START - world.delivered[s] for s in SKUS}
    await eventually(
        lambda: world.master() == expected, timeout_s=60, what="the master to apply every delivery"
    )


def metric(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for family in registry.collect() for s in family.samples if s.name == name)


async def test_three_percent_of_webhooks_dropped_one_run_puts_master_and_channels_right(
    world: World, tmp_path: Path
) -> None:
    orders = 200
    rnd = random.Random(61)
    dropped = set(rnd.sample(range(orders), k=orders * 3 // 100))
    await burst(world, orders, dropped, seed=62)
    assert len(world.dropped) >= 2, f"the drops should fall on several channels: {world.dropped}"
    truth = {s: START - world.sold[s] for s in SKUS}
    await eventually(world.fanout_idle, timeout_s=120, what="the fan-out to settle after the burst")
    before = world.master()
    assert before != truth, "the master should be wrong before reconciliation"
    assert all(before[s] >= truth[s] for s in SKUS)

    settings = reconciler_settings(
        world.kafka, world.database_url, tmp_path / "reports", channel_retry_s=20.0
    )
    report, registry = await reconcile(settings, [m.connection for m in world.markets.values()])

    assert report.ok, report.to_json()
    totals = report.totals()
    assert totals["orders_backfilled"] == len(dropped), report.to_json()
    assert totals["orders_listed"] == orders
    assert totals["events_duplicate"] == orders - len(dropped)
    by_channel = {c.channel: c.orders_backfilled for c in report.connections}
    assert {ch: n for ch, n in by_channel.items() if n} == world.dropped
    assert world.master() == truth  # the master learned every real sale, once
    # Every channel showed the wrong count for the SKUs with missed sales: each such drift was caused by the
    # missed orders, and was put right by the reconciler's write or by the fan-out carrying the backfilled
    # change (whichever reached the channel first); the report and the metrics say how many.
    drifts = [d for c in report.connections for d in c.drifts]
    assert totals["drifts_found"] >= len(world.markets) - len(world.dropped), report.to_json()
    assert all(d.cause == MISSED_ORDER for d in drifts), report.to_json()
    assert all(d.action in (CORRECTED, FANOUT_FIXED, SKIPPED_MASTER_MOVED) for d in drifts), report.to_json()
    assert totals["drifts_corrected"] == sum(1 for d in drifts if d.action in (CORRECTED, FANOUT_FIXED))
    assert totals["drifts_corrected"] == totals["drifts_found"]
    assert metric(registry, "reconcile_backfilled_orders_total") == len(dropped)
    assert metric(registry, "reconcile_drift_total") == totals["drifts_found"]
    assert metric(registry, "reconcile_last_success_timestamp_seconds") > 0
    await eventually(world.fanout_idle, timeout_s=120, what="the fan-out to settle after the run")
    async with aiohttp.ClientSession() as session:
        shows = await world.shows(session)
    assert shows == dict.fromkeys(world.markets, truth), f"channels differ from the master {truth}: {shows}"
    assert set(checkpoints(world.database_url)) == {m.connection.id for m in world.markets.values()}
    print(  # noqa: T201 - the figures of the run, for the reader of the test log
        f"\n{orders} orders, {len(dropped)} webhooks dropped {world.dropped}; report: {totals}"
    )


async def test_a_channel_outage_fails_only_that_connection_and_the_next_run_finishes(
    world: World, tmp_path: Path
) -> None:
    orders, down = 100, "shopify"
    channels = list(world.markets)
    rnd = random.Random(41)
    dropped = set(rnd.sample(range(orders), k=3))
    dropped.add(next(n for n in range(orders) if channels[n % len(channels)] == down and n not in dropped))
    await burst(world, orders, dropped, seed=42)
    assert down in world.dropped, world.dropped
    assert len(world.dropped) >= 2, world.dropped
    truth = {s: START - world.sold[s] for s in SKUS}
    await eventually(world.fanout_idle, timeout_s=120, what="the fan-out to settle after the burst")

    outage = world.markets[down].simulator
    outage.fail_for(503, 3600)  # type: ignore[attr-defined]  # Shopify is down for the whole first run
    settings = reconciler_settings(world.kafka, world.database_url, tmp_path / "reports", channel_retry_s=2.0)
    connections = [m.connection for m in world.markets.values()]
    first, _ = await reconcile(settings, connections)

    assert not first.ok
    failed = {c.channel: c for c in first.connections if c.failure}
    assert set(failed) == {down}, first.to_json()
    assert failed[down].failed_in == "backfill"
    assert "503" in (failed[down].failure or "")
    assert failed[down].checkpoint_after is None
    assert world.markets[down].connection.id not in checkpoints(world.database_url)
    others = [c for c in first.connections if c.channel != down]
    assert sum(c.orders_backfilled for c in others) == len(dropped) - world.dropped[down]
    partial = world.master()
    missing = {s: partial[s] - truth[s] for s in SKUS}
    assert sum(missing.values()) > 0, "the down channel's missed sale cannot be known yet"
    # The others were corrected to what the master knows now.
    async with aiohttp.ClientSession() as session:
        rest = [ch for ch in world.markets if ch != down]
        await eventually_async(
            lambda: world.shows(session, rest),
            dict.fromkeys(rest, partial),
            what="the other channels to show the master",
        )

    outage.failing_until = 0.0  # type: ignore[attr-defined]  # the outage ends
    second, _ = await reconcile(settings, connections)

    assert second.ok, second.to_json()
    assert {c.channel: c.orders_backfilled for c in second.connections if c.orders_backfilled} == {
        down: world.dropped[down]
    }
    assert world.master() == truth
    await eventually(world.fanout_idle, timeout_s=150, what="the fan-out to settle after the second run")
    async with aiohttp.ClientSession() as session:
        shows = await world.shows(session)
    assert shows == dict.fromkeys(world.markets, truth), f"channels differ from the master {truth}: {shows}"
    assert world.markets[down].connection.id in checkpoints(world.database_url)


async def eventually_async(read: object, expected: object, *, what: str, timeout_s: float = 60.0) -> None:
    """Poll an async read until it returns `expected` (channel reads cost budget: every 0.5 s at most)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        last = await read()  # type: ignore[operator]
        if last == expected:
            return
        await asyncio.sleep(0.5)  # polling with a deadline
    raise AssertionError(f"timed out waiting for {what}: last {last}, expected {expected}")
