"""Runs the flash sale through the real pipeline on a sandbox (local Kafka and PostgreSQL, nine simulators,
the services as processes), then the polling baseline on the same orders; tables, JSON and PNG at the end."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from channels.connection import ConnectionRegistry
from fanout.dlq import read_dead_letters
from fanout.dlq import replay as dlq_replay
from lab.demo.metrics import counter_by, lag_buckets, quantile_ms, samples
from lab.demo.model import (
    DELIVERIES,
    FIRST_ORDER_ID,
    FIRST_REDELIVERY_S,
    TENANT,
    ChannelTally,
    DemoOptions,
    EventDriven,
    flash_sale,
    shown,
)
from lab.demo.png import write_png
from lab.demo.report import print_tables, report
from lab.local import local_kafka, local_postgres
from lab.local.process import eventually, make_run_dir
from lab.local.stack import Stack
from lab.local.traffic import as_records, stock_counts
from lab.marketplaces import BUILDERS, Marketplace, marketplaces, stack_config
from lab.polling import Order, simulate_polling
from lab.sandbox import sandbox
from schemas import inventory_events
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings


@dataclass
class Pipeline:
    markets: dict[str, Marketplace]
    stack: Stack
    kafka: KafkaSettings
    database_url: str
    producer: AsyncProducer
    session: aiohttp.ClientSession
    replayed: int = 0

    async def metrics(self) -> str:
        async with self.session.get(f"http://127.0.0.1:{self.stack.services['fanout'].port}/metrics") as r:
            return await r.text()

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def expected_shows(self) -> dict[str, tuple[int, bool]]:
        """Per SKU: the master's count, and whether the newest decision about it is a refused sale (then the
        fan-out pauses the listing at 0 until the master changes again)."""
        rows = self.query(
            "SELECT DISTINCT ON (l.sku) l.sku, l.outcome, i.available FROM ledger l "
            "JOIN inventory i USING (tenant, sku) "
            "WHERE l.tenant = %s AND l.outcome IN ('applied', 'rejected') "
            "ORDER BY l.sku, l.id DESC",
            TENANT,
        )
        return {sku: (int(available), outcome == "rejected") for sku, outcome, available in rows}

    def out_of_sync(self) -> list[str]:
        """Every (channel, SKU) that shows neither the master's count nor, while paused, 0."""
        return [
            f"{ch} {sku}: shows {shown(m, sku)}, the master has {available}"
            for sku, (available, paused) in self.expected_shows().items()
            for ch, m in self.markets.items()
            if shown(m, sku) != available and not (paused and shown(m, sku) == 0)
        ]

    async def settle(self, timeout_s: float = 45.0) -> int:
        """Wait until every channel shows what the master allows. Updates the fan-out gave up on (dead
        letters) are replayed once the fan-out has gone quiet, as an operator would with `stocksync dlq
        replay`; returns how many (connection, SKU) pairs that set."""
        deadline = time.monotonic() + timeout_s
        last, quiet_since, replayed = "", time.monotonic(), 0
        while self.out_of_sync() and time.monotonic() < deadline:
            exposition = await self.metrics()
            activity = repr(samples(exposition, "fanout_channel_calls_total"))
            if activity != last:
                last, quiet_since = activity, time.monotonic()
            dead = sum(v for _l, v in samples(exposition, "fanout_dlq_writes_total"))
            if dead > replayed and time.monotonic() - quiet_since >= 3.0:
                letters = await asyncio.to_thread(read_dead_letters, self.kafka)
                registry = ConnectionRegistry([m.connection for m in self.markets.values()])
                done = await dlq_replay(letters, registry, self.database_url)
                replayed = max(int(dead), len(done))
                self.replayed += sum(r.outcome == "set" for r in done)
            await asyncio.sleep(0.5)  # polling interval, bounded by the deadline above
        return self.replayed


