"""The fan-out worker of one channel: consumes ``stock.changed`` and ``stock.rejected`` in group
``fanout.<channel>`` and makes every connection of that channel show what the master allows.

Per batch: gather records for a short window, keep only the newest per SKU, turn it into a target per
connection (buffer, allocation, pause on rejection), skip targets at or below what the connection last
confirmed, and send the rest within the connection's token bucket (bulk calls where the channel has them),
retrying transient failures with backoff and jitter (honouring Retry-After). What still fails goes to
``fanout.dlq``. Offsets are stored only after every target of the batch was confirmed or dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from confluent_kafka import Consumer, Message
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay

from channels.connection import Connection, ConnectionRegistry
from channels.errors import ChannelError, CompareMismatch
from channels.outbound import InventoryClient, OutboundChannel, outbound
from channels.ratelimit import TokenBucket
from fanout.metrics import FanoutMetrics
from fanout.plan import Precedence, Record, Target, latest_per_sku, target_for
from fanout.settings import FanoutSettings
from schemas import fanout_dlq, stock_changed, stock_rejected
from schemas.base import partition_key
from schemas.fanout_dlq import UpdateDeadLettered
from stocksync import health, logs
from stocksync.kafka import AsyncProducer, consumer_config, producer_config
from stocksync.metrics import metrics_handler

log = logging.getLogger(__name__)

TOPICS: dict[str, Callable[[bytes], Record]] = {
    stock_changed.TOPIC: stock_changed.decode,
    stock_rejected.TOPIC: stock_rejected.decode,
}


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientError | TimeoutError) or (
        isinstance(exc, ChannelError) and exc.retryable
    )


def _backoff(state: RetryCallState) -> float:
    """The channel's Retry-After when it gave one, else exponential backoff with full jitter (cap 10 s)."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ChannelError) and exc.retry_after_s is not None:
        return exc.retry_after_s
    return random.uniform(0, min(10.0, 0.2 * 2**state.attempt_number))  # noqa: S311 - jitter, not secrets


def _result(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, CompareMismatch):
        return "conflict"
    if isinstance(exc, ChannelError) and exc.status is not None:
        return (
            "rate_limited" if exc.status == 429 else "server_error" if exc.status >= 500 else "client_error"
        )
    return "network" if not isinstance(exc, ChannelError) else "client_error"


@dataclass
class ConnectionSync:
    """One connection's client, budget, and what it last confirmed per SKU."""

    connection: Connection
    client: InventoryClient
    bucket: TokenBucket
    max_batch: int
    confirmed: dict[str, tuple[Precedence, int]] = field(default_factory=dict)

    def due(self, target: Target) -> bool:
        last = self.confirmed.get(target.sku)
        return last is None or target.precedence > last[0]


@dataclass(frozen=True)
class Failure:
    target: Target
    attempts: int
    error: BaseException


