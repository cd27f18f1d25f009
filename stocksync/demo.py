"""``stocksync demo``: orders travel the real pipeline, and the console shows what happened at each step.

Runs on real local Kafka and PostgreSQL with the Shopify simulator: a sale, Shopify's retry of the same
webhook, a sale larger than the stock, a forged webhook, and a race for the last units.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import psycopg
from rich.console import Console
from rich.table import Table

from channels.shopify import webhooks
from channels.shopify.simulator import order_webhook
from stocksync.local.process import eventually
from stocksync.local.world import World, local_world

SKUS = ("TSHIRT-M", "MUG-BLUE", "POSTER-A2")
COUNTS = {"TSHIRT-M": 10, "MUG-BLUE": 5, "POSTER-A2": 2}


@dataclass
class Step:
    what: str
    answers: str
    master: str
    shopify: str
    propagation_ms: str


class Demo:
    def __init__(self, world: World, session: aiohttp.ClientSession, console: Console) -> None:
        self.world, self.session, self.console = world, session, console
        self.order_ids = itertools.count(5001)
        self.steps: list[Step] = []

    def row(self, what: str, answers: str, sku: str, propagation_ms: float | None) -> None:
        available, version = self.world.master().get(sku, (0, 0))
        shows = self.world.simulator.available.get(self.world.item(sku))
        ms = f"{propagation_ms:.0f}" if propagation_ms is not None else "-"
        self.steps.append(Step(what, answers, f"{sku}={available} (v{version})", f"{sku}={shows}", ms))
        self.console.print(f"  [bold]{what}[/]: {answers}; master {sku}={available}, Shopify shows {shows}")

    async def post(self, body: bytes, headers: dict[str, str]) -> int:
        url = f"{self.world.stack.ingest_url}/webhooks/{self.world.connection.id}"
        async with self.session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    def order(self, sku: str, quantity: int) -> tuple[bytes, dict[str, str]]:
        order_id = next(self.order_ids)
        line = {
            "id": order_id * 10,
            "variant_id": int(self.world.connection.listings[sku].listing_id),
            "sku": sku,
            "quantity": quantity,
        }
        return order_webhook(self.world.connection, order_id, [line], datetime.now(UTC))

    async def until_shopify_shows(self, sku: str, quantity: int, since: float) -> float:
        item = self.world.item(sku)
        call = await eventually(
            lambda: next(
                (
                    c
                    for c in self.world.simulator.calls
                    if c.inventory_item_id == item and c.quantity == quantity and c.at >= since
                ),
                None,
            ),
            timeout_s=30,
            what=f"Shopify to show {sku}={quantity}",
        )
        return (call.at - since) * 1000 if call else 0.0

    async def until_ledger_has(self, rows: int) -> None:
        def count() -> bool:
            with psycopg.connect(self.world.database_url) as conn:
                row = conn.execute("SELECT count(*) FROM ledger").fetchone()
            return bool(row and row[0] >= rows)

        await eventually(count, timeout_s=30, what=f"{rows} ledger rows")

    async def play(self) -> None:
        world = self.world
        await world.seed(COUNTS)
        for sku, qty in COUNTS.items():
            await self.until_shopify_shows(sku, qty, 0.0)
        self.row("seller's counts recorded", "3 stock counts", "TSHIRT-M", None)

        body, headers = self.order("TSHIRT-M", 3)
        started = time.monotonic()
        status = await self.post(body, headers)
        ms = await self.until_shopify_shows("TSHIRT-M", 7, started)
        self.row("buyer orders 3 x TSHIRT-M on Shopify", f"HTTP {status}", "TSHIRT-M", ms)

        status = await self.post(body, headers)
        await self.until_ledger_has(len(COUNTS) + 1)
        self.row(
            "Shopify retries the same webhook", f"HTTP {status}, a duplicate: no change", "TSHIRT-M", None
        )

        body, headers = self.order("MUG-BLUE", 50)
        started = time.monotonic()
        status = await self.post(body, headers)
        await self.until_ledger_has(len(COUNTS) + 2)
        await self.until_shopify_shows("MUG-BLUE", 0, started)
        self.row(
            "an order of 50 x MUG-BLUE (5 in stock)",
            f"HTTP {status}, rejected; listing paused",
            "MUG-BLUE",
            None,
        )

        started = time.monotonic()
        await world.seed({"MUG-BLUE": 5})
        ms = await self.until_shopify_shows("MUG-BLUE", 5, started)
        self.row("the seller recounts MUG-BLUE: 5", "a stock count event", "MUG-BLUE", ms)

        body, headers = self.order("MUG-BLUE", 1)
        forged = {**headers, webhooks.SIGNATURE_HEADER: "Zm9yZ2VkIHNpZ25hdHVyZQ=="}
        status = await self.post(body, forged)
        self.row("a webhook with a forged signature", f"HTTP {status}, nothing published", "MUG-BLUE", None)

        orders = [self.order("POSTER-A2", 1) for _ in range(5)]
        started = time.monotonic()
        statuses = await asyncio.gather(*(self.post(b, h) for b, h in orders))
        ms = await self.until_shopify_shows("POSTER-A2", 0, started)
        await self.until_ledger_has(len(COUNTS) + 3 + len(orders))
        self.row(
            "5 buyers race for the last 2 x POSTER-A2",
            f"HTTP {sorted(set(statuses))}: 2 applied, 3 rejected",
            "POSTER-A2",
            ms,
        )

    def report(self) -> None:
        table = Table(title="What happened")
        for col in ("step", "gateway answer", "master record", "Shopify shows", "webhook→Shopify ms"):
            table.add_column(col)
        for s in self.steps:
            table.add_row(s.what, s.answers, s.master, s.shopify, s.propagation_ms)
        self.console.print(table)
        final = Table(title="Every SKU at the end: master = Shopify")
        for col in ("SKU", "master available", "version", "Shopify shows", "in sync"):
            final.add_column(col)
        for sku, (available, version) in sorted(self.world.master().items()):
            shows = self.world.simulator.available.get(self.world.item(sku))
            final.add_row(
                sku, str(available), str(version), str(shows), "yes" if shows == available else "NO"
            )
        self.console.print(final)


async def run_demo(console: Console) -> bool:
    """Play the demo; True if every SKU ended with Shopify showing the master quantity."""
    console.rule("stocksync demo: one master stock, kept true on Shopify")
    async with (
        local_world(skus=SKUS, label="demo", say=lambda m: console.print(f"[dim]{m}[/]")) as world,
        aiohttp.ClientSession() as session,
    ):
        demo = Demo(world, session, console)
        await demo.play()
        demo.report()
        in_sync = all(
            world.simulator.available.get(world.item(sku)) == available
            for sku, (available, _v) in world.master().items()
        )
    console.print("[dim]stopped the services, PostgreSQL and Kafka; removed the demo database and topics[/]")
    return in_sync
