"""Rebuild the master record, ledger and idempotency store from ``inventory.events`` into an empty database.

Reads every partition from its first retained offset to the end offsets seen at the start, in log order
per partition (so per SKU), and applies batches through the same ``apply_isolating`` as the live processor.
The result is checksum-equal to a live database that has processed the same records.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import AsyncConnection

from processor.isolation import apply_isolating, decode_all
from processor.store import DEFAULT_SKEW
from schemas import inventory_events
from stocksync.db import migrate
from stocksync.kafka import watermarks
from stocksync.settings import KafkaSettings


class ReplayError(RuntimeError):
    """The replay cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ReplayStats:
    records: int
    undecodable: int
    first_offsets: dict[
        int, int
    ]  # partition -> first offset still retained (0 unless retention removed some)


def _require_empty(database_url: str) -> None:
    migrate(database_url)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM inventory) + (SELECT count(*) FROM ledger) "
            "+ (SELECT count(*) FROM processed_events)"
        ).fetchone()
    if row and row[0]:
        raise ReplayError("the target database is not empty; replay only into a new, empty database")


async def replay(
    kafka: KafkaSettings,
    target_url: str,
    *,
    batch: int = 1000,
    progress: Callable[[int, int], None] | None = None,
    stall_timeout_s: float = 30.0,
    skew: timedelta = DEFAULT_SKEW,
) -> ReplayStats:
    """Apply every retained record of inventory.events to `target_url`; `progress(done, total)` as it goes.
    An event that cannot be applied is recorded ``invalid`` as the live processor records it (no dead letter
    is published: the live one already was); pass the live processor's clock `skew` for an equal result."""
    _require_empty(target_url)
    topic = kafka.topic(inventory_events.TOPIC)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"replay-{uuid.uuid4().hex}",  # never commits: assign() below, no subscription
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ReplayError(f"topic {topic} does not exist on {kafka.bootstrap_servers}")
        bounds = {p: watermarks(consumer, TopicPartition(topic, p)) for p in meta.partitions}
        total = sum(high - low for low, high in bounds.values())
        pending = {p for p, (low, high) in bounds.items() if high > low}
        consumer.assign([TopicPartition(topic, p, bounds[p][0]) for p in pending])
        done = undecodable = 0
        last_progress = time.monotonic()
        async with await AsyncConnection.connect(target_url) as conn:
            while pending:
                messages = await asyncio.to_thread(consumer.consume, batch, 1.0)
                if messages:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > stall_timeout_s:
                    raise ReplayError(
                        f"no records from partitions {sorted(pending)} of {topic} "
                        f"for {stall_timeout_s:.0f} s; is the cluster reachable?"
                    )
                values = []
                for m in messages:
                    if m.error():
                        continue
                    partition, offset = m.partition() or 0, m.offset() or 0
                    if partition not in pending or offset >= bounds[partition][1]:
                        continue  # written after the replay started: not part of this rebuild
                    values.append(m.value() or b"")
                    done += 1
                    if offset + 1 >= bounds[partition][1]:
                        pending.discard(partition)
                events, refused = decode_all(values)  # the live processor's rule for what is no event
                undecodable += len(refused)
                if events:
                    await apply_isolating(conn, events, skew=skew)
                if progress:
                    progress(done, total)
        return ReplayStats(done, undecodable, {p: low for p, (low, _h) in bounds.items()})
    finally:
        await asyncio.to_thread(consumer.close)
