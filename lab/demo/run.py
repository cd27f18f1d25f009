"""Runs the flash sale through the real pipeline on a sandbox (local Kafka and PostgreSQL, nine simulators
per policy, the services as processes): once under ``never_cancel`` and once under ``mirror``, each its own
tenant, one after the other on the same orders; then the polling baseline at 1, 5 and 15 minutes. Tables,
JSON and PNG at the end."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from allocation.policy import grants, set_policy
from allocation.rules import Policy
from channels.connection import ConnectionRegistry, to_toml
from fanout.dlq import read_dead_letters
from fanout.dlq import replay as dlq_replay
from lab.demo.ideal import instant_never_cancel
from lab.demo.metrics import counter_by, lag_buckets, quantile_ms, samples
from lab.demo.model import (
    DELIVERIES,
    FIRST_ORDER_ID,
    FIRST_REDELIVERY_S,
    POLICY_RUNS,
    REAL_TIME_LIMIT_S,
    ChannelTally,
    DemoOptions,
    EventDriven,
    flash_sale,
    poll_key,
    shown,
    tenant_of,
)
from lab.demo.png import write_png
from lab.demo.report import Baseline, machine, print_tables, report
from lab.local import local_kafka, local_postgres
from lab.local.process import eventually, make_run_dir
from lab.local.stack import Stack, StackConfig
from lab.local.traffic import as_records, stock_counts
from lab.marketplaces import BUILDERS, Marketplace, marketplaces
from lab.polling import Order, by_phase, demanded, sellable, simulate_polling
from lab.sandbox import sandbox
from schemas import inventory_events
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings


@dataclass
class Shop:
    """One run's seller: a tenant under one policy, with its own nine simulators and connections."""

    policy: Policy
    tenant: str
    markets: dict[str, Marketplace]
    replayed: int = 0  # (connection, SKU) pairs the dead-letter replay set

    @property
    def connection_ids(self) -> set[str]:
        return {m.connection.id for m in self.markets.values()}


@dataclass
class Run:
    """One event-driven run: its tallies, the fan-out's metrics around it and the wall clock it opened at."""

    result: EventDriven
    before: str = ""
    after: str = ""
    opened: datetime = field(default_factory=lambda: datetime.now(UTC))
    refused_by_sku: Counter[str] = field(default_factory=Counter)


@dataclass
class Pipeline:
    shops: dict[Policy, Shop]
    stack: Stack
    kafka: KafkaSettings
    database_url: str
    producer: AsyncProducer
    session: aiohttp.ClientSession

    async def metrics(self) -> str:
        async with self.session.get(f"http://127.0.0.1:{self.stack.services['fanout'].port}/metrics") as r:
            return await r.text()

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def mirrored_shows(self, shop: Shop) -> dict[str, tuple[int, bool]]:
        """Per SKU of a mirror tenant: the master's count, and whether the newest decision about it is a
        refused sale (then the fan-out pauses the listing at 0 until the master changes again)."""
        rows = self.query(
            "SELECT DISTINCT ON (l.sku) l.sku, l.outcome, i.available FROM ledger l "
            "JOIN inventory i USING (tenant, sku) "
            "WHERE l.tenant = %s AND l.outcome IN ('applied', 'rejected') "
            "ORDER BY l.sku, l.id DESC",
            shop.tenant,
        )
        return {sku: (int(available), outcome == "rejected") for sku, outcome, available in rows}

    def grants(self, shop: Shop, skus: Iterable[str]) -> dict[str, dict[str, int]]:
        return grants(self.database_url, shop.tenant, skus)

    def out_of_sync(self, shop: Shop, skus: Iterable[str]) -> list[str]:
        """Every (channel, SKU) that shows other than what the master allows it: under never_cancel its grant
        (at rest a channel shows exactly its grant); under mirror the master's count or, while paused, 0."""
        if shop.policy == "never_cancel":
            skus = list(skus)
            granted = self.grants(shop, skus)
            problems = [f"{sku}: the master split none of it" for sku in skus if sku not in granted]
            return problems + [
                f"{ch} {sku}: shows {shown(m, sku)}, its grant is {g.get(m.connection.id, 0)}"
                for sku, g in granted.items()
                for ch, m in shop.markets.items()
                if shown(m, sku) != g.get(m.connection.id, 0)
            ]
        return [
            f"{ch} {sku}: shows {shown(m, sku)}, the master has {available}"
            for sku, (available, paused) in self.mirrored_shows(shop).items()
            for ch, m in shop.markets.items()
            if shown(m, sku) != available and not (paused and shown(m, sku) == 0)
        ]

    async def settle(self, shop: Shop, skus: list[str], timeout_s: float = 45.0) -> list[str]:
        """Wait until every channel of `shop` shows what the master allows; return what still does not.
        Updates the fan-out gave up on (dead letters) are replayed once the fan-out has gone quiet, as an
        operator would with `stocksync dlq replay`."""
        deadline = time.monotonic() + timeout_s
        last, quiet_since, handled = "", time.monotonic(), 0
        ours = shop.connection_ids
        registry = ConnectionRegistry([m.connection for m in shop.markets.values()])
        while (problems := self.out_of_sync(shop, skus)) and time.monotonic() < deadline:
            exposition = await self.metrics()
            activity = repr(samples(exposition, "fanout_channel_calls_total"))
            if activity != last:
                last, quiet_since = activity, time.monotonic()
            if time.monotonic() - quiet_since >= 3.0:
                letters = await asyncio.to_thread(read_dead_letters, self.kafka)
                letters = [d for d in letters if d.connection_id in ours]
                if len(letters) > handled:
                    handled = len(letters)
                    done = await dlq_replay(letters, registry, self.database_url)
                    shop.replayed += sum(r.outcome == "set" for r in done)
            await asyncio.sleep(0.5)  # polling interval, bounded by the deadline above
        return problems


