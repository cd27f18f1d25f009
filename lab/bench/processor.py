"""The bench's processor part: one Faust worker process over a pre-filled topic at batch sizes 1, 100 and
1,000, the same events applied straight into PostgreSQL, and a bare confluent-kafka consume (the ratio)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import AsyncConnection
from rich.console import Console

from lab.bench.usage import Usage
from lab.local.kafka import KafkaEndpoint
from lab.local.postgres import PostgresEndpoint
from lab.local.process import eventually
from lab.local.stack import Stack
from lab.local.traffic import as_records, synthetic_stream
from lab.sandbox import Sandbox, fresh_database, sandbox
from processor.store import apply_batch
from schemas import inventory_events
from schemas.inventory_events import AnyInventoryEvent
from stocksync.kafka import AsyncProducer, producer_config
from stocksync.settings import KafkaSettings


def raw_consume_rate(kafka: KafkaSettings, topic: str, expected: int) -> float:
    """Records/s of a bare confluent-kafka consumer reading the whole topic (no decoding, no processing),
    timed from its first record to its last, as the worker is timed from its first commit."""
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
        consumer.assign([TopicPartition(name, p, 0) for p in partitions])
        seen, first, last = 0, 0.0, 0.0
        deadline = time.monotonic() + 120
        while seen < expected and time.monotonic() < deadline:
            got = sum(1 for m in consumer.consume(10_000, 1.0) if not m.error())
            if got:
                now = time.monotonic()
                first = first or now
                seen, last = seen + got, now
        # the first call's records are counted as arriving at `first`: leave them out of the rate
        return (seen - min(seen, 10_000)) / (last - first) if last > first else float("nan")
    finally:
        consumer.close()


async def apply_rate(url: str, stream: list[AnyInventoryEvent], *, batch: int) -> float:
    """Events/s of apply_batch straight into the database, no Kafka: the database's share of the cost."""
    async with await AsyncConnection.connect(url) as conn:
        started = time.monotonic()
        for i in range(0, len(stream), batch):
            async with conn.transaction():
                await apply_batch(conn, stream[i : i + batch])
        return len(stream) / (time.monotonic() - started)


async def _worker_rate(stack: Stack, url: str, batch: int, measured: int, usage: Usage) -> float:
    """Events/s of one worker process at batch size `batch`, from its first commit to `measured` rows."""
    service = stack.start(
        "processor",
        "processor",
        PROCESSOR_APP_ID=f"bench-{batch}-{uuid.uuid4().hex[:6]}",
        PROCESSOR_BATCH_MAX=str(batch),
        PROCESSOR_OPS_PORT="0",
    )
    usage.pids["processor"] = service.proc.pid

    def applied() -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM ledger").fetchone()
        return int(row[0]) if row else 0

    await eventually(lambda: applied() > 0, timeout_s=90, what="the worker's first commit", interval_s=0.02)
    started, first = time.monotonic(), applied()
    await eventually(lambda: applied() >= measured, timeout_s=300, what=f"{measured} events", interval_s=0.05)
    elapsed = time.monotonic() - started
    return (measured - first) / elapsed if measured > first and elapsed > 0 else float("nan")


async def processor_part(
    console: Console,
    kafka_endpoint: KafkaEndpoint,
    pg: PostgresEndpoint,
    connections_file: Path,
    infra: dict[str, int],
    *,
    events: int,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The processor alone, as a worker process, over a pre-filled topic, at several batch sizes (each on a
    fresh database of its own); then the raw consume and the apply-only rate."""
    async with sandbox(kafka_endpoint.bootstrap_servers, pg.url, label="benchproc") as box:
        kafka = box.kafka
        stream = synthetic_stream(events, skus=500, seed=21)
        producer = AsyncProducer(producer_config(kafka))
        try:
            await producer.send_batch(kafka.topic(inventory_events.TOPIC), as_records(stream))
        finally:
            await producer.close()
        rows = []
        usage = Usage(dict(infra))
        async with usage.measure():
            for batch, measured in ((1, min(events, 2_000)), (100, events), (1000, events)):
                with fresh_database(pg.url, f"bp{batch}") as url:
                    console.print(f"processor: {measured} events, batch size {batch}")
                    async with Sandbox(kafka, url) as worker:
                        stack = worker.stack(connections_file)
                        rate = await _worker_rate(stack, url, batch, measured, usage)
                    rows.append({"batch": batch, "events": measured, "events_per_s": round(rate, 1)})
        raws = [
            await asyncio.to_thread(raw_consume_rate, kafka, inventory_events.TOPIC, events) for _ in range(3)
        ]
        raw = statistics.median(raws)
        apply_only = await apply_rate(box.database_url, stream, batch=1000)
    best = max(r["events_per_s"] for r in rows)
    return {
        "events_per_s": best,
        "raw_consume_per_s": round(raw, 1),
        "raw_consume_runs": [round(r, 1) for r in raws],
        "ratio": round(best / raw, 4) if raw else None,
        "ratio_target": 0.30,
        "apply_only_per_s": round(apply_only, 1),
        "by_batch": rows,
        "events": events,
    }, usage.result
