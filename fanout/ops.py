"""The fan-out process's ops server: /metrics, /healthz, /readyz (Kafka answers, every channel's group holds
partitions), and the periodic consumer-lag and DLQ-depth gauges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CollectorRegistry

from fanout.loop import TOPICS
from fanout.metrics import FanoutMetrics
from fanout.settings import FanoutSettings
from schemas import fanout_dlq
from stocksync import health
from stocksync.metrics import metrics_handler


async def refresh_gauges(settings: FanoutSettings, metrics: FanoutMetrics, channels: list[str]) -> None:
    """One round of the periodic checks: each channel group's lag, and the dead-letter topic's depth."""
    kafka = settings.kafka
    topics = [kafka.topic(t) for t in TOPICS]
    for channel in channels:
        group = kafka.group(f"fanout.{channel}")
        for lag in await asyncio.to_thread(health.consumer_lag, kafka, group, topics):
            metrics.consumer_lag.labels(lag.group, lag.topic).set(lag.records)
    depth = await asyncio.to_thread(health.topic_depth, kafka, kafka.topic(fanout_dlq.TOPIC))
    if depth is not None:
        metrics.dlq_depth.set(depth)


@asynccontextmanager
async def serve_ops(
    settings: FanoutSettings,
    registry: CollectorRegistry,
    *,
    assigned: Mapping[str, asyncio.Event] | None = None,
    metrics: FanoutMetrics | None = None,
    check_interval_s: float = 15.0,
) -> AsyncIterator[int]:
    """Serve the ops endpoints for the block; `assigned` maps each channel to its group's assignment event;
    the periodic checks run when `metrics` is given. Yields the bound port."""
    assigned = assigned or {}
    readiness = health.Readiness({"kafka": health.kafka_check(settings.kafka)})
    for channel, event in assigned.items():
        readiness.checks[f"consumer:{channel}"] = health.assignment_check(
            event.is_set, f"consumer group fanout.{channel}"
        )
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", readiness.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    checks: asyncio.Task[None] | None = None
    if metrics is not None:
        channels = list(assigned)
        checks = asyncio.create_task(
            health.every(
                check_interval_s,
                "the consumer-lag and DLQ-depth checks",
                lambda: refresh_gauges(settings, metrics, channels),
            )
        )
    try:
        yield runner.addresses[0][1]
    finally:
        if checks is not None:
            checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checks
        await runner.cleanup()