@asynccontextmanager
async def pipeline(
    skus: list[str],
    say: Callable[[str], None],
    *,
    policies: Iterable[Policy] = POLICY_RUNS,
    label: str = "demo",
) -> AsyncIterator[Pipeline]:
    """Kafka, PostgreSQL, nine simulators per policy (a tenant each, its policy set in the master) and the
    services, the one fan-out process serving every connection; everything stopped and removed at the end."""
    async with AsyncExitStack() as cleanup:
        pg = cleanup.enter_context(local_postgres())
        say(f"PostgreSQL: {pg.describe()}")
        kafka_endpoint = cleanup.enter_context(local_kafka())
        say(f"Kafka: {kafka_endpoint.describe()}")
        shops: dict[Policy, Shop] = {}
        for policy in policies:
            tenant = tenant_of(policy)
            markets = await cleanup.enter_async_context(marketplaces(tuple(skus), tenant=tenant))
            shops[policy] = Shop(policy, tenant, markets)
            say(f"simulators on loopback for tenant {tenant} ({policy}): {', '.join(markets)}")
        # entered after the simulators, so its stack stops while they still serve the stopping fan-out
        box = await cleanup.enter_async_context(
            sandbox(kafka_endpoint.bootstrap_servers, pg.url, label=label)
        )
        kafka, database_url = box.kafka, box.database_url
        for shop in shops.values():
            await asyncio.to_thread(set_policy, database_url, shop.tenant, shop.policy)
        run_dir = make_run_dir(label)
        # The services read their connections only at start: every run's connections are in the file now.
        connections_file = run_dir / "connections.toml"
        connections_file.write_text(
            to_toml(m.connection for shop in shops.values() for m in shop.markets.values())
        )
        config = StackConfig(
            kafka.bootstrap_servers,
            database_url,
            connections_file,
            kafka.topic_prefix,
            kafka.partitions,
            channels=tuple(BUILDERS),
            fanout_together=True,
        )
        n = sum(len(s.markets) for s in shops.values())
        say(
            f"services: ingest, processor, fanout (all nine channels, {n} connections) starting as "
            "processes; waiting for them"
        )
        stack = await box.start(config, ready_timeout_s=90, run_dir=run_dir)
        producer = AsyncProducer(producer_config(kafka))
        cleanup.push_async_callback(producer.close)
        session = await cleanup.enter_async_context(aiohttp.ClientSession())
        yield Pipeline(shops, stack, kafka, database_url, producer, session)


class Sale:
    """Plays the orders through one shop's storefronts and the gateway."""

    def __init__(self, p: Pipeline, shop: Shop, run: Run) -> None:
        self.p, self.shop, self.run = p, shop, run
        self.result = run.result
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
        """A buyer orders on a storefront: taken only while the storefront's own count covers it."""
        market = self.shop.markets[order.channel]
        tally = self.result.per_channel[order.channel]
        tally.offered += 1
        if shown(market, order.sku) < order.quantity:
            tally.refused += 1
            self.run.refused_by_sku[order.sku] += 1
            return
        tally.taken += 1
        body, headers = market.simulator.place_order(
            market.connection, FIRST_ORDER_ID + n, [(order.sku, order.quantity)], datetime.now(UTC)
        )
        self.deliveries.append(asyncio.create_task(self.deliver(market, body, headers)))


