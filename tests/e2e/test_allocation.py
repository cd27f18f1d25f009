"""Policy never_cancel end to end: the real gateway, processor and fan-out processes, three storefront
simulators with three write semantics (Shopify compare-and-set, Walmart and eBay absolute sets), real Kafka
and PostgreSQL.

A SKU's last units are split across the channels; buyers order on every storefront for as long as any
shows stock; every order a storefront took is one the master applies (no order to cancel), the whole stock
sells, and each channel ends showing exactly its grant.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psycopg
import pytest

from allocation.policy import grants, set_policy
from lab.demo.model import shown
from lab.local.stack import Stack
from lab.local.traffic import as_records
from lab.marketplaces import marketplaces, stack_config
from schemas import TOPICS, stock_allocated
from schemas.inventory_events import StockCounted
from stocksync.kafka import AsyncProducer, ensure_topics, producer_config
from stocksync.settings import KafkaSettings
from tests.e2e.test_all_channels import World as NineChannels
from tests.e2e.test_all_channels import deliver
from tests.helpers import eventually, group_caught_up

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SKU = "LAST-UNITS"
STOCK = 11
CHANNELS = ("shopify", "walmart", "ebay")


class World(NineChannels):
    """test_all_channels' world (its services, simulators and master), read the allocation's way."""

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql).fetchall()

    def available(self) -> int | None:
        return self.master().get(SKU)

    def granted(self) -> dict[str, int]:
        return grants(self.database_url, "acme", [SKU]).get(SKU, {})

    def shows(self) -> dict[str, int]:
        return {m.connection.id: shown(m, SKU) for m in self.markets.values()}

    def settled(self) -> bool:
        """Every fan-out group has written every allocation, and each channel shows its grant."""
        granted = self.granted()
        if not granted:
            return False  # the processor has not split the SKU yet
        idle = all(group_caught_up(self.kafka, f"fanout.{ch}", stock_allocated.TOPIC) for ch in self.markets)
        return idle and self.shows() == {cid: granted.get(cid, 0) for cid in self.shows()}


@pytest.fixture
async def world(kafka: KafkaSettings, database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    ensure_topics(kafka, TOPICS)
    set_policy(database_url, "acme", "never_cancel")
    async with marketplaces((SKU,), tenant="acme", channels=CHANNELS) as markets:
        stack = Stack(stack_config(markets, kafka, database_url, tmp_path / "connections.toml"))
        try:
            stack.start_all()
            await eventually(stack.ready, timeout_s=60, what="the gateway")
            yield World(markets, stack, kafka, database_url)
        finally:
            await asyncio.to_thread(stack.close)


async def test_every_order_a_storefront_takes_is_filled_and_the_stock_sells_out(world: World) -> None:
    now = datetime.now(UTC)
    seed = StockCounted(
        event_id="admin:count:seed", tenant="acme", sku=SKU, quantity=STOCK, occurred_at=now, received_at=now
    )
    producer = AsyncProducer(producer_config(world.kafka))
    try:
        await producer.send_batch(world.kafka.topic("inventory.events"), as_records([seed]))
    finally:
        await producer.close()
    await eventually(world.settled, timeout_s=60, what="every channel to show its first grant")
    first = world.shows()
    assert sum(first.values()) <= STOCK, f"the channels together show more than the stock: {first}"
    assert all(q > 0 for q in first.values()), f"a channel was left out of the first split: {first}"

    taken = 0
    storefronts = itertools.cycle(world.markets.values())
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + 90
        while world.available() != 0 and asyncio.get_running_loop().time() < deadline:
            market = next(storefronts)
            if shown(market, SKU) < 1:
                await asyncio.sleep(0.02)  # a buyer's pace on a storefront that is sold out for now
                continue
            body, headers = market.simulator.place_order(
                market.connection, 7000 + taken, [(SKU, 1)], datetime.now(UTC)
            )
            taken += 1
            await deliver(session, f"{world.stack.ingest_url}/webhooks/{market.connection.id}", body, headers)
    assert world.available() == 0, f"the stock did not sell out: {world.available()} left"
    assert taken == STOCK
    rows = world.query("SELECT outcome, count(*) FROM ledger WHERE kind = 'order_placed' GROUP BY outcome")
    outcomes = {str(outcome): int(str(n)) for outcome, n in rows}
    assert outcomes == {"applied": STOCK}, f"orders the storefronts took that the master refused: {outcomes}"
    await eventually(world.settled, timeout_s=60, what="every channel to show its grant (0)")
    assert world.shows() == dict.fromkeys(world.shows(), 0)
    audit = world.query(f"SELECT count(*) FROM allocation_log WHERE sku = '{SKU}' AND write_quantity > 0")
    assert int(str(audit[0][0])) >= len(CHANNELS) + 1, "the refills are not in the allocation log"
