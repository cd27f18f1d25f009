"""The fan-out worker of one channel: consumes ``stock.changed`` in group ``fanout.<channel>``, coalesces
each polled batch to the newest version per SKU, and sets that quantity on every connection listing it.

Delivery: offsets are stored only after every connection confirmed (or the update counted as failed), so
a crash re-sends at most the last batch; a version at or below the last one confirmed is never re-sent.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from confluent_kafka import Consumer, Message
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from channels.connection import Connection, ConnectionRegistry
from channels.errors import ChannelError
from channels.outbound import InventoryClient, client_for
from fanout.coalesce import latest_per_sku
from fanout.metrics import FanoutMetrics
from fanout.settings import FanoutSettings
from schemas import stock_changed
from schemas.stock_changed import StockChanged
from stocksync.kafka import consumer_config
from stocksync.metrics import metrics_handler

log = logging.getLogger(__name__)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError) or (
        isinstance(exc, ChannelError) and exc.retryable
    )


def _backoff(state: RetryCallState) -> float:
    """Exponential backoff with full jitter, or the channel's Retry-After when it gave one."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ChannelError) and exc.retry_after_s is not None:
        return exc.retry_after_s
    return random.uniform(0, min(10.0, 0.1 * 2**state.attempt_number))  # noqa: S311 - jitter, not crypto


class FanoutWorker:
    def __init__(
        self,
        settings: FanoutSettings,
        connections: ConnectionRegistry,
        session: aiohttp.ClientSession,
        metrics: FanoutMetrics,
    ) -> None:
        self.settings = settings
        self.channel = settings.channel
        self.connections = connections.for_channel(self.channel)
        self.clients: dict[str, InventoryClient] = {c.id: client_for(session, c) for c in self.connections}
        self.metrics = metrics
        self.confirmed: dict[
            tuple[str, str], tuple[int, int]
        ] = {}  # (connection, sku) -> (version, quantity)
        self.assigned = asyncio.Event()

    async def push(self, connection: Connection, change: StockChanged) -> None:
        key = (connection.id, change.sku)
        last = self.confirmed.get(key)
        if last is not None and last[0] >= change.version:
            return
        quantity = max(0, change.available - connection.safety_buffer)
        reference = f"stocksync://{change.tenant}/{change.sku}?version={change.version}"
        client = self.clients[connection.id]
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                wait=_backoff,
                stop=stop_after_attempt(self.settings.max_attempts),
                reraise=True,
            ):
                with attempt:
                    await client.set_available(change.sku, quantity, change_from=None, reference=reference)
        except (ChannelError, aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.calls.labels(self.channel, "failed").inc()
            self.metrics.failed.labels(self.channel).inc()
            log.error(
                "could not set %s/%s=%d (v%d) on %s: %s",
                change.tenant,
                change.sku,
                quantity,
                change.version,
                connection.id,
                exc,
            )
            return
        self.confirmed[key] = (change.version, quantity)
        self.metrics.calls.labels(self.channel, "ok").inc()
        lag = (datetime.now(UTC) - change.received_at).total_seconds()
        self.metrics.sync_lag.labels(self.channel).observe(max(0.0, lag))

    async def handle(self, messages: list[Message]) -> None:
        changes = []
        for m in messages:
            if m.error():
                log.warning("consumer error: %s", m.error())
                continue
            try:
                changes.append(stock_changed.decode(m.value() or b""))
            except ValidationError as exc:
                log.error("skipping a stock.changed record that does not parse: %s", exc)
        latest = latest_per_sku(changes)
        self.metrics.coalesced.labels(self.channel).inc(len(changes) - len(latest))
        pushes = [
            self.push(conn, change)
            for change in latest
            for conn in self.connections
            if conn.tenant == change.tenant and change.sku in conn.listings
        ]
        await asyncio.gather(*pushes)

    async def run(self, stop: asyncio.Event) -> None:
        kafka = self.settings.kafka
        consumer = Consumer(consumer_config(kafka, f"fanout.{self.channel}"))
        loop = asyncio.get_running_loop()

        def on_assign(_consumer: Any, partitions: list[Any]) -> None:
            loop.call_soon_threadsafe(self.assigned.set)

        consumer.subscribe([kafka.topic(stock_changed.TOPIC)], on_assign=on_assign)
        try:
            while not stop.is_set():
                messages = await asyncio.to_thread(consumer.consume, self.settings.max_batch, 0.2)
                if not messages:
                    continue
                await self.handle(messages)
                for m in messages:
                    if not m.error():
                        consumer.store_offsets(m)
        finally:
            await asyncio.to_thread(consumer.close)


@asynccontextmanager
async def serve_ops(settings: FanoutSettings, registry: CollectorRegistry) -> AsyncIterator[int]:
    """/metrics and /healthz for the worker; yields the bound port."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", lambda _r: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


async def run_fanout(settings: FanoutSettings, connections: ConnectionRegistry, stop: asyncio.Event) -> None:
    """Composition root: the HTTP session, metrics server and worker, closed in reverse order."""
    registry = CollectorRegistry()
    metrics = FanoutMetrics(registry)
    timeout = aiohttp.ClientTimeout(total=10)
    async with serve_ops(settings, registry) as port, aiohttp.ClientSession(timeout=timeout) as session:
        log.info("fan-out for %s: metrics on port %d", settings.channel, port)
        await FanoutWorker(settings, connections, session, metrics).run(stop)