class ChannelFanout:
    """Sends targets to the connections of one channel; knows nothing about Kafka."""

    def __init__(
        self,
        settings: FanoutSettings,
        spec: OutboundChannel,
        syncs: list[ConnectionSync],
        metrics: FanoutMetrics,
    ) -> None:
        self.settings, self.spec, self.syncs, self.metrics = settings, spec, syncs, metrics
        self.channel = spec.name

    async def _call(
        self, sync: ConnectionSync, send: Callable[[], Awaitable[None]], tries: list[int]
    ) -> None:
        """Run `send`, retrying transient failures; every attempt, the failed ones too, is counted in
        `tries[0]` (the caller's tally, for its dead letter). The client charges the connection's budget for
        each HTTP request `send` makes; the time that took is counted here."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=_backoff,
            stop=stop_after_attempt(self.settings.max_attempts)
            | stop_after_delay(self.settings.retry_deadline_s),
            reraise=True,
        ):
            with attempt:
                tries[0] += 1
                waited_before = sync.bucket.waited_s
                try:
                    await send()
                except BaseException as exc:
                    self.metrics.calls.labels(self.channel, _result(exc)).inc()
                    raise
                finally:
                    if waited := sync.bucket.waited_s - waited_before:
                        self.metrics.rate_limit_wait.labels(self.channel).inc(waited)
                self.metrics.calls.labels(self.channel, "ok").inc()

    async def _one(self, sync: ConnectionSync, target: Target, reference: str) -> Failure | None:
        last = sync.confirmed.get(target.sku)
        quantity, tries = target.quantity, [0]
        try:
            try:
                await self._call(
                    sync,
                    lambda: sync.client.set_available(
                        target.sku, quantity, change_from=last[1] if last else None, reference=reference
                    ),
                    tries,
                )
            except CompareMismatch as exc:
                # The channel's count moved without us (a sale we have not heard of yet, or an edit): never
                # show more than it holds now; the master's next change or the reconciler settles the rest.
                current = exc.current
                quantity = min(quantity, current) if current is not None else quantity
                await self._call(
                    sync,
                    lambda: sync.client.set_available(
                        target.sku, quantity, change_from=current, reference=reference
                    ),
                    tries,
                )
        except (ChannelError, aiohttp.ClientError, TimeoutError) as exc:
            return Failure(target, tries[0], exc)
        sync.confirmed[target.sku] = (target.precedence, quantity)
        return None

    async def _bulk(self, sync: ConnectionSync, targets: list[Target], reference: str) -> list[Failure]:
        items, tries = [(t.sku, t.quantity) for t in targets], [0]
        try:
            await self._call(sync, lambda: sync.client.set_many(items, reference=reference), tries)
        except (ChannelError, aiohttp.ClientError, TimeoutError) as exc:
            return [Failure(t, tries[0], exc) for t in targets]
        for t in targets:
            sync.confirmed[t.sku] = (t.precedence, t.quantity)
        return []

    async def push(self, sync: ConnectionSync, targets: list[Target]) -> list[Failure]:
        """Send `targets` to one connection: single compare-and-set writes, or bulk calls for several."""
        reference = f"stocksync://{sync.connection.tenant}/batch-{int(time.time() * 1000)}"
        failures: list[Failure] = []
        if len(targets) == 1 or sync.max_batch == 1:
            for t in targets:
                ref = f"stocksync://{t.cause.tenant}/{t.sku}?version={t.precedence[0]}"
                failure = await self._one(sync, t, ref)
                if failure:
                    failures.append(failure)
            return failures
        for i in range(0, len(targets), sync.max_batch):
            failures += await self._bulk(sync, targets[i : i + sync.max_batch], reference)
        return failures

    async def apply(self, records: list[Record]) -> list[Failure]:
        """Make every connection show the newest of `records`; return what could not be delivered."""
        latest = latest_per_sku(records)
        self.metrics.coalesced.labels(self.channel).inc(len(records) - len(latest))
        per_sync: list[tuple[ConnectionSync, list[Target]]] = []
        for sync in self.syncs:
            conn = sync.connection
            targets = []
            for record in latest:
                if record.tenant != conn.tenant or record.sku not in conn.listings:
                    continue
                target = target_for(
                    record,
                    conn.id,
                    buffer=conn.safety_buffer,
                    allocation=conn.allocation,
                    pause_on_rejection=self.settings.pause_on_rejection,
                )
                if target is not None and sync.due(target):
                    targets.append(target)
            if targets:
                per_sync.append((sync, targets))
        results = await asyncio.gather(*(self.push(sync, targets) for sync, targets in per_sync))
        now = datetime.now(UTC)
        failed = {(f.target.connection_id, f.target.sku) for fs in results for f in fs}
        for _sync, targets in per_sync:
            for t in targets:
                if (t.connection_id, t.sku) not in failed:
                    self.metrics.sync_lag.labels(self.channel).observe(
                        max(0.0, (now - t.cause.received_at).total_seconds())
                    )
        return [f for fs in results for f in fs]


def dead_letter(channel: str, failure: Failure) -> UpdateDeadLettered:
    t, exc = failure.target, failure.error
    return UpdateDeadLettered(
        connection_id=t.connection_id,
        channel=channel,
        tenant=t.cause.tenant,
        sku=t.sku,
        quantity=t.quantity,
        version=t.precedence[0],
        original_topic=stock_changed.TOPIC if t.cause.type == "stock_changed" else stock_rejected.TOPIC,
        original=t.cause.model_dump(mode="json"),
        attempts=failure.attempts,
        status=exc.status if isinstance(exc, ChannelError) else None,
        last_error=f"{type(exc).__name__}: {exc}",
        failed_at=datetime.now(UTC),
    )


class FanoutWorker:
    """One channel's consumer group: Kafka in, ChannelFanout out, DLQ for what cannot be delivered."""

    def __init__(self, settings: FanoutSettings, fanout: ChannelFanout, producer: AsyncProducer) -> None:
        self.settings, self.fanout, self.producer = settings, fanout, producer
        self.assigned = asyncio.Event()

    def decode(self, messages: list[Message]) -> list[Record]:
        records: list[Record] = []
        prefix = self.settings.kafka.topic_prefix
        for m in messages:
            decode = TOPICS.get((m.topic() or "").removeprefix(prefix))
            try:
                if decode is not None:
                    records.append(decode(m.value() or b""))
            except ValidationError as exc:
                log.error("skipping a record of %s that does not parse: %s", m.topic(), exc)
        return records

    async def handle(self, messages: list[Message]) -> None:
        failures = await self.fanout.apply(self.decode(messages))
        if failures:
            topic = self.settings.kafka.topic(fanout_dlq.TOPIC)
            letters = [dead_letter(self.fanout.channel, f) for f in failures]
            await asyncio.gather(
                *(
                    self.producer.send(
                        topic, d.model_dump_json().encode(), key=partition_key(d.tenant, d.sku)
                    )
                    for d in letters
                )
            )
            self.fanout.metrics.dlq_writes.labels(self.fanout.channel).inc(len(letters))
            for d in letters:
                with logs.bound(tenant=d.tenant, sku=d.sku, connection=d.connection_id):
                    log.error(
                        "dead-lettered %s/%s=%d for %s after %d attempts: %s",
                        d.tenant,
                        d.sku,
                        d.quantity,
                        d.connection_id,
                        d.attempts,
                        d.last_error,
                    )

    async def _gather(self, consumer: Consumer) -> list[Message]:
        """Wait for a first record, then keep gathering for the coalescing window (or until max_batch).

        The first record comes from poll(), which returns as soon as one arrives: consume(n, timeout) would
        wait for n records or the whole timeout, adding that wait to every update at low traffic.
        """
        first = await asyncio.to_thread(consumer.poll, 0.2)
        if first is None or first.error():
            return []
        messages = [first]
        deadline = time.monotonic() + self.settings.coalesce_window_s
        while len(messages) < self.settings.max_batch and (left := deadline - time.monotonic()) > 0:
            more = await asyncio.to_thread(consumer.consume, self.settings.max_batch - len(messages), left)
            messages += [m for m in more if not m.error()]
        return messages

    async def run(self, stop: asyncio.Event) -> None:
        kafka = self.settings.kafka
        consumer = Consumer(
            consumer_config(
                kafka,
                f"fanout.{self.fanout.channel}",
                **{"session.timeout.ms": int(self.settings.session_timeout_s * 1000)},
            )
        )
        loop = asyncio.get_running_loop()

        def on_assign(_consumer: Any, _partitions: list[Any]) -> None:
            loop.call_soon_threadsafe(self.assigned.set)

        consumer.subscribe([kafka.topic(t) for t in TOPICS], on_assign=on_assign)
        try:
            while not stop.is_set():
                messages = await self._gather(consumer)
                if not messages:
                    continue
                await self.handle(messages)
                for m in messages:
                    consumer.store_offsets(m)  # only now: every target confirmed or dead-lettered
        finally:
            await asyncio.to_thread(consumer.close)


