"""``stocksync demo``: a flash sale on nine marketplaces, event-driven through the real pipeline and polled.

Real local Kafka and PostgreSQL, the gateway, the processor and one fan-out process for all nine channels as
separate processes, and a simulator of each marketplace on loopback. The seller records a small stock of each
SKU; then thousands of buyers order across the channels, most of them for a few popular SKUs. A storefront
takes an order only while it shows enough units (its own count, which the fan-out keeps set to the master),
takes them off its own count and posts the signed webhook, as the real channel does; the master refuses any
sale beyond the stock. The same orders are then played against the polling baseline (``lab.polling``):
every channel sells from its own count, and a sync job copies the master out every N minutes.

The sale lasts ``sale_minutes`` of simulated time, played in ``seconds`` of real time (every gap between two
orders is shortened by the same factor, which makes the pipeline's propagation look that many times slower
in sale time); the baseline runs on the sale's time axis.

Reports: a table on the console, ``<out>/demo.json`` and ``<out>/demo.png``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from channels.connection import ConnectionRegistry, Listing
from fanout.dlq import read_dead_letters
from fanout.dlq import replay as dlq_replay
from lab.local import local_kafka, local_postgres
from lab.local.postgres import create_database, drop_database
from lab.local.process import eventually, make_run_dir, wait_until
from lab.local.stack import Stack
from lab.local.traffic import as_records, stock_counts
from lab.marketplaces import BUILDERS, Marketplace, marketplaces, stack_config
from lab.polling import Order, PollingResult, simulate_polling
from schemas import TOPICS, inventory_events
from stocksync.db import migrate
from stocksync.kafka import AsyncProducer, delete_prefixed_topics, ensure_topics, producer_config
from stocksync.metrics import bucket_growth, quantile
from stocksync.settings import KafkaSettings

TENANT = "demo"
FIRST_ORDER_ID = 500_000
# A channel redelivers a webhook the gateway answered 503 (a thin payload's order could not be fetched yet,
# e.g. the channel's API said 429) with growing delays; here seconds instead of the channels' minutes.
DELIVERIES = 10
FIRST_REDELIVERY_S = 0.5


@dataclass(frozen=True)
class DemoOptions:
    skus: int = 20
    orders: int = 2000
    seconds: float = 30.0  # real time the sale is played in
    sale_minutes: float = 60.0  # how long the sale lasts in simulated time
    poll_minutes: float = 15.0
    seed: int = 8
    out: Path = Path("reports")

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be positive, got {value}"
            for name, value in (
                ("skus", self.skus),
                ("orders", self.orders),
                ("seconds", self.seconds),
                ("sale_minutes", self.sale_minutes),
                ("poll_minutes", self.poll_minutes),
            )
            if value <= 0
        ]
        if problems:
            raise ValueError("; ".join(problems))


def flash_sale(options: DemoOptions, channels: list[str]) -> tuple[dict[str, int], list[Order]]:
    """The seller's stock (small, 5 to 40 units a SKU) and the buyers' orders, deterministic for the seed.

    Orders come early (a flash sale opens with a rush, then thins out), most of them for a few popular SKUs
    (Zipf weights), on any of the channels; one in ten asks for 2 units and one in thirty for 3.
    """
    rnd = random.Random(options.seed)  # noqa: S311 - reproducible demo traffic, not secrets
    skus = [f"FLASH-{n:02d}" for n in range(options.skus)]
    stock = {sku: rnd.randint(5, 40) for sku in skus}
    weights = [1 / (rank + 1) for rank in range(len(skus))]
    sale_s = options.sale_minutes * 60
    orders = []
    for _ in range(options.orders):
        roll = rnd.random()
        orders.append(
            Order(
                at_s=round(sale_s * rnd.random() ** 1.3, 3),
                channel=rnd.choice(channels),
                sku=rnd.choices(skus, weights)[0],
                quantity=3 if roll < 1 / 30 else 2 if roll < 0.1 else 1,
            )
        )
    orders.sort(key=lambda o: o.at_s)
    return stock, orders


def count_key(channel: str, sku: str, listing: Listing) -> str:
    """The key under which `channel`'s simulator keeps its own count of `sku` (each API names it its way)."""
    if channel == "ebay":
        return sku
    if channel in ("shopify", "tiktok"):
        return listing.inventory_ref or ""
    if channel == "etsy":
        return listing.inventory_ref or sku
    if channel == "woocommerce" and listing.inventory_ref:
        return listing.inventory_ref.partition("/")[2]
    return listing.listing_id  # amazon, walmart, bigcommerce, flipkart; woocommerce without variations


