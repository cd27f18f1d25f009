"""``stocksync bench``: one run, real local infrastructure, results as JSON and a printed table.

Measures the gateway (webhooks/s and time to a durable 200) and end-to-end latency from the webhook POST to
the Shopify simulator confirming a quantity that includes that order, at paced load levels; plus the CPU
time and memory of each service process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import AsyncConnection
from rich.console import Console
from rich.table import Table

from channels.shopify.simulator import order_webhook
from processor.store import apply_batch
from schemas import TOPICS, inventory_events, stock_changed
from schemas.inventory_events import AnyInventoryEvent
from stocksync.db import migrate
from stocksync.kafka import AsyncProducer, delete_prefixed_topics, ensure_topics, producer_config, read_to_end
from stocksync.local.postgres import create_database, drop_database
from stocksync.local.process import eventually
from stocksync.local.stack import Stack, StackConfig
from stocksync.local.traffic import as_records, synthetic_stream
from stocksync.local.world import World, local_world
from stocksync.multibench import run_multichannel
from stocksync.settings import KafkaSettings

SKUS = tuple(f"BENCH-{n:03d}" for n in range(50))
INITIAL = 1_000_000


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Sent:
    sku: str
    at: float
    expected_at_most: int
    status: int = 0
    ack_s: float = 0.0


class Load:
    def __init__(self, world: World, session: aiohttp.ClientSession) -> None:
        self.world, self.session = world, session
        self.ids = itertools.count(1)
        self.sold: dict[str, int] = dict.fromkeys(SKUS, 0)
        self.last_ids: list[int] = []

    async def send(self, sku: str) -> Sent:
        order_id = next(self.ids)
        self.last_ids.append(order_id)
        self.sold[sku] += 1
        sent = Sent(sku, time.monotonic(), INITIAL - self.sold[sku])
        line = {
            "id": order_id,
            "variant_id": int(self.world.connection.listings[sku].listing_id),
            "sku": sku,
            "quantity": 1,
        }
        body, headers = order_webhook(self.world.connection, order_id, [line], datetime.now(UTC))
        url = f"{self.world.stack.ingest_url}/webhooks/{self.world.connection.id}"
        async with self.session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            sent.status = resp.status
        sent.ack_s = time.monotonic() - sent.at
        return sent

    async def paced(self, orders: int, per_s: float) -> list[Sent]:
        tasks = []
        start = time.monotonic()
        skus = itertools.cycle(SKUS)
        for n in range(orders):
            delay = start + n / per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the load generator, not synchronisation
            tasks.append(asyncio.create_task(self.send(next(skus))))
        return list(await asyncio.gather(*tasks))

    async def saturate(self, orders: int, concurrency: int) -> tuple[list[Sent], float]:
        queue = iter(range(orders))
        skus = itertools.cycle(SKUS)
        results: list[Sent] = []

        async def worker() -> None:
            for _ in queue:
                results.append(await self.send(next(skus)))

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.monotonic() - start

    def propagation_ms(self, sent: list[Sent]) -> list[float]:
        """For each order: time until the simulator confirmed a quantity that includes it."""
        calls_by_item: dict[str, list[tuple[float, int]]] = {}
        for c in self.world.simulator.calls:
            if c.user_error is None:
                calls_by_item.setdefault(c.inventory_item_id, []).append((c.at, c.quantity))
        out = []
        for s in sent:
            calls = calls_by_item.get(self.world.item(s.sku), [])
            confirmed = next((at for at, qty in calls if at >= s.at and qty <= s.expected_at_most), None)
            if confirmed is not None:
                out.append((confirmed - s.at) * 1000)
        return out

    async def settled(self) -> None:
        expected = {self.world.item(sku): INITIAL - sold for sku, sold in self.sold.items()}
        await eventually(
            lambda: all(self.world.simulator.available.get(i) == q for i, q in expected.items()),
            timeout_s=120,
            what="every SKU on Shopify to equal the master",
            interval_s=0.1,
        )


def raw_consume_rate(kafka: KafkaSettings, topic: str, expected: int) -> float:
    """Records/s of a bare confluent-kafka consumer reading the topic from the start (no processing)."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        name = kafka.topic(topic)
        partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
        # The clock runs from the assignment, so the first fetch counts, as it does for the worker.
        started = time.monotonic()
        consumer.assign([TopicPartition(name, p, 0) for p in partitions])
        seen, deadline = 0, started + 120
        while seen < expected and time.monotonic() < deadline:
            seen += sum(1 for m in consumer.consume(10_000, 1.0) if not m.error())
        return seen / (time.monotonic() - started)
    finally:
        consumer.close()