def build_fanout(
    settings: FanoutSettings,
    channel: str,
    connections: ConnectionRegistry,
    session: aiohttp.ClientSession,
    metrics: FanoutMetrics,
) -> ChannelFanout:
    spec = outbound(channel)
    syncs = []
    for c in connections.for_channel(channel):
        budget = spec.budget(c)
        syncs.append(ConnectionSync(c, spec.client(session, c, budget=budget), budget, spec.max_batch))
    if not syncs:
        log.warning(
            "no enabled %s connections (file or table): this worker will only advance offsets",
            channel,
        )
    return ChannelFanout(settings, spec, syncs, metrics)


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
    workers: list[FanoutWorker] | None = None,
    metrics: FanoutMetrics | None = None,
    check_interval_s: float = 15.0,
) -> AsyncIterator[int]:
    """/metrics, /healthz and /readyz (Kafka answers, every worker holds partitions) for the process, and
    the periodic lag and DLQ-depth checks when `metrics` is given; yields the bound port."""
    readiness = health.Readiness({"kafka": health.kafka_check(settings.kafka)})
    for w in workers or []:
        readiness.checks[f"consumer:{w.fanout.channel}"] = health.assignment_check(
            w.assigned.is_set, f"consumer group fanout.{w.fanout.channel}"
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
        channels = [w.fanout.channel for w in workers or []]
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


async def run_fanout(settings: FanoutSettings, connections: ConnectionRegistry, stop: asyncio.Event) -> None:
    """Composition root: one worker (consumer group) per channel in settings.channels, in this process."""
    registry = CollectorRegistry()
    metrics = FanoutMetrics(registry)
    timeout = aiohttp.ClientTimeout(total=10)
    producer = AsyncProducer(producer_config(settings.kafka))
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            workers = [
                FanoutWorker(settings, build_fanout(settings, ch, connections, session, metrics), producer)
                for ch in settings.channels
            ]
            async with serve_ops(settings, registry, workers=workers, metrics=metrics) as port:
                log.info("fan-out for %s: metrics on port %d", ", ".join(settings.channels), port)
                await asyncio.gather(*(w.run(stop) for w in workers))
    finally:
        await producer.close()