def shown(market: Marketplace, sku: str) -> int:
    """What the storefront shows buyers now: the simulator's own count (no API call spent on it)."""
    available: dict[str, int] = getattr(market.simulator, "available", {})
    return available.get(count_key(market.channel, sku, market.connection.listings[sku]), 0)


# --- the fan-out's metrics ---


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name:
                out.append((dict(s.labels), float(s.value)))
    return out


def counter_by(exposition: str, since: str, name: str, *keys: str) -> defaultdict[tuple[str, ...], float]:
    """A counter's growth between two expositions, summed by the given label values."""
    out: defaultdict[tuple[str, ...], float] = defaultdict(float)
    for text, sign in ((exposition, 1), (since, -1)):
        for labels, value in samples(text, name):
            out[tuple(labels.get(k, "") for k in keys)] += sign * value
    return out


def lag_buckets(exposition: str, since: str, channel: str | None = None) -> list[tuple[float, float]]:
    """Cumulative sync-lag bucket counts observed between two expositions, one channel's or all."""
    labels = {"channel": channel} if channel is not None else {}
    return bucket_growth(exposition, "sync_lag_seconds", since=since, **labels)


def quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    seconds = quantile(buckets, q)
    return None if seconds is None else round(seconds * 1000, 1)


# --- the event-driven run ---


@dataclass
class ChannelTally:
    offered: int = 0
    refused: int = 0  # the storefront showed fewer units than ordered
    taken: int = 0  # the storefront took the order and posted its webhook
    applied: int = 0
    rejected: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    calls: int = 0
    rate_limited: int = 0
    dlq: int = 0


@dataclass
class EventDriven:
    orders: int = 0
    accepted: int = 0
    rejected: int = 0
    refused_by_channel: int = 0
    units_sold: int = 0
    oversells: int = 0
    cancellations_needed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    outbound_calls: int = 0
    rate_limited: int = 0
    dlq: int = 0
    webhooks_not_accepted: int = 0
    dlq_replayed: int = 0
    skus_out_of_sync: list[str] = field(default_factory=list)
    per_channel: dict[str, ChannelTally] = field(default_factory=dict)


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
        db_name, database_url = create_database(pg.url, "demo")
        cleanup.callback(drop_database, pg.url, db_name)
        migrate(database_url)
        kafka = KafkaSettings(
            bootstrap_servers=kafka_endpoint.bootstrap_servers,
            topic_prefix=f"demo-{uuid.uuid4().hex[:8]}.",
            partitions=4,
        )
        ensure_topics(kafka, TOPICS)
        cleanup.callback(delete_prefixed_topics, kafka)
        markets = await cleanup.enter_async_context(marketplaces(tuple(skus), tenant=TENANT))
        say(f"simulators on loopback: {', '.join(markets)}")
        run_dir = make_run_dir("demo")
        stack = Stack(
            stack_config(markets, kafka, database_url, run_dir / "connections.toml"), run_dir=run_dir
        )
        # stopped off the event loop, which keeps serving the simulators to the stopping fan-out
        cleanup.push_async_callback(asyncio.to_thread, stack.close)
        stack.start_all()
        say("services: ingest, processor, fanout (all nine channels) started as processes; waiting for them")
        await asyncio.to_thread(wait_until, stack.ready, timeout_s=90, what="the ingest gateway")
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


