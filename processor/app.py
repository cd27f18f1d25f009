"""The Faust app: consumes ``inventory.events`` in batches, applies each batch in one transaction, then
publishes the results (``stock.changed`` / ``stock.rejected`` / ``processor.dlq``) and waits for their
acknowledgement.

Ordering: one partition per tenant/SKU key, one batch at a time, so a SKU's events apply in log order.

Delivery, against Faust's ``Stream.take()``: take() acknowledges every event it buffered for a batch in a
``finally`` block, when the loop body returns, when it raises, and when the agent is cancelled. An exception
escaping the body would therefore acknowledge a batch that was never applied (issue 12 lost 25 of 30
acknowledged orders that way). So the body never raises:
- an event that cannot be applied (a record that is no canonical event, a value the database refuses) is
  isolated by processor.isolation: recorded ``invalid`` with its reason, dead-lettered on ``processor.dlq``,
  and the rest of its batch is applied;
- any other failure (PostgreSQL gone, Kafka not acknowledging the results) is retried with backoff for as
  long as it lasts: the agent takes no new batch meanwhile, /readyz answers 503 naming the cause and
  ``processor_stalled`` is 1; nothing is acknowledged that was not committed and published;
- a cancelled worker (rebalance, SIGTERM) first finishes the batch it started, so take()'s ``finally`` acks
  only what was committed; a kill -9 acks nothing and the batch is redelivered: the duplicate re-emits the
  stored result.
tests/e2e/test_processor_guarantees.py checks all of this against real Faust workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from channels.connection import ConnectionRegistry
from processor.allocate import AllocationConfig
from processor.emit import Result, dead_letter
from processor.isolation import apply_isolating, decode_all
from processor.metrics import ProcessorMetrics
from processor.ops import ops_app
from processor.settings import ProcessorSettings
from processor.store import DEFAULT_SKEW
from schemas import inventory_events, processor_dlq, stock_allocated
from stocksync import logs
from stocksync.db import open_pool
from stocksync.kafka import AsyncProducer, producer_config

log = logging.getLogger(__name__)

REFUSED = frozenset({"rejected", "unknown_sku", "invalid"})


@dataclass
class Progress:
    """Whether the agent is stuck retrying, since when and why: read by /readyz and a gauge."""

    stalled_since: float | None = None
    cause: str = ""

    def problem(self) -> str | None:
        if self.stalled_since is None:
            return None
        return (
            f"no batch applied for {time.monotonic() - self.stalled_since:.0f} s, retrying: {self.cause}; "
            "nothing is acknowledged meanwhile (check PostgreSQL and Kafka)"
        )


def _retrying(what: str, progress: Progress, metrics: ProcessorMetrics) -> AsyncRetrying:
    """Retry `what` for as long as it fails, with backoff; mark the agent stalled meanwhile."""

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception()
        if progress.stalled_since is None:
            progress.stalled_since = time.monotonic()
        progress.cause = f"{what} failed: {type(exc).__name__}: {str(exc).strip()[:300]}"
        metrics.stalled.set(1)
        log.warning("%s failed (attempt %d), retrying: %r", what, state.attempt_number, exc)

    return AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential(multiplier=0.05, max=5.0),
        before_sleep=before_sleep,
        reraise=True,
    )


@dataclass(frozen=True)
class Outgoing:
    """A record to publish: topic without prefix, key, value."""

    topic: str
    key: bytes
    value: bytes


def outgoing(results: list[Result], undecodable: list[tuple[bytes, str]]) -> list[Outgoing]:
    """What a committed batch publishes: each result's record, then the undecodable records' dead letters."""
    out = []
    for r in results:
        if r.topic is not None and r.payload:
            out.append(Outgoing(r.topic, r.key, r.payload))
        if r.allotment:
            out.append(Outgoing(stock_allocated.TOPIC, r.key, r.allotment))
    out += [
        Outgoing(processor_dlq.TOPIC, b"undecodable", dead_letter(raw, "undecodable", reason))
        for raw, reason in undecodable
    ]
    return out


async def commit_batch(
    pool: AsyncConnectionPool,
    raw_values: list[bytes],
    metrics: ProcessorMetrics,
    *,
    progress: Progress | None = None,
    skew: timedelta = DEFAULT_SKEW,
    allocation: AllocationConfig | None = None,
) -> list[Outgoing]:
    """Decode and apply a batch (isolating what cannot be applied), retried whole on any other error until
    it commits; return what to publish. Raises only CancelledError."""
    progress = progress or Progress()
    events, undecodable = decode_all(raw_values)
    for _raw, reason in undecodable:
        metrics.events.labels("undecodable").inc()
        log.error("dead-lettering a record of inventory.events: %s", reason)
    results: list[Result] = []
    if events:
        started = time.perf_counter()
        async for attempt in _retrying("applying a batch to PostgreSQL", progress, metrics):
            with attempt:
                async with pool.connection() as conn:
                    results = await apply_isolating(conn, events, skew=skew, allocation=allocation)
        metrics.commit_seconds.observe(time.perf_counter() - started)
        metrics.batch_size.observe(len(events))
    _observe(results, metrics)
    return outgoing(results, undecodable)


def _observe(results: list[Result], metrics: ProcessorMetrics) -> None:
    """A committed batch's metrics: one increment per outcome, not per event; a log line per refusal."""
    now = datetime.now(UTC)
    by_outcome = Counter(r.outcome for r in results)
    for outcome, n in by_outcome.items():
        metrics.events.labels(outcome).inc(n)
    if by_outcome["rejected"]:
        metrics.oversells_prevented.inc(by_outcome["rejected"])
    for r in results:
        if r.outcome in REFUSED:  # worth a line an SRE can grep
            e = r.event
            with logs.bound(event_id=e.event_id, tenant=e.tenant, sku=e.sku, connection=e.connection_id):
                log.info("%s %s of %s/%s refused: %s", e.type, e.event_id, e.tenant, e.sku, r.outcome)
        if r.outcome != "duplicate":
            metrics.lag_seconds.observe(max(0.0, (now - r.event.received_at).total_seconds()))


