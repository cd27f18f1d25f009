"""The fan-out's composition root: the only place that creates the real Kafka producer and consumers and the
HTTP session; whatever is handed in is used as-is (and left open), for tests and for sharing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import aiohttp
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from channels.connection import ConnectionRegistry
from channels.registry import spec as channel_spec
from fanout.budget import DailyBudget
from fanout.delivery import ChannelFanout, ConnectionSync, Delivery
from fanout.journal import WriteJournal
from fanout.loop import FanoutWorker
from fanout.metrics import FanoutMetrics
from fanout.ops import serve_ops
from fanout.settings import FanoutSettings
from stocksync.kafka import AsyncProducer, consumer_config, producer_config
from stocksync.retry import RetryPolicy

log = logging.getLogger(__name__)


def retry_policy(settings: FanoutSettings) -> RetryPolicy:
    """FANOUT_RETRY_DEADLINE_S and FANOUT_MAX_ATTEMPTS; backoff capped at 10 s; Retry-After as given."""
    return RetryPolicy(
        deadline_s=settings.retry_deadline_s, max_attempts=settings.max_attempts, backoff_cap_s=10.0
    )


def channel_fanout(
    settings: FanoutSettings,
    channel: str,
    connections: ConnectionRegistry,
    session: aiohttp.ClientSession,
    metrics: FanoutMetrics,
    journal: WriteJournal | None = None,
) -> ChannelFanout:
    """One channel's delivery to its enabled connections, each with its client and budget."""
    spec = channel_spec(channel)
    syncs = []
    for c in connections.for_channel(channel):
        budget = spec.budget(c)
        daily = DailyBudget(spec.daily_calls, spec.daily_writes_per_listing)
        client = spec.client(session, c, budget=budget)
        syncs.append(ConnectionSync(c, client, budget, spec.max_batch, daily=daily))
    if not syncs:
        log.warning(
            "no enabled %s connections (file or table): this worker will only advance offsets",
            channel,
        )
    delivery = Delivery(channel, retry_policy(settings), metrics)
    return ChannelFanout(
        delivery, syncs, metrics, pause_on_rejection=settings.pause_on_rejection, journal=journal
    )


@dataclass
class Fanout:
    """The built fan-out: one worker (consumer group) per channel, and the ops server's registry."""

    settings: FanoutSettings
    workers: list[FanoutWorker]
    registry: CollectorRegistry
    metrics: FanoutMetrics

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the ops endpoints and run every worker until `stop`."""
        assigned = {w.channel: w.assigned for w in self.workers}
        async with serve_ops(self.settings, self.registry, assigned=assigned, metrics=self.metrics) as port:
            log.info("fan-out for %s: metrics on port %d", ", ".join(assigned), port)
            await asyncio.gather(*(w.run(stop) for w in self.workers))


@asynccontextmanager
async def build_fanout(
    settings: FanoutSettings,
    *,
    connections: ConnectionRegistry,
    producer: AsyncProducer | None = None,
    session: aiohttp.ClientSession | None = None,
    registry: CollectorRegistry | None = None,
    consumers: Mapping[str, Consumer] | None = None,
) -> AsyncIterator[Fanout]:
    """The fan-out for settings.channels; what it created is closed when the block ends."""
    registry = registry or CollectorRegistry()
    metrics = FanoutMetrics(registry)
    async with AsyncExitStack() as stack:
        if producer is None:
            own_producer = AsyncProducer(producer_config(settings.kafka))
            stack.push_async_callback(own_producer.close)
            producer = own_producer
        if session is None:
            timeout = aiohttp.ClientTimeout(total=10)
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        # The journal of allocation writes: opened without waiting (the fan-out starts while PostgreSQL is
        # away; a claim then waits for it, fanout/journal.py).
        pool = AsyncConnectionPool(
            settings.postgres.database_url, min_size=0, max_size=2, open=False, name="fanout-journal"
        )
        await pool.open(wait=False)
        stack.push_async_callback(pool.close)
        journal = WriteJournal(pool)
        workers = []
        for channel in settings.channels:
            consumer = (consumers or {}).get(channel)
            if consumer is None:
                overrides = {"session.timeout.ms": int(settings.session_timeout_s * 1000)}
                consumer = Consumer(consumer_config(settings.kafka, f"fanout.{channel}", **overrides))
                stack.push_async_callback(asyncio.to_thread, consumer.close)
            fanout = channel_fanout(settings, channel, connections, session, metrics, journal)
            workers.append(FanoutWorker(settings, fanout, producer, consumer))
        yield Fanout(settings, workers, registry, metrics)


async def run_fanout(settings: FanoutSettings, connections: ConnectionRegistry, stop: asyncio.Event) -> None:
    """Build the fan-out and run it until `stop`."""
    async with build_fanout(settings, connections=connections) as fanout:
        await fanout.run(stop)
