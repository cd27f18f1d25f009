"""Helpers shared by the reconciler's end-to-end tests (this module holds no tests itself)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from channels.connection import Connection
from lab.local.traffic import as_records, stock_counts
from reconciler.app import build_reconciler
from reconciler.report import RunReport
from reconciler.settings import ReconcilerSettings
from stocksync.kafka import AsyncProducer, producer_config, watermarks
from stocksync.settings import KafkaSettings, PostgresSettings


def reconciler_settings(
    kafka: KafkaSettings, database_url: str, reports: Path, **extra: Any
) -> ReconcilerSettings:
    """Settings for a run on the test's topics and database; short retries so an outage fails fast."""
    values: dict[str, Any] = {
        "kafka": kafka,
        "postgres": PostgresSettings(database_url=database_url),
        "connections_file": None,
        "connections_table": False,
        "report_dir": reports,
        "apply_timeout_s": 60.0,
        "channel_retry_s": 1.0,
        "fanout_grace_s": 0.0,
    }
    values.update(extra)
    return ReconcilerSettings(**values)


async def reconcile(
    settings: ReconcilerSettings, connections: list[Connection], *, dry_run: bool = False
) -> tuple[RunReport, CollectorRegistry]:
    registry = CollectorRegistry()
    async with build_reconciler(
        settings, connections=connections, registry=registry, publish=not dry_run
    ) as reconciler:
        return await reconciler.run(dry_run=dry_run), registry


async def seed_counts(kafka: KafkaSettings, tenant: str, counts: dict[str, int]) -> None:
    events = stock_counts(tenant, counts, tag=f"{time.time_ns()}")
    producer = AsyncProducer(producer_config(kafka))
    try:
        await producer.send_batch(kafka.topic("inventory.events"), as_records(events))
    finally:
        await producer.close()


def master(database_url: str, tenant: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT sku, available FROM inventory WHERE tenant = %s", (tenant,)).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def checkpoints(database_url: str) -> dict[str, datetime]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT connection_id, listed_until FROM reconcile_checkpoints").fetchall()
    return {r[0]: r[1] for r in rows}


def end_offsets(kafka: KafkaSettings, topic: str) -> int:
    """The sum of the topic's high watermarks: how many records it ever took (0 if it does not exist)."""
    name = kafka.topic(topic)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "reconcile-test-offsets"})
    try:
        meta = consumer.list_topics(name, timeout=10).topics.get(name)
        if meta is None or meta.error is not None:
            return 0
        return sum(watermarks(consumer, TopicPartition(name, p))[1] for p in meta.partitions)
    finally:
        consumer.close()


async def deliver(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> None:
    """POST a webhook as the channel does: a 503 is delivered again, as channels redeliver; anything but 200
    in the end fails the test."""
    for _attempt in range(20):
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 503:
                assert resp.status == 200, f"{url}: {resp.status} {await resp.text()}"
                return
        await asyncio.sleep(0.5)  # the channel's redelivery delay, shortened
    raise AssertionError(f"{url}: still 503 after 20 deliveries")