async def processor_rates(world: World, console: Console, *, events: int) -> dict[str, Any]:
    """The processor alone, as a worker process, over a pre-filled topic, at several batch sizes."""
    kafka = KafkaSettings(
        bootstrap_servers=world.kafka.bootstrap_servers,
        topic_prefix=f"benchproc-{uuid.uuid4().hex[:6]}.",
        partitions=4,
    )
    ensure_topics(kafka, TOPICS)
    stream = synthetic_stream(events, skus=500, seed=21)
    producer = AsyncProducer(producer_config(kafka))
    try:
        await producer.send_batch(kafka.topic(inventory_events.TOPIC), as_records(stream))
    finally:
        await producer.close()
    rows = []
    try:
        for batch, measured in ((1, min(events, 2_000)), (100, events), (1000, events)):
            name, url = create_database(world.pg_endpoint.url, f"bp{batch}")
            try:
                migrate(url)
                console.print(f"processor: {measured} events, batch size {batch}")
                rows.append(
                    {
                        "batch": batch,
                        "events": measured,
                        "events_per_s": round(await _worker_rate(world, kafka, url, batch, measured), 1),
                    }
                )
            finally:
                drop_database(world.pg_endpoint.url, name)
        raw = await asyncio.to_thread(raw_consume_rate, kafka, inventory_events.TOPIC, events)
        name, url = create_database(world.pg_endpoint.url, "bpdb")
        try:
            migrate(url)
            apply_only = await apply_rate(url, stream, batch=1000)
        finally:
            drop_database(world.pg_endpoint.url, name)
    finally:
        delete_prefixed_topics(kafka)
    best = max(r["events_per_s"] for r in rows)
    return {
        "events_per_s": best,
        "raw_consume_per_s": round(raw, 1),
        "ratio": round(best / raw, 3) if raw else None,
        "apply_only_per_s": round(apply_only, 1),
        "by_batch": rows,
        "events": events,
    }


async def apply_rate(url: str, stream: list[AnyInventoryEvent], *, batch: int) -> float:
    """Events/s of apply_batch straight into the database, no Kafka: the database's share of the cost."""
    async with await AsyncConnection.connect(url) as conn:
        started = time.monotonic()
        for i in range(0, len(stream), batch):
            async with conn.transaction():
                await apply_batch(conn, stream[i : i + batch])
        return len(stream) / (time.monotonic() - started)


async def _worker_rate(world: World, kafka: KafkaSettings, url: str, batch: int, measured: int) -> float:
    stack = Stack(
        StackConfig(kafka.bootstrap_servers, url, world.stack.config.connections_file, kafka.topic_prefix, 4)
    )
    try:
        stack.start(
            "processor",
            "processor",
            PROCESSOR_APP_ID=f"bench-{batch}-{uuid.uuid4().hex[:6]}",
            PROCESSOR_BATCH_MAX=str(batch),
            PROCESSOR_OPS_PORT="0",
        )

        def applied() -> int:
            with psycopg.connect(url) as conn:
                row = conn.execute("SELECT count(*) FROM ledger").fetchone()
            return int(row[0]) if row else 0

        await eventually(
            lambda: applied() > 0, timeout_s=60, what="the worker's first commit", interval_s=0.02
        )
        started = time.monotonic()
        await eventually(
            lambda: applied() >= measured, timeout_s=300, what=f"{measured} events", interval_s=0.05
        )
        return measured / (time.monotonic() - started)
    finally:
        await asyncio.to_thread(stack.close)


def commit_lag_ms(kafka: KafkaSettings, order_ids: set[str]) -> list[float]:
    """Gateway arrival → processor commit of each order's stock.changed (the first half of the way)."""
    lags = []
    for m in read_to_end(kafka, stock_changed.TOPIC, timeout_s=60):
        change = stock_changed.decode(m.value() or b"")
        if change.cause_event_id.split(":order:")[-1].split(":line:")[0] in order_ids:
            lags.append((change.committed_at - change.received_at).total_seconds() * 1000)
    return lags


