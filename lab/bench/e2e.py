"""The end-to-end part of ``stocksync bench``: webhook to every channel, all nine simulators at once.

One pipeline (gateway, processor, one fan-out process serving all nine channels) and three load levels, each
started from fresh counts (a stock count per SKU, awaited on every channel):

- **50 orders a minute**: signed webhooks placed on all nine channels in turn (``place_order``: the channel
  takes the unit from its own count, books the order and signs its webhook; thin payloads are fetched back
  by the gateway), one every 1.2 s for ``slow_seconds``;
- **200/s** and **2,000/s**: signed Shopify ``orders/create`` webhooks, open loop at the rate over 64
  keep-alive connections, for ``medium_seconds`` / ``fast_seconds``. (Only Shopify at these rates: the
  thin-payload channels' order fetches would spend their simulators' API budgets, and Amazon's RSA signing
  would load the generator; Shopify's own count is not decremented, so every channel waits for the fan-out.)

Every 10th (slow level) or 50th order's webhook is delivered a second time after its 200, as channels retry.

Measured per order, from the simulators' own call logs (``at`` is this process's monotonic clock, the same
clock that stamps the POST): for each channel, the first successful write after the POST whose count is at
or below the master's count right after the order (the ledger's ``after``): a count that includes the order.
The order's end-to-end latency is the slowest channel's; the channel the buyer used is left out when it took
the unit from its own count at checkout (slow level). Orders the processor rejected (sold out) have no
latency. Figures:

- **oversells**: units applied beyond the stock the level started with, per SKU, from the ledger (two SKUs
  get only 25 units so that sales are refused at every level);
- **duplicates**: units taken from the master beyond the distinct orders accepted (200) for that SKU, on the
  SKUs that never sold out — an event applied twice would show here, redelivered webhooks included;
  ``lost`` is the opposite (an accepted order never applied);
- **channel repeat writes**: successful writes of the count that channel had last confirmed for the SKU;
  **channel stale writes**: a count above the previous confirmed one while only sales happened (an older
  count overwriting a newer one).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from rich.console import Console

from channels.connection import Connection, to_toml
from channels.registry import spec
from lab.bench.config import BenchConfig
from lab.bench.load import RawHttp, shopify_event_id, shopify_order
from lab.bench.stats import ms
from lab.bench.usage import Usage
from lab.local.kafka import KafkaEndpoint
from lab.local.postgres import PostgresEndpoint
from lab.local.process import eventually, make_run_dir
from lab.local.stack import Stack
from lab.local.traffic import as_records, stock_counts
from lab.marketplaces import Marketplace, marketplaces, stack_config
from lab.sandbox import sandbox
from schemas import inventory_events, stock_changed
from stocksync.kafka import AsyncProducer, producer_config, read_to_end
from stocksync.settings import KafkaSettings

TENANT = "bench"
SKUS = tuple(f"MC-{n:02d}" for n in range(20))
SCARCE = SKUS[:2]
AMPLE_STOCK = 990  # below Etsy's per-product cap of 999, so every channel can show the master as it is
SCARCE_STOCK = 25
SENDERS = 64
# call attributes naming the channel's key of a listing, in the order to try them
KEY_FIELDS = ("inventory_item_id", "sku_id", "variant_id", "item_id", "seller_sku", "sku")


@dataclass(frozen=True)
class Level:
    name: str
    per_s: float
    seconds: float
    nine: bool  # placed on all nine channels in turn, else Shopify webhooks
    redeliver_every: int


@dataclass
class Order:
    channel: str
    sku: str
    sent_at: float  # monotonic, the first POST
    event_ids: list[str]
    status: int
    counted_at_checkout: bool  # the channel took the unit from its own count when the buyer ordered
    redelivered: bool = False  # its webhook was delivered a second time after the first 200


def levels(config: BenchConfig) -> list[Level]:
    return [
        Level("50/min", 50 / 60, config.slow_seconds, True, 10),
        Level("200/s", 200.0, config.medium_seconds, False, 50),
        Level("2,000/s", 2000.0, config.fast_seconds, False, 50),
    ]


# ---------------------------------------------------------------------------------------------------------
# Reading every simulator the same way.


def _keys(connection: Connection) -> dict[str, str]:
    """Every id a simulator may key a listing by (its listing id, inventory ref and parts, the SKU) -> SKU."""
    out: dict[str, str] = {}
    for sku, listing in connection.listings.items():
        for key in (
            sku,
            listing.listing_id,
            listing.inventory_ref,
            *(listing.inventory_ref or "").split("/"),
        ):
            if key:
                out.setdefault(key, sku)
    return out


def shown(market: Marketplace) -> dict[str, int]:
    """What the simulator holds now for each SKU (its in-memory count; no API call, no budget spent)."""
    available: dict[str, int] = market.simulator.available  # type: ignore[attr-defined]
    out: dict[str, int] = {}
    for sku, listing in market.connection.listings.items():
        ref = listing.inventory_ref or ""
        for key in (ref, *ref.split("/")[::-1], listing.listing_id, sku):
            if key and key in available:
                out[sku] = available[key]
                break
    return out


def writes(market: Marketplace, since: int) -> dict[str, list[tuple[float, int]]]:
    """Successful quantity writes per SKU from call `since` on: [(monotonic time, count)], in call order."""
    keys = _keys(market.connection)
    out: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for call in market.simulator.calls[since:]:
        quantity = getattr(call, "quantity", None)
        failed = any(getattr(call, f, None) for f in ("error", "user_error", "issue"))
        status = getattr(call, "status", 200)
        if quantity is None or failed or status not in (200, "SUCCESS"):
            continue
        if getattr(call, "submission_status", "ACCEPTED") not in (None, "ACCEPTED"):
            continue
        key = next((str(getattr(call, f)) for f in KEY_FIELDS if hasattr(call, f)), "")
        if key in keys:
            out[keys[key]].append((float(call.at), int(quantity)))
    return out


def write_anomalies(per_sku: dict[str, list[tuple[float, int]]]) -> tuple[int, int]:
    """(repeat writes, stale writes) for one channel over a sales-only stretch."""
    repeat = stale = 0
    for series in per_sku.values():
        for (_, before), (_, after) in itertools.pairwise(series):
            repeat += after == before
            stale += after > before
    return repeat, stale


def first_write_within(series: list[tuple[float, int]], after_t: float, at_most: int) -> float | None:
    """Time of the first write at or after `after_t` whose count is at most `at_most`."""
    times = [t for t, _ in series]
    for t, q in series[bisect_left(times, after_t) :]:
        if q <= at_most:
            return t
    return None


# ---------------------------------------------------------------------------------------------------------
# Load.


async def place_on_nine(
    session: aiohttp.ClientSession, ingest_url: str, markets: dict[str, Marketplace], level: Level, base: int
) -> list[Order]:
    """Orders placed on each channel in turn at the level's pace; a 503 is redelivered as channels do."""
    orders: list[Order] = []
    cycle = itertools.cycle(markets.values())
    total = round(level.per_s * level.seconds)

    async def deliver(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, list[str]]:
        for _ in range(20):
            async with session.post(url, data=body, headers=headers) as resp:
                payload = await resp.json(content_type=None) if resp.status == 200 else {}
                if resp.status != 503:
                    return resp.status, list(payload.get("events", []))
            await asyncio.sleep(0.5)  # the channel's redelivery delay, shortened
        return 503, []

    async def one(n: int, market: Marketplace) -> None:
        sku = SKUS[n % len(SKUS)]
        body, headers = market.simulator.place_order(
            market.connection, base + n, [(sku, 1)], datetime.now(UTC)
        )
        url = f"{ingest_url}/webhooks/{market.connection.id}"
        sent_at = time.monotonic()
        status, events = await deliver(url, body, headers)
        order = Order(market.channel, sku, sent_at, events, status, True)
        orders.append(order)
        if n % level.redeliver_every == 0 and status == 200:
            await deliver(url, body, headers)  # the channel delivers it once more
            order.redelivered = True

    tasks = []
    start = time.monotonic()
    for n in range(total):
        await asyncio.sleep(max(0.0, start + n / level.per_s - time.monotonic()))  # pacing the load
        tasks.append(asyncio.create_task(one(n, next(cycle))))
    await asyncio.gather(*tasks)
    return orders


