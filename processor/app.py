"""The Faust app: consumes ``inventory.events`` in batches, applies each batch in one transaction, then
publishes the results (``stock.changed`` / ``stock.rejected``) and waits for their acknowledgement.

Ordering: one partition per tenant/SKU key, one batch at a time, so a SKU's events apply in log order.
Delivery: Faust acks a batch's events when the loop body returns (and, in ``take``, also on cancellation),
so the body never raises: database and produce errors are retried, and a cancelled worker first finishes
the batch it started. A crash after the commit but before the produce is healed by redelivery: the
duplicate re-emits the stored result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg import OperationalError
from psycopg.errors import DeadlockDetected, SerializationFailure, UniqueViolation
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from processor.metrics import ProcessorMetrics
from processor.ops import ops_app
from processor.settings import ProcessorSettings
from processor.store import Result, apply_batch
from schemas import inventory_events, stock_changed, stock_rejected
from stocksync import logs
from stocksync.db import open_pool
from stocksync.kafka import AsyncProducer, DeliveryError, producer_config

log = logging.getLogger(__name__)

# Worth retrying: the connection dropped, or another worker touched the same rows during a rebalance.
TRANSIENT_DB_ERRORS = (OperationalError, DeadlockDetected, SerializationFailure, UniqueViolation)


def _retrying(what: str, *errors: type[BaseException]) -> AsyncRetrying:
    def before_sleep(state: Any) -> None:
        log.warning(
            "%s failed (attempt %d), retrying: %r", what, state.attempt_number, state.outcome.exception()
        )

    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential(multiplier=0.05, max=5.0),
        before_sleep=before_sleep,
        reraise=True,
    )


async def commit_batch(
    pool: AsyncConnectionPool, raw_values: list[bytes], metrics: ProcessorMetrics
) -> list[Result]:
    """Decode and apply a batch in one transaction, retried whole on transient database errors."""
    events = []
    for raw in raw_values:
        try:
            events.append(inventory_events.decode(raw))
        except ValidationError as exc:
            metrics.events.labels("undecodable").inc()
            log.error("skipping a record of inventory.events that is not a canonical event: %s", exc)
    if not events:
        return []
    started = time.perf_counter()
    async for attempt in _retrying("applying a batch to PostgreSQL", *TRANSIENT_DB_ERRORS):
        with attempt:
            async with pool.connection() as conn, conn.transaction():
                results = await apply_batch(conn, events)
    metrics.commit_seconds.observe(time.perf_counter() - started)
    metrics.batch_size.observe(len(events))
    now = datetime.now(UTC)
    for r in results:
        metrics.events.labels(r.outcome).inc()
        if r.outcome == "rejected":
            metrics.oversells_prevented.inc()
        if r.outcome in (
            "rejected",
            "unknown_sku",
        ):  # a sale the master refused: worth a line an SRE can grep
            e = r.event
            with logs.bound(event_id=e.event_id, tenant=e.tenant, sku=e.sku, connection=e.connection_id):
                log.info("%s %s of %s/%s refused: %s", e.type, e.event_id, e.tenant, e.sku, r.outcome)
        if r.outcome != "duplicate":
            metrics.lag_seconds.observe(max(0.0, (now - r.event.received_at).total_seconds()))
    return results


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


def build_app(settings: ProcessorSettings, *, registry: CollectorRegistry | None = None) -> faust.App:
    """The processor's Faust app; connects to nothing until it is started."""
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
    outputs = {name: kafka.topic(name) for name in (stock_changed.TOPIC, stock_rejected.TOPIC)}

    async def publish(producer: AsyncProducer, results: list[Result]) -> None:
        await asyncio.gather(
            *(
                producer.send(outputs[r.topic], r.payload, key=r.key)
                for r in results
                if r.topic is not None and r.payload is not None
            )
        )

    async def handle(pool: AsyncConnectionPool, producer: AsyncProducer, values: list[bytes]) -> None:
        results = await commit_batch(pool, values, metrics)
        async for attempt in _retrying("publishing results to Kafka", DeliveryError):
            with attempt:
                await publish(producer, results)

    @app.agent(source, name="apply-inventory-events")
    async def apply_events(stream: faust.StreamT[bytes]) -> None:
        # Results go out through librdkafka (idempotent, acks=all): Faust consumes, we publish.
        producer = AsyncProducer(producer_config(kafka))
        try:
            async with open_pool(settings.postgres, name="processor") as pool:
                async for values in stream.take(settings.batch_max, within=settings.batch_within_s):
                    task = asyncio.ensure_future(handle(pool, producer, list(values)))
                    try:
                        await asyncio.shield(task)
                    except asyncio.CancelledError:
                        await task  # finish the started batch before take() acks it
                        raise
        finally:
            await producer.close()

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