def ledger_stats(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT outcome, count(*) FROM ledger GROUP BY outcome").fetchall()
        dup = conn.execute(
            "SELECT count(*) FROM (SELECT event_id FROM ledger GROUP BY 1 HAVING count(*) > 1) d"
        )
        negative = conn.execute("SELECT count(*) FROM inventory WHERE available < 0").fetchone()
        dup_row = dup.fetchone()
    stats = {str(r[0]): int(r[1]) for r in rows}
    stats["duplicate_ledger_rows"] = int(dup_row[0]) if dup_row else 0
    stats["negative_counts"] = int(negative[0]) if negative else 0
    return stats


def process_usage(world: World) -> dict[str, dict[str, float]]:
    usage = {}
    for name, service in world.stack.services.items():
        try:
            p = psutil.Process(service.proc.pid)
            cpu = p.cpu_times()
            usage[name] = {
                "cpu_s": round(cpu.user + cpu.system, 2),
                "rss_mb": round(p.memory_info().rss / 2**20, 1),
            }
        except psutil.NoSuchProcess:
            continue
    return usage


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_bench(console: Console, *, orders: int, processor_events: int = 20_000) -> dict[str, Any]:
    console.rule("stocksync bench")
    async with local_world(skus=SKUS, label="bench", say=lambda m: console.print(f"[dim]{m}[/]")) as world:
        await world.seed(dict.fromkeys(SKUS, INITIAL))
        await eventually(
            lambda: all(world.simulator.available.get(world.item(s)) == INITIAL for s in SKUS),
            timeout_s=60,
            what="the seeded counts on Shopify",
        )
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            load = Load(world, session)
            e2e = []
            for per_s in (20.0, 200.0):
                console.print(f"paced load: {orders} orders at {per_s:.0f}/s")
                world.simulator.calls.clear()
                load.last_ids.clear()
                sent = await load.paced(orders, per_s)
                await load.settled()
                lat = load.propagation_ms(sent)
                commit = await asyncio.to_thread(commit_lag_ms, world.kafka, {str(i) for i in load.last_ids})
                e2e.append(
                    {
                        "orders_per_s": per_s,
                        "orders": len(sent),
                        "measured": len(lat),
                        "p50_ms": round(percentile(lat, 50), 1),
                        "p99_ms": round(percentile(lat, 99), 1),
                        "to_commit_p50_ms": round(percentile(commit, 50), 1),
                        "to_commit_p99_ms": round(percentile(commit, 99), 1),
                        "non_200": sum(1 for s in sent if s.status != 200),
                    }
                )
            console.print(f"gateway: {orders * 5} webhooks, 32 concurrent")
            sent, elapsed = await load.saturate(orders * 5, 32)
            await load.settled()
            acks = [s.ack_s * 1000 for s in sent]
            gateway = {
                "webhooks": len(sent),
                "webhooks_per_s": round(len(sent) / elapsed, 1),
                "ack_p50_ms": round(percentile(acks, 50), 2),
                "ack_p99_ms": round(percentile(acks, 99), 2),
                "ack_mean_ms": round(statistics.fmean(acks), 2),
                "non_200": sum(1 for s in sent if s.status != 200),
            }
        stats = ledger_stats(world.database_url)
        processor = await processor_rates(world, console, events=processor_events)
        multichannel = await run_multichannel(console, world.kafka_endpoint, world.pg_endpoint)
        for row in e2e:
            row["oversells"] = stats["negative_counts"]
            row["duplicates"] = stats["duplicate_ledger_rows"]
        result = {
            "machine": machine(),
            "kafka": world.kafka_endpoint.describe(),
            "postgres": world.pg_endpoint.describe(),
            "gateway": gateway,
            "processor": processor,
            "multichannel": multichannel,
            "e2e": e2e,
            "ledger": stats,
            "services": process_usage(world),
        }
    return result


def write_report(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def print_tables(console: Console, result: dict[str, Any]) -> None:
    g = result["gateway"]
    table = Table(title=f"gateway ({g['webhooks']} signed Shopify webhooks, 32 concurrent)")
    for col in ("webhooks/s", "ack p50 ms", "ack p99 ms", "non-200"):
        table.add_column(col, justify="right")
    table.add_row(str(g["webhooks_per_s"]), str(g["ack_p50_ms"]), str(g["ack_p99_ms"]), str(g["non_200"]))
    console.print(table)
    p = result["processor"]
    table = Table(title=f"processor: {p['events']} events through one Faust worker (4 partitions)")
    for col in ("batch size", "events/s"):
        table.add_column(col, justify="right")
    for row in p["by_batch"]:
        table.add_row(str(row["batch"]), str(row["events_per_s"]))
    table.add_row("raw consume (confluent-kafka)", str(p["raw_consume_per_s"]))
    table.add_row("apply only, batch 1000 (no Kafka)", str(p["apply_only_per_s"]))
    table.add_row("best / raw", str(p["ratio"]))
    console.print(table)
    table = Table(title="end to end: webhook POST -> Shopify simulator confirms the new quantity")
    columns = (
        "orders_per_s",
        "orders",
        "p50_ms",
        "p99_ms",
        "to_commit_p50_ms",
        "to_commit_p99_ms",
        "oversells",
    )
    for col in ("orders/s", "orders", "p50 ms", "p99 ms", "to commit p50", "to commit p99", "oversells"):
        table.add_column(col, justify="right")
    for row in result["e2e"]:
        table.add_row(*(str(row[k]) for k in columns))
    console.print(table)
    m = result["multichannel"]
    table = Table(title="sync lag per channel (all nine at once; one fan-out process)")
    for col in ("channel", "50/min p50 ms", "50/min p99 ms", "2,000/s p50 ms", "2,000/s p99 ms", "429s seen"):
        table.add_column(col, justify="right")
    for ch in m["channels"]:
        slow, fast = m["orders_per_minute_50"][ch], m["orders_per_second_2000"][ch]
        table.add_row(
            ch,
            str(slow["p50_ms"]),
            str(slow["p99_ms"]),
            str(fast["p50_ms"]),
            str(fast["p99_ms"]),
            str(m["rate_limited_by_simulators"][ch]),
        )
    console.print(table)
    table = Table(title="service processes")
    for col in ("service", "CPU s", "RSS MB"):
        table.add_column(col, justify="right")
    for name, u in result["services"].items():
        table.add_row(name, str(u["cpu_s"]), str(u["rss_mb"]))
    console.print(table)