async def shopify_open_loop(port: int, connection: Connection, level: Level, base: int) -> list[Order]:
    """Shopify webhooks scheduled at the level's rate onto 64 keep-alive senders (queued if all are busy)."""
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    orders: list[Order] = []
    path = f"/webhooks/{connection.id}"

    async def sender() -> None:
        client = RawHttp("127.0.0.1", port)
        try:
            while (n := await queue.get()) is not None:
                sku = SKUS[n % len(SKUS)]
                body, headers = shopify_order(connection, base + n, sku)
                sent_at = time.monotonic()
                status, _ = await client.post(path, body, headers)
                order = Order(
                    "shopify", sku, sent_at, [shopify_event_id(connection, base + n)], status, False
                )
                orders.append(order)
                if n % level.redeliver_every == 0 and status == 200:
                    await client.post(path, body, headers)  # the channel delivers it once more
                    order.redelivered = True
        finally:
            await client.close()

    senders = [asyncio.create_task(sender()) for _ in range(SENDERS)]
    start = time.monotonic()
    for n in range(round(level.per_s * level.seconds)):
        delay = start + n / level.per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the load
        queue.put_nowait(n)
    for _ in senders:
        queue.put_nowait(None)
    await asyncio.gather(*senders)
    return orders


# ---------------------------------------------------------------------------------------------------------
# One level.