async def seed_stock(p: Pipeline, stock: dict[str, int], progress: Progress) -> None:
    """Record the seller's counts for every shop; wait until every channel shows what the master allows it
    (mirror: the count; never_cancel: the connection's first grant)."""
    task = progress.add_task(
        f"recording the seller's counts on nine channels x {len(p.shops)} tenants",
        total=len(stock) * len(p.shops),
    )
    for shop in p.shops.values():
        # event ids are global (the ledger keeps one row per id): each tenant's counts need their own
        seed = stock_counts(shop.tenant, stock, tag=f"seed:{shop.tenant}")
        await p.producer.send_batch(p.kafka.topic(inventory_events.TOPIC), as_records(seed))

    def done_in(shop: Shop) -> int:
        if shop.policy == "never_cancel":
            granted = p.grants(shop, stock)
            return sum(
                sum(g.values()) > 0
                and all(shown(m, sku) == g.get(m.connection.id, 0) for m in shop.markets.values())
                for sku, g in granted.items()
            )
        return sum(all(shown(m, sku) == q for m in shop.markets.values()) for sku, q in stock.items())

    def seeded() -> bool:
        done = sum(done_in(shop) for shop in p.shops.values())
        progress.update(task, completed=done)
        return done == len(stock) * len(p.shops)

    await eventually(seeded, timeout_s=120, what="every channel to show what the master allows it")


async def play(
    p: Pipeline,
    shop: Shop,
    options: DemoOptions,
    stock: dict[str, int],
    orders: list[Order],
    progress: Progress,
) -> Run:
    """Play the orders on `shop`'s storefronts by the sale's clock, wait until the master has every sale and
    every channel settled; the fan-out's metrics are read right before the first order and after settling."""
    run = Run(
        EventDriven(
            shop.policy, shop.tenant, len(orders), per_channel={ch: ChannelTally() for ch in shop.markets}
        )
    )
    result = run.result
    playing = progress.add_task(f"{shop.policy}: {len(orders)} orders on nine channels", total=len(orders))
    sale = Sale(p, shop, run)
    run.before = await p.metrics()
    started = time.monotonic()
    run.opened = datetime.now(UTC)
    for n, order in enumerate(orders):
        delay = started + order.at_s / options.compression - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the orders as the sale's clock says, not synchronisation
        sale.offer(n, order)
        progress.update(playing, completed=n + 1)
    result.sale_s = time.monotonic() - started
    await asyncio.gather(*sale.deliveries)

    taken = sum(t.taken for t in result.per_channel.values())
    settling = progress.add_task(f"{shop.policy}: every sale in the master, every channel settled", total=2)
    sales = taken - result.webhooks_not_accepted
    await eventually(
        lambda: (
            p.query("SELECT count(*) FROM ledger WHERE tenant = %s AND kind = 'order_placed'", shop.tenant)[
                0
            ][0]
            >= sales
        ),
        timeout_s=120,
        what=f"the processor to record {sales} sales of {shop.tenant}",
    )
    progress.update(settling, completed=1)
    result.skus_out_of_sync = await p.settle(shop, list(stock))
    # Propagation and calls of the sale, its refills and its trailing writes included (the dead-letter replay
    # goes to the channels directly: it is in neither).
    run.after = await p.metrics()
    result.dlq_replayed = shop.replayed
    progress.update(settling, completed=2)
    return run


def tally_event_driven(
    p: Pipeline, shop: Shop, run: Run, stock: dict[str, int], orders: list[Order], options: DemoOptions
) -> None:
    """Fill in what the master, the ledger and the fan-out's metrics say about the run."""
    result, before, after = run.result, run.before, run.after
    for channel, outcome, n in p.query(
        "SELECT channel, outcome, count(*) FROM ledger WHERE tenant = %s AND kind = 'order_placed' "
        "GROUP BY channel, outcome",
        shop.tenant,
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
            shop.tenant,
        )
    }
    result.units_sold = sum(sold.values())
    result.sold_by_sku = {sku: sold.get(sku, 0) for sku in stock}
    result.refused_by_sku = {sku: run.refused_by_sku[sku] for sku in stock}
    result.sellable = sellable(stock, orders)
    result.oversells = sum(max(0, sold.get(sku, 0) - q) for sku, q in stock.items())
    result.accepted = sum(t.applied for t in result.per_channel.values())
    result.rejected = sum(t.rejected for t in result.per_channel.values())
    result.refused_by_channel = sum(t.refused for t in result.per_channel.values())
    result.cancellations_needed = result.rejected  # a channel took these orders; the master had no stock
    # When each order to cancel was placed, by the sale's clock (the channels stamp their orders, some to the
    # second).
    result.cancelled_at = sorted(
        min(options.sale_s, max(0.0, (placed - run.opened).total_seconds() * options.compression))
        for (placed,) in p.query(
            "SELECT occurred_at FROM ledger WHERE tenant = %s AND kind = 'order_placed' "
            "AND outcome = 'rejected'",
            shop.tenant,
        )
    )
    result.left_by_sku = {
        str(sku): int(q)
        for sku, q in p.query(
            "SELECT sku, available FROM inventory WHERE tenant = %s ORDER BY sku", shop.tenant
        )
    }
    if shop.policy == "never_cancel":
        result.stranded = {sku: sum(g.values()) for sku, g in sorted(p.grants(shop, stock).items())}
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