async def prune_processed(pool: AsyncConnectionPool, older_than: timedelta, *, chunk: int = 10_000) -> int:
    """Delete processed_events rows older than `older_than`, in chunks; return how many went."""
    total = 0
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM processed_events WHERE event_id IN (SELECT event_id FROM processed_events "
                "WHERE processed_at < now() - %s LIMIT %s)",
                (older_than, chunk),
            )
        total += cur.rowcount
        if cur.rowcount < chunk:
            return total


def build_app(
    settings: ProcessorSettings,
    *,
    registry: CollectorRegistry | None = None,
    producer: AsyncProducer | None = None,
    pool: AsyncConnectionPool | None = None,
    connections: ConnectionRegistry | None = None,
) -> faust.App:
    """The processor's Faust app: the only place that knows the real results producer and PostgreSQL pool
    (pass either in to share it; what is passed in is not closed here). Connects to nothing until started."""
    kafka = settings.kafka
    brokers = ";".join(f"kafka://{b.strip()}" for b in kafka.bootstrap_servers.split(","))
    app = faust.App(
        kafka.group(settings.app_id),
        broker=brokers,
        store="memory://",
        datadir=str(settings.datadir),
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        logging_config=logs.dict_config("processor"),
    )
    registry = registry or CollectorRegistry()
    metrics = ProcessorMetrics(registry)

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(
            kafka.topic(name),
            partitions=kafka.partitions,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    source = raw_topic(inventory_events.TOPIC)

    progress = Progress()
    skew = timedelta(seconds=settings.clock_skew_s)
    allocation = AllocationConfig.of(connections or ConnectionRegistry([]), settings.default_policy)

    async def publish(producer: AsyncProducer, records: list[Outgoing]) -> None:
        await asyncio.gather(*(producer.send(kafka.topic(o.topic), o.value, key=o.key) for o in records))

    async def handle(pool: AsyncConnectionPool, producer: AsyncProducer, values: list[bytes]) -> None:
        records = await commit_batch(
            pool, values, metrics, progress=progress, skew=skew, allocation=allocation
        )
        async for attempt in _retrying("publishing results to Kafka", progress, metrics):
            with attempt:
                await publish(producer, records)
        progress.stalled_since = None
        metrics.stalled.set(0)

    @asynccontextmanager
    async def resources() -> AsyncIterator[tuple[AsyncConnectionPool, AsyncProducer]]:
        # Results go out through librdkafka (idempotent, acks=all): Faust consumes, we publish.
        results = producer or AsyncProducer(producer_config(kafka))
        try:
            if pool is not None:
                yield pool, results
            else:
                async with open_pool(settings.postgres, name="processor") as own:
                    yield own, results
        finally:
            if producer is None:
                await results.close()

    @app.agent(source, name="apply-inventory-events")
    async def apply_events(stream: faust.StreamT[bytes]) -> None:
        async with resources() as (db, results):
            async for values in stream.take(settings.batch_max, within=settings.batch_within_s):
                # handle() never raises (see the module docstring); shielded, so a cancellation lets it
                # finish the started batch before take() acknowledges it.
                task = asyncio.ensure_future(handle(db, results, list(values)))
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    await task
                    raise

    async def ops() -> None:
        """The ops HTTP server and the processed_events retention, on a small pool of their own."""
        small = settings.postgres.model_copy(update={"pool_min_size": 1, "pool_max_size": 2})
        async with open_pool(small, name="processor-ops") as pool:
            surface = ops_app(
                registry,
                pool,
                metrics=metrics,
                kafka=kafka,
                group=settings.app_id,
                assigned=lambda: bool(app.consumer.assignment()),
                stalled=progress.problem,
            )
            runner = web.AppRunner(surface, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.ops_host, settings.ops_port).start()
            log.info("processor ops server on %s", runner.addresses)
            try:
                while True:
                    deleted = await prune_processed(pool, timedelta(days=settings.retention_days))
                    metrics.retention_deleted.inc(deleted)
                    if deleted:
                        log.info("retention: pruned %d processed_events rows", deleted)
                    await asyncio.sleep(settings.retention_interval_s)  # the retention schedule
            finally:
                await runner.cleanup()

    app.task(ops)
    return app