@dataclass
class Pipeline:
    stack: Stack
    kafka: KafkaSettings
    database_url: str
    markets: dict[str, Marketplace]
    producer: AsyncProducer

    def master(self) -> dict[str, int]:
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT sku, available FROM inventory WHERE tenant = %s", (TENANT,)
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def ledger(self, event_ids: list[str]) -> dict[str, tuple[str, str, int | None]]:
        """event id -> (sku, outcome, count after it)."""
        with psycopg.connect(self.database_url) as conn:
            rows = conn.execute(
                "SELECT event_id, sku, outcome, after FROM ledger WHERE event_id = ANY(%s)", (event_ids,)
            ).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def differing(self, expected: dict[str, int]) -> dict[str, dict[str, tuple[int | None, int]]]:
        """Channel -> {SKU: (what it shows, what it should)} where the two differ."""
        out = {}
        for ch, market in self.markets.items():
            now = shown(market)
            diff = {s: (now.get(s), q) for s, q in expected.items() if now.get(s) != q}
            if diff:
                out[ch] = diff
        return out

    async def everywhere(self, expected: dict[str, int], *, timeout_s: float, what: str) -> None:
        try:
            await eventually(lambda: not self.differing(expected), timeout_s=timeout_s, what=what)
        except AssertionError as exc:
            differ = self.differing(expected)
            recent = {ch: self.markets[ch].simulator.calls[-3:] for ch in differ}
            raise AssertionError(
                f"{exc}; (shows, should) where they differ: {differ}; their last calls: {recent}"
            ) from exc

    async def seed(self, level: Level) -> dict[str, int]:
        counts = {s: SCARCE_STOCK if s in SCARCE else AMPLE_STOCK for s in SKUS}
        # As of the next whole second: some channels stamp sales in whole seconds, and a count within the
        # second of such a sale is taken not to hold it (the sale would come off the fresh count again).
        as_of = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        await self.producer.send_batch(
            self.kafka.topic(inventory_events.TOPIC),
            as_records(stock_counts(TENANT, counts, tag=uuid.uuid4().hex[:8], at=as_of)),
        )
        # The level's first sale must come after that moment, or the count would hold it.
        await eventually(lambda: datetime.now(UTC) > as_of, timeout_s=5, what="the count's as-of time")
        await eventually(lambda: self.master() == counts, timeout_s=60, what=f"the {level.name} counts")
        await self.everywhere(counts, timeout_s=120, what=f"the {level.name} counts on all nine channels")
        return counts