@asynccontextmanager
async def pipeline(skus: list[str], say: Callable[[str], None]) -> AsyncIterator[Pipeline]:
    """Kafka, PostgreSQL, nine simulators and the services; everything stopped and removed at the end."""
    async with AsyncExitStack() as cleanup:
        pg = cleanup.enter_context(local_postgres())
        say(f"PostgreSQL: {pg.describe()}")
        kafka_endpoint = cleanup.enter_context(local_kafka())
        say(f"Kafka: {kafka_endpoint.describe()}")
        markets = await cleanup.enter_async_context(marketplaces(tuple(skus), tenant=TENANT))
        say(f"simulators on loopback: {', '.join(markets)}")
        # entered after the simulators, so its stack stops while they still serve the stopping fan-out
        box = await cleanup.enter_async_context(
            sandbox(kafka_endpoint.bootstrap_servers, pg.url, label="demo")
        )
        kafka, database_url = box.kafka, box.database_url
        run_dir = make_run_dir("demo")
        say("services: ingest, processor, fanout (all nine channels) starting as processes; waiting for them")
        config = stack_config(markets, kafka, database_url, run_dir / "connections.toml")
        stack = await box.start(config, ready_timeout_s=90, run_dir=run_dir)
        producer = AsyncProducer(producer_config(kafka))
        cleanup.push_async_callback(producer.close)
        session = await cleanup.enter_async_context(aiohttp.ClientSession())
        yield Pipeline(markets, stack, kafka, database_url, producer, session)


class Sale:
    """Plays the orders through the storefronts and the gateway."""

    def __init__(self, p: Pipeline, result: EventDriven) -> None:
        self.p, self.result = p, result
        self.gate = asyncio.Semaphore(48)
        self.deliveries: list[asyncio.Task[None]] = []
        self.jitter = random.Random(0)  # noqa: S311 - redelivery jitter, not secrets

    async def deliver(self, market: Marketplace, body: bytes, headers: dict[str, str]) -> None:
        url = f"{self.p.stack.ingest_url}/webhooks/{market.connection.id}"
        for attempt in range(DELIVERIES):
            async with self.gate, self.p.session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                status = resp.status
            if status == 200:
                return
            if status != 503:
                break
            # the channel's redelivery backoff (shortened), with jitter so retries do not come in waves
            await asyncio.sleep(FIRST_REDELIVERY_S * 2 ** min(attempt, 4) * (0.5 + self.jitter.random()))
        self.result.webhooks_not_accepted += 1

    def offer(self, n: int, order: Order) -> None:
        market = self.p.markets[order.channel]
        tally = self.result.per_channel[order.channel]
        tally.offered += 1
        if shown(market, order.sku) < order.quantity:
            tally.refused += 1
            return
        tally.taken += 1
        body, headers = market.simulator.place_order(
            market.connection, FIRST_ORDER_ID + n, [(order.sku, order.quantity)], datetime.now(UTC)
        )
        self.deliveries.append(asyncio.create_task(self.deliver(market, body, headers)))


async def run_event_driven(
    p: Pipeline, options: DemoOptions, stock: dict[str, int], orders: list[Order], progress: Progress
) -> tuple[EventDriven, str, str]:
    """Seed, play, wait until every channel settled; the result and the fan-out metrics before and after."""
    result = EventDriven(orders=len(orders), per_channel={ch: ChannelTally() for ch in p.markets})
    seeding = progress.add_task("recording the seller's counts on nine channels", total=len(stock))
    seed = stock_counts(TENANT, stock, tag="seed")
    await p.producer.send_batch(p.kafka.topic(inventory_events.TOPIC), as_records(seed))

    def seeded() -> bool:
        done = sum(all(shown(m, sku) == q for m in p.markets.values()) for sku, q in stock.items())
        progress.update(seeding, completed=done)
        return done == len(stock)

    await eventually(seeded, timeout_s=120, what="every channel to show the seller's counts")
    before = await p.metrics()

    playing = progress.add_task(f"flash sale: {len(orders)} orders on nine channels", total=len(orders))
    sale = Sale(p, result)
    compression = options.sale_minutes * 60 / options.seconds
    started = time.monotonic()
    for n, order in enumerate(orders):
        delay = started + order.at_s / compression - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the orders as the sale's clock says, not synchronisation
        sale.offer(n, order)
        progress.update(playing, completed=n + 1)
    await asyncio.gather(*sale.deliveries)

    taken = sum(t.taken for t in result.per_channel.values())
    settling = progress.add_task("every sale in the master, every channel settled", total=2)
    ledger_rows = len(stock) + taken - result.webhooks_not_accepted
    await eventually(
        lambda: p.query("SELECT count(*) FROM ledger WHERE tenant = %s", TENANT)[0][0] >= ledger_rows,
        timeout_s=120,
        what=f"the processor to record {ledger_rows} events",
    )
    progress.update(settling, completed=1)
    after = await p.metrics()  # propagation and calls of the sale itself, before any dead-letter replay
    result.dlq_replayed = await p.settle()
    result.skus_out_of_sync = p.out_of_sync()
    progress.update(settling, completed=2)
    return result, before, after


