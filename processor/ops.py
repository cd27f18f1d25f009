"""The processor's own HTTP surface: /metrics, /healthz, /readyz and /audit/{tenant}/{sku}; and the periodic
checks behind two gauges: master records below zero (oversell detection) and the group's consumer lag."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from processor import audit
from processor.metrics import ProcessorMetrics
from schemas import inventory_events
from stocksync import health
from stocksync.metrics import metrics_handler
from stocksync.settings import KafkaSettings

POOL = web.AppKey("pool", AsyncConnectionPool)

CHECK_INTERVAL_S = 15.0


async def audit_view(request: web.Request) -> web.Response:
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        return web.json_response({"error": "limit must be a whole number from 1 to 1000"}, status=400)
    tenant, sku = request.match_info["tenant"], request.match_info["sku"]
    async with request.app[POOL].connection() as conn:
        rows = await audit.trail(conn, tenant, sku, limit=limit)
        allocations = await audit.allocation_trail(conn, tenant, sku, limit=limit)
    return web.json_response({"tenant": tenant, "sku": sku, "changes": rows, "allocations": allocations})


async def negative_records(pool: AsyncConnectionPool) -> int:
    """How many master records show less than zero available (should always be 0)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM inventory WHERE available < 0")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def overcommitted(pool: AsyncConnectionPool) -> int:
    """How many SKUs under allocation have more units granted than the master holds (0 unless a count came in
    below the grants: units lost in the warehouse, the one case allocation cannot cover)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM (SELECT tenant, sku, sum(granted) AS g FROM allocations "
            "GROUP BY tenant, sku) a JOIN inventory i USING (tenant, sku) WHERE a.g > i.available"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def refresh_gauges(
    pool: AsyncConnectionPool, metrics: ProcessorMetrics, kafka: KafkaSettings, group: str
) -> None:
    """One round of the periodic checks: oversell detection, then the consumer lag of `group`."""
    metrics.negative_records.set(await negative_records(pool))
    metrics.overcommitted.set(await overcommitted(pool))
    topic = kafka.topic(inventory_events.TOPIC)
    for lag in await asyncio.to_thread(health.consumer_lag, kafka, kafka.group(group), [topic]):
        metrics.consumer_lag.labels(lag.group, lag.topic).set(lag.records)
    metrics.checks_timestamp.set(time.time())


def ops_app(
    registry: CollectorRegistry,
    pool: AsyncConnectionPool,
    *,
    metrics: ProcessorMetrics | None = None,
    kafka: KafkaSettings | None = None,
    group: str = "stocksync-processor",
    assigned: Callable[[], bool] | None = None,
    stalled: Callable[[], str | None] | None = None,
    check_interval_s: float = CHECK_INTERVAL_S,
) -> web.Application:
    """The ops server. With `kafka`, /readyz also checks the broker and `assigned` (the consumer holds
    partitions); with `stalled`, /readyz fails while it names a problem (the agent retrying a batch it cannot
    apply or publish); with `metrics` and `kafka`, the periodic checks run while the app is up."""
    app = web.Application()
    app[POOL] = pool
    readiness = health.Readiness({"postgres": health.postgres_check(pool)})
    if kafka is not None:
        readiness.checks["kafka"] = health.kafka_check(kafka)
    if assigned is not None:
        readiness.checks["consumer"] = health.assignment_check(assigned, f"consumer group {group}")
    if stalled is not None:
        problem = stalled

        async def progress() -> str | None:
            return problem()

        readiness.checks["progress"] = progress

    if metrics is not None and kafka is not None:
        checked_kafka, checked_metrics = kafka, metrics

        async def periodic(_app: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(
                health.every(
                    check_interval_s,
                    "the oversell and consumer-lag checks",
                    lambda: refresh_gauges(pool, checked_metrics, checked_kafka, group),
                )
            )
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(periodic)

    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", readiness.handle)
    app.router.add_get("/audit/{tenant}/{sku}", audit_view)
    return app