def polling_baselines(
    options: DemoOptions, stock: dict[str, int], orders: list[Order], channels: list[str]
) -> dict[str, Baseline]:
    """The polling baseline at each interval: the headline with the job's first pass half an interval after
    the opening (a sale opening at a random moment of the job's cycle waits that long on average), and the
    same sale at twelve phases of the cycle for the spread."""
    out = {}
    for minutes in options.poll_intervals:
        headline = simulate_polling(orders, stock, channels, poll_minutes=minutes, phase_s=minutes * 30.0)
        out[poll_key(minutes)] = Baseline(
            minutes,
            headline,
            by_phase(orders, stock, channels, poll_minutes=minutes),
            sellable(stock, orders),
        )
    return out


async def play_all(
    p: Pipeline, options: DemoOptions, stock: dict[str, int], orders: list[Order], progress: Progress
) -> dict[Policy, Run]:
    """Seed every shop, then play the same orders on each, one after the other (the fan-out's propagation
    histogram is per channel, not per tenant: each run needs a window of its own), and tally them."""
    await seed_stock(p, stock, progress)
    runs: dict[Policy, Run] = {}
    for policy, shop in p.shops.items():
        runs[policy] = await play(p, shop, options, stock, orders, progress)
        tally_event_driven(p, shop, runs[policy], stock, orders, options)
    return runs


def say_to(console: Console) -> Callable[[str], None]:
    return lambda m: console.print(f"[dim]{m}[/]")


async def run_demo(console: Console, options: DemoOptions | None = None) -> bool:
    """Play the flash sale three ways; True when under never_cancel nothing was oversold, every webhook was
    accepted and every channel ended showing its grant (the sell-through target is reported apart)."""
    options = options or DemoOptions()
    started = time.monotonic()
    console.rule("stocksync demo: a flash sale on nine marketplaces, never_cancel vs mirror vs polling")
    warning = options.clock_warning()
    if warning:
        console.print(f"[bold yellow]warning: {warning}[/]")
    if options.seconds > REAL_TIME_LIMIT_S:
        console.print(
            f"[yellow]the sale is played over {options.seconds:g} s, once per policy: the demo takes that "
            f"long twice (its default sale lasts {DemoOptions().seconds:g} s)[/]"
        )
    channels = list(BUILDERS)
    stock, orders = flash_sale(options, channels)
    say = say_to(console)
    box = machine()
    say(f"machine: {box['cpu']}, {box['cores']} cores ({box['arch']})")
    async with pipeline(list(stock), say) as p:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            runs = await play_all(p, options, stock, orders, progress)
    say("stopped the services, the simulators, PostgreSQL and Kafka; removed the demo database and topics")
    polling = polling_baselines(options, stock, orders, channels)
    instant = instant_never_cancel(stock, orders, channels)
    results = {policy: run.result for policy, run in runs.items()}
    print_tables(console, options, results, polling, stock, demanded(orders), instant, box)
    options.out.mkdir(parents=True, exist_ok=True)
    write_png(
        options.out / "demo.png",
        results,
        {policy: (run.before, run.after) for policy, run in runs.items()},
        polling,
        options,
    )
    data = report(options, stock, orders, results, polling, instant, time.monotonic() - started, box)
    (options.out / "demo.json").write_text(json.dumps(data, indent=2) + "\n")
    console.print(f"reports: {options.out / 'demo.json'}, {options.out / 'demo.png'}")
    nc = results["never_cancel"]
    for policy, ed in results.items():
        for problem in ed.skus_out_of_sync[:10]:
            console.print(f"[red]{policy}: not in sync:[/] {problem}")
        if ed.webhooks_not_accepted:
            console.print(f"[red]{policy}: {ed.webhooks_not_accepted} webhooks were never accepted[/]")
    ok = nc.oversells == 0 and not nc.skus_out_of_sync and nc.webhooks_not_accepted == 0
    console.print(
        f"never_cancel: {nc.oversells} oversold units, every webhook accepted: "
        f"{'yes' if nc.webhooks_not_accepted == 0 else 'NO'}, every channel at its grant: "
        f"{'yes' if not nc.skus_out_of_sync else 'NO'} -> exit {0 if ok else 1}"
    )
    return ok