# --- reports ---


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_tables(
    console: Console, options: DemoOptions, ed: EventDriven, polling: PollingResult, stock_units: int
) -> None:
    summary = Table(
        title=f"{ed.orders:,} orders for {stock_units} units of {options.skus} SKUs "
        f"({options.sale_minutes:g} min of sale in {options.seconds:g} s)",
        box=box.SIMPLE_HEAD,
    )
    summary.add_column("")
    summary.add_column("event-driven", justify="right")
    summary.add_column(f"polling {options.poll_minutes:g} min", justify="right")
    rows = [
        ("orders", f"{ed.orders:,}", f"{polling.orders:,}"),
        ("refused by the storefront", f"{ed.refused_by_channel:,}", f"{polling.refused:,}"),
        ("taken by a storefront", f"{ed.accepted + ed.rejected:,}", f"{polling.accepted:,}"),
        ("accepted (can be filled)", f"{ed.accepted:,}", f"{polling.accepted - polling.cancellations:,}"),
        ("rejected by the master", f"{ed.rejected:,}", "no master check"),
        ("units sold", f"{ed.units_sold:,}", f"{polling.units_sold:,}"),
        ("oversold units", f"{ed.oversells:,}", f"{polling.oversells:,}"),
        ("cancellations needed", f"{ed.cancellations_needed:,}", f"{polling.cancellations:,}"),
        (
            "propagation p50 / p99 ms",
            f"{fmt(ed.p50_ms)} / {fmt(ed.p99_ms)}",
            f"≤ {options.poll_minutes:g} min",
        ),
        ("outbound calls (429s)", f"{ed.outbound_calls:,} ({ed.rate_limited})", f"{polling.syncs} syncs x 9"),
        ("dead letters (DLQ), replayed", f"{ed.dlq}, {ed.dlq_replayed}", "-"),
    ]
    for row in rows:
        summary.add_row(*row)
    console.print(summary)
    console.print(
        "[dim]refused: the channel showed fewer units than ordered. rejected: a channel took the order "
        "before "
        "it heard the last units were gone; the master refused it (no stock taken), so it must be cancelled. "
        "oversold: units sold beyond the physical stock. The sale is played "
        f"{options.sale_minutes * 60 / options.seconds:.0f}x faster than its clock: in sale time "
        "the pipeline reacts that many times slower, so its rejections "
        "are an upper bound for a real-time sale.[/]"
    )

    # narrow enough for an 80-column terminal (orders = refused + applied + rejected; all are in the JSON)
    per = Table(
        title="Per channel, event-driven",
        caption="p50/p99: ms from the sale at the gateway to the channel confirming its new count",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),  # plus the box's own column separator
        pad_edge=False,
    )
    columns = ("channel", "refused", "applied", "rejected", "p50", "p99", "calls (429)", "DLQ")
    for col in columns:
        per.add_column(col, justify="left" if col == "channel" else "right", no_wrap=True)
    for ch, t in ed.per_channel.items():
        cells = (t.refused, t.applied, t.rejected, fmt(t.p50_ms), fmt(t.p99_ms))
        per.add_row(ch, *(str(c) for c in cells), f"{t.calls} ({t.rate_limited})", str(t.dlq))
    console.print(per)