def commit_lags(kafka: KafkaSettings, event_ids: set[str]) -> list[float]:
    """Gateway arrival -> processor commit (s) of each order's stock.changed."""
    lags = []
    for m in read_to_end(kafka, stock_changed.TOPIC, timeout_s=60):
        change = stock_changed.decode(m.value() or b"")
        if change.cause_event_id in event_ids:
            lags.append((change.committed_at - change.received_at).total_seconds())
    return lags


def budget_bound_ms(connection: Connection, changing_skus: int) -> float | None:
    """The fastest a channel's budget lets every changing SKU be written once: changing SKUs / (requests/s x
    SKUs per request), in ms. A channel's p99 staleness cannot be expected below it while every SKU keeps
    changing; the bench prints the two side by side."""
    if changing_skus == 0:
        return None
    channel = spec(connection.channel)
    rate = connection.rate_limit_per_s or channel.rate_limit_per_s
    per_request = min(channel.max_batch, changing_skus)
    return round(changing_skus / (rate * per_request) * 1000, 1)


async def run_level(
    console: Console, p: Pipeline, session: aiohttp.ClientSession, level: Level, base: int
) -> dict[str, Any]:
    stock = await p.seed(level)
    calls = {ch: len(m.simulator.calls) for ch, m in p.markets.items()}
    limited = {ch: m.simulator.rate_limited for ch, m in p.markets.items()}
    via = "webhooks placed on all nine channels" if level.nine else "Shopify webhooks, 64 connections"
    console.print(f"end to end {level.name}: {level.seconds:.0f} s of {via}")
    if level.nine:
        orders = await place_on_nine(session, p.stack.ingest_url, p.markets, level, base)
    else:
        port = p.stack.services["ingest"].port or 0
        orders = await shopify_open_loop(port, p.markets["shopify"].connection, level, base)
    accepted = [o for o in orders if o.status == 200]
    event_ids = [e for o in accepted for e in o.event_ids]

    def all_applied() -> bool:
        return len(p.ledger(event_ids)) == len(set(event_ids))

    await eventually(all_applied, timeout_s=180, what=f"every accepted {level.name} order in the ledger")
    master = p.master()
    await p.everywhere(master, timeout_s=240, what=f"every channel to show the master ({level.name})")
    ledger = p.ledger(event_ids)
    sent_times = [o.sent_at for o in orders]
    span = max(sent_times) - min(sent_times) if len(orders) > 1 else 0.0

    channel_writes = {ch: writes(m, calls[ch]) for ch, m in p.markets.items()}
    per_channel: dict[str, list[float]] = {ch: [] for ch in p.markets}
    every: list[float] = []
    unmeasured = rejected = 0
    for o in accepted:
        for event_id in o.event_ids:
            sku, outcome, after = ledger[event_id]
            if outcome != "applied" or after is None:
                rejected += 1
                continue
            slowest: float | None = 0.0
            for ch, by_sku in channel_writes.items():
                if o.counted_at_checkout and ch == o.channel:
                    continue
                t = first_write_within(by_sku.get(sku, []), o.sent_at, after)
                if t is None:
                    slowest = None
                    continue
                per_channel[ch].append(t - o.sent_at)
                if slowest is not None:
                    slowest = max(slowest, t - o.sent_at)
            if slowest is None:
                unmeasured += 1
            else:
                every.append(slowest)

    applied_units: Counter[str] = Counter()
    accepted_units: Counter[str] = Counter()
    for o in accepted:
        for event_id in o.event_ids:
            sku, outcome, _ = ledger[event_id]
            accepted_units[sku] += 1
            applied_units[sku] += outcome == "applied"
    oversells = sum(max(0, applied_units[s] - stock[s]) for s in SKUS) + sum(
        1 for s in SKUS if master.get(s, 0) < 0
    )
    never_sold_out = [s for s in SKUS if master.get(s, 0) > 0]
    duplicates = sum(max(0, (stock[s] - master[s]) - accepted_units[s]) for s in never_sold_out)
    lost = sum(max(0, accepted_units[s] - (stock[s] - master[s])) for s in never_sold_out)
    repeats = stale = 0
    changing = len({ledger[e][0] for e in event_ids if ledger[e][1] == "applied"})
    channels: dict[str, dict[str, Any]] = {}
    for ch, by_sku in channel_writes.items():
        r, s = write_anomalies(by_sku)
        repeats, stale = repeats + r, stale + s
        lags = per_channel[ch]
        channels[ch] = {
            "budget_bound_ms": budget_bound_ms(p.markets[ch].connection, changing),
            "p50_ms": ms(lags, 50),
            "p99_ms": ms(lags, 99),
            "measured": len(lags),
            "writes": sum(len(v) for v in by_sku.values()),
            "calls": len(p.markets[ch].simulator.calls) - calls[ch],
            "rate_limited": p.markets[ch].simulator.rate_limited - limited[ch],
            "repeat_writes": r,
            "stale_writes": s,
        }
    commits = await asyncio.to_thread(commit_lags, p.kafka, set(event_ids))
    return {
        "level": level.name,
        "target_orders_per_s": round(level.per_s, 3),
        "orders_per_s": round(len(orders) / span, 1) if span else None,
        "seconds": level.seconds,
        "via": via,
        "orders": len(orders),
        "accepted": len(accepted),
        "non_200": len(orders) - len(accepted),
        "redelivered": sum(o.redelivered for o in orders),
        "applied": sum(applied_units.values()),
        "rejected": rejected,
        "p50_ms": ms(every, 50),
        "p90_ms": ms(every, 90),
        "p99_ms": ms(every, 99),
        "max_ms": round(max(every) * 1000, 1) if every else None,
        "measured": len(every),
        "unmeasured": unmeasured,
        "to_commit_p50_ms": ms(commits, 50),
        "to_commit_p99_ms": ms(commits, 99),
        "oversells": oversells,
        "duplicates": duplicates,
        "lost": lost,
        "channel_repeat_writes": repeats,
        "channel_stale_writes": stale,
        "channels": channels,
    }