def tally_event_driven(
    p: Pipeline, result: EventDriven, stock: dict[str, int], before: str, after: str
) -> None:
    """Fill in what the master, the ledger and the fan-out's metrics say about the sale."""
    for channel, outcome, n in p.query(
        "SELECT channel, outcome, count(*) FROM ledger WHERE tenant = %s AND kind = 'order_placed' "
        "GROUP BY channel, outcome",
        TENANT,
    ):
        tally = result.per_channel.get(str(channel))
        if tally is not None and outcome == "applied":
            tally.applied += int(n)
        elif tally is not None and outcome == "rejected":
            tally.rejected += int(n)
    sold = {
        str(sku): int(units)
        for sku, units in p.query(
            "SELECT sku, -sum(delta) FROM ledger WHERE tenant = %s AND kind = 'order_placed' "
            "AND outcome = 'applied' GROUP BY sku",
            TENANT,
        )
    }
    result.units_sold = sum(sold.values())
    result.oversells = sum(max(0, sold.get(sku, 0) - q) for sku, q in stock.items())
    result.accepted = sum(t.applied for t in result.per_channel.values())
    result.rejected = sum(t.rejected for t in result.per_channel.values())
    result.refused_by_channel = sum(t.refused for t in result.per_channel.values())
    result.cancellations_needed = result.rejected  # a channel took these orders; the master had no stock
    calls = counter_by(after, before, "fanout_channel_calls_total", "channel", "result")
    dlq = counter_by(after, before, "fanout_dlq_writes_total", "channel")
    for channel, tally in result.per_channel.items():
        buckets = lag_buckets(after, before, channel)
        tally.p50_ms, tally.p99_ms = quantile_ms(buckets, 0.5), quantile_ms(buckets, 0.99)
        tally.calls = int(sum(v for (ch, _r), v in calls.items() if ch == channel))
        tally.rate_limited = int(calls[(channel, "rate_limited")])
        tally.dlq = int(dlq[(channel,)])
    everything = lag_buckets(after, before)
    result.p50_ms, result.p99_ms = quantile_ms(everything, 0.5), quantile_ms(everything, 0.99)
    result.outbound_calls = sum(t.calls for t in result.per_channel.values())
    result.rate_limited = sum(t.rate_limited for t in result.per_channel.values())
    result.dlq = sum(t.dlq for t in result.per_channel.values())


async def run_demo(console: Console, options: DemoOptions | None = None) -> bool:
    """Play the flash sale both ways; True when the pipeline oversold nothing, every webhook was accepted and
    every channel ended showing what the master allows."""
    options = options or DemoOptions()
    started = time.monotonic()
    console.rule("stocksync demo: a flash sale on nine marketplaces, event-driven vs polling")
    channels = list(BUILDERS)
    stock, orders = flash_sale(options, channels)
    say: Callable[[str], None] = lambda m: console.print(f"[dim]{m}[/]")  # noqa: E731
    async with pipeline(list(stock), say) as p:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            ed, before, after = await run_event_driven(p, options, stock, orders, progress)
        tally_event_driven(p, ed, stock, before, after)
    say("stopped the services, the simulators, PostgreSQL and Kafka; removed the demo database and topics")
    polling = simulate_polling(orders, stock, channels, poll_minutes=options.poll_minutes)
    print_tables(console, options, ed, polling, sum(stock.values()))
    options.out.mkdir(parents=True, exist_ok=True)
    write_png(options.out / "demo.png", ed, polling, before, after, options)
    data = report(options, stock, ed, polling, time.monotonic() - started)
    (options.out / "demo.json").write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"reports: {options.out / 'demo.json'}, {options.out / 'demo.png'}")
    ok = ed.oversells == 0 and not ed.skus_out_of_sync and ed.webhooks_not_accepted == 0
    for problem in ed.skus_out_of_sync[:10]:
        console.print(f"[red]not in sync:[/] {problem}")
    if ed.webhooks_not_accepted:
        console.print(f"[red]{ed.webhooks_not_accepted} webhooks were never accepted by the gateway[/]")
    verdict = "[green]0 oversold units[/]" if ed.oversells == 0 else f"[red]{ed.oversells} oversold units[/]"
    console.print(
        f"event-driven: {verdict}, every channel in sync: {'yes' if not ed.skus_out_of_sync else 'NO'}; "
        f"polling every {options.poll_minutes:g} min oversold {polling.oversells} units "
        f"({polling.cancellations} orders to cancel)"
    )
    return ok