def write_png(
    path: Path, ed: EventDriven, polling: PollingResult, before: str, after: str, options: DemoOptions
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lag_ax, bars_ax, time_ax) = plt.subplots(1, 3, figsize=(17, 5.2))
    labels: list[str] = []
    bottom: list[float] = []
    for channel in ed.per_channel:
        buckets = lag_buckets(after, before, channel)
        counts = [c - (buckets[i - 1][1] if i else 0.0) for i, (_le, c) in enumerate(buckets)]
        if not labels:
            labels = [
                f"≤{le * 1000:g}" if le != float("inf") else f">{buckets[i - 1][0] * 1000:g}"
                for i, (le, _c) in enumerate(buckets)
            ]
            bottom = [0.0] * len(counts)
        lag_ax.bar(labels, counts, bottom=bottom, label=channel)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    lag_ax.set_title(f"Propagation per update (p50 {fmt(ed.p50_ms)} ms, p99 {fmt(ed.p99_ms)} ms)")
    lag_ax.set_xlabel("gateway arrival -> channel confirmed (ms, bucket upper bound)")
    lag_ax.set_ylabel("channel updates")
    lag_ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    lag_ax.legend(fontsize=7, ncols=2)

    approaches = ["event-driven", f"polling {options.poll_minutes:g} min"]
    oversold = [ed.oversells, polling.oversells]
    cancels = [ed.cancellations_needed, polling.cancellations]
    xs = range(len(approaches))
    bars_ax.bar([x - 0.2 for x in xs], oversold, width=0.4, label="oversold units", color="tab:red")
    bars_ax.bar([x + 0.2 for x in xs], cancels, width=0.4, label="cancellations needed", color="tab:orange")
    for x, (o, c) in enumerate(zip(oversold, cancels, strict=True)):
        bars_ax.annotate(str(o), (x - 0.2, o), ha="center", va="bottom")
        bars_ax.annotate(str(c), (x + 0.2, c), ha="center", va="bottom")
    bars_ax.set_xticks(list(xs), approaches)
    bars_ax.set_title(f"Same {ed.orders:,} orders: oversells per approach")
    bars_ax.legend()

    minutes = [0.0] + [t / 60 for t, _n in polling.timeline] + [options.sale_minutes]
    level = [0] + [n for _t, n in polling.timeline]
    time_ax.step(minutes, [*level, level[-1]], where="post", label=approaches[1], color="tab:red")
    time_ax.plot(
        [0, options.sale_minutes], [ed.oversells, ed.oversells], label=approaches[0], color="tab:green"
    )
    for k in range(1, int(options.sale_minutes // options.poll_minutes) + 1):
        time_ax.axvline(k * options.poll_minutes, color="grey", linewidth=0.6, linestyle=":")
    time_ax.set_title("Oversold units during the sale (dotted: sync passes)")
    time_ax.set_xlabel("minutes since the sale opened")
    time_ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    options: DemoOptions, stock: dict[str, int], ed: EventDriven, polling: PollingResult, elapsed_s: float
) -> dict[str, Any]:
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "stock": stock,
        "elapsed_s": round(elapsed_s, 1),
        "event_driven": {
            "orders": ed.orders,
            "accepted": ed.accepted,
            "rejected": ed.rejected,
            "oversells": ed.oversells,
            "p50_ms": ed.p50_ms,
            "p99_ms": ed.p99_ms,
            "refused_by_channel": ed.refused_by_channel,
            "units_sold": ed.units_sold,
            "cancellations_needed": ed.cancellations_needed,
            "outbound_calls": ed.outbound_calls,
            "rate_limited": ed.rate_limited,
            "dlq": ed.dlq,
            "dlq_replayed": ed.dlq_replayed,
            "webhooks_not_accepted": ed.webhooks_not_accepted,
            "out_of_sync": ed.skus_out_of_sync,
            "per_channel": {ch: asdict(t) for ch, t in ed.per_channel.items()},
        },
        "polling": {
            "orders": polling.orders,
            "accepted": polling.accepted,
            "oversells": polling.oversells,
            "refused": polling.refused,
            "units_sold": polling.units_sold,
            "cancellations_needed": polling.cancellations,
            "syncs": polling.syncs,
            "undone_units": polling.undone_units,
            "poll_minutes": options.poll_minutes,
            "oversold_by_sku": polling.oversold_by_sku,
        },
    }


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