@asynccontextmanager
async def nine_marketplaces() -> AsyncIterator[tuple[dict[str, Marketplace], Path]]:
    """The nine simulators on loopback and a connections file naming them."""
    async with marketplaces(SKUS, tenant=TENANT) as markets:
        path = make_run_dir("bench") / "connections.toml"
        path.write_text(to_toml(m.connection for m in markets.values()))  # the gateway part reads it too
        yield markets, path


async def e2e_part(
    console: Console,
    config: BenchConfig,
    kafka_endpoint: KafkaEndpoint,
    pg: PostgresEndpoint,
    markets: dict[str, Marketplace],
    connections_file: Path,
    infra: dict[str, int],
) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, float]]]]:
    """The three load levels through one pipeline (every fan-out in one process) on a sandbox of its own."""
    usage: dict[str, dict[str, dict[str, float]]] = {}
    async with sandbox(kafka_endpoint.bootstrap_servers, pg.url, label="benche2e") as box:
        kafka, url = box.kafka, box.database_url
        stack = await box.start(stack_config(markets, kafka, url, connections_file))
        producer = AsyncProducer(producer_config(kafka))
        try:
            pipeline = Pipeline(stack, kafka, url, markets, producer)
            pids = {n: s.proc.pid for n, s in stack.services.items()}
            rows = []
            async with aiohttp.ClientSession() as session:
                for n, level in enumerate(levels(config)):
                    sampler = Usage({**pids, **infra})
                    async with sampler.measure():
                        rows.append(await run_level(console, pipeline, session, level, 1_000_000 * (n + 1)))
                    usage[f"e2e {level.name}"] = sampler.result
        finally:
            await producer.close()
    return {
        "e2e": rows,
        "e2e_setup": {
            "skus": len(SKUS),
            "stock_per_sku": AMPLE_STOCK,
            "scarce_skus": {s: SCARCE_STOCK for s in SCARCE},
            "channels": list(markets),
            "fanout": "one process, one consumer group per channel",
        },
    }, usage
