"""The processor's consume-apply-publish loop: batches of ``inventory.events`` from a librdkafka consumer
(group PROCESSOR_APP_ID), each applied in one PostgreSQL transaction, its results (``stock.changed`` /
``stock.rejected`` / ``stock.allocated`` / ``processor.dlq``) published and acknowledged, and only then its
offsets stored for the consumer's periodic commit.

Until issue 15 this loop was a Faust agent over ``stream.take()``. Faust's stream alone cost about 230 µs of
wall clock per event on the 2-core bench box (`make bench`: ``processor.faust_floor_per_s`` 4,371/s at
take(1,000), against a bare librdkafka consume of 545,000/s and a bare set-based database apply of 12,500
events/s), more than the whole set-based apply of an event; no work around the database could bring the
processor near its database's ceiling through it. The batch is now taken from librdkafka directly, as the
fan-out does; the group, offsets and guarantees are the same.

Ordering: one partition per tenant/SKU key, one batch at a time, so a SKU's events apply in log order.

Delivery: at least once, never acknowledged before applied.
- offsets are stored only after the batch committed in PostgreSQL and Kafka acknowledged every record it
  publishes; librdkafka commits stored offsets every second, on a revocation and on close. A kill -9
  commits nothing new: the batch is redelivered and each duplicate re-emits its stored result.
- an event that cannot be applied (a record that is no canonical event, a value the database refuses) is
  isolated by processor.isolation: recorded ``invalid`` with its reason, dead-lettered on ``processor.dlq``,
  and the rest of its batch is applied;
- any other failure (PostgreSQL gone, Kafka not acknowledging the results) is retried with backoff for as
  long as it lasts: no new batch is taken meanwhile, /readyz answers 503 naming the cause and
  ``processor_stalled`` is 1; nothing is stored that was not committed and published. A stall longer than
  the consumer's max.poll.interval.ms (5 min) makes it leave the group: its partitions move to another
  worker (which meets the same database) and it rejoins once the batch goes through.
- SIGTERM: the batch in flight is finished, its offsets committed, and the consumer leaves the group.
- three batches overlap: while one is applied, the next is taken and decoded and the results of the one
  before wait for Kafka's acknowledgement; a batch's results are published only after the previous batch's
  are acknowledged (a SKU's results keep commit order, a retry included) and offsets are stored in batch
  order.
- a rebalance happens only inside the consumer's poll: what was acknowledged is committed before the
  partitions go; a batch still waiting for its acknowledgement, or gathered across the revocation, is
  redone by the new owner, its events duplicates that re-emit their stored results.
tests/e2e/test_processor_guarantees.py checks all of this against worker processes.

Batching: an idle processor applies what its consumer holds at once (a lone record, such as an agent's
reservation waiting on its answer, waits for no company); while a batch is in PostgreSQL the next one goes on
gathering, up to PROCESSOR_BATCH_WITHIN_S, so a busy pipeline batches itself.

Beside the loop: the ops server (processor.ops) and the reservation sweep, which turns every hold past its
expiry into a ``reservation_released`` event (reason ``expired``) on inventory.events, applied like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from aiohttp import web
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
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
from schemas.inventory_events import AnyInventoryEvent, ReservationReleased, reservation_event_id
from stocksync import logs
from stocksync.db import open_pool
from stocksync.kafka import AsyncProducer, DeliveryError, consumer_config, producer_config

log = logging.getLogger(__name__)

REFUSED = frozenset({"rejected", "unknown_sku", "invalid"})
REFUSED_NAMED = 3  # refused events a batch's log line names
GATHER_SLICE_S = 0.005  # how long one consume waits while the batch before is applied


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


Decoded = tuple[list[AnyInventoryEvent], list[tuple[bytes, str]]]
"""A batch's canonical events, and the records that are none (with why): processor.isolation.decode_all."""


async def commit_batch(
    pool: AsyncConnectionPool,
    raw_values: list[bytes] | Decoded,
    metrics: ProcessorMetrics,
    *,
    progress: Progress | None = None,
    skew: timedelta = DEFAULT_SKEW,
    allocation: AllocationConfig | None = None,
) -> list[Outgoing]:
    """Decode (unless given decoded) and apply a batch, isolating what cannot be applied, retried whole on
    any other error until it commits; return what to publish. Raises only CancelledError."""
    progress = progress or Progress()
    events, undecodable = raw_values if isinstance(raw_values, tuple) else decode_all(raw_values)
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
    """A committed batch's metrics, one increment per outcome, not per event; and one log line naming its
    refused events (the first REFUSED_NAMED of them; each one at DEBUG). In a flash sale thousands of sales a
    second are refused: a line each floods the logs (and showed as about a twelfth of the worker's samples
    in py-spy), while the ledger keeps every refusal with its reason (``stocksync audit``) and the metrics
    count them."""
    now = datetime.now(UTC)
    by_outcome = Counter(r.outcome for r in results)
    for outcome, n in by_outcome.items():
        metrics.events.labels(outcome).inc(n)
    if by_outcome["rejected"]:
        metrics.oversells_prevented.inc(by_outcome["rejected"])
    refused = [r for r in results if r.outcome in REFUSED]
    if refused:
        named = ", ".join(
            f"{r.event.event_id} of {r.event.tenant}/{r.event.sku} ({r.outcome})"
            for r in refused[:REFUSED_NAMED]
        )
        more = f" and {len(refused) - REFUSED_NAMED} more" if len(refused) > REFUSED_NAMED else ""
        counts = ", ".join(
            f"{n} {outcome}" for outcome, n in sorted(by_outcome.items()) if outcome in REFUSED
        )
        log.info("refused in this batch: %s; %s%s (each in the ledger with its reason)", counts, named, more)
        if log.isEnabledFor(logging.DEBUG):
            for r in refused:
                e = r.event
                with logs.bound(event_id=e.event_id, tenant=e.tenant, sku=e.sku, connection=e.connection_id):
                    log.debug("%s %s of %s/%s refused: %s", e.type, e.event_id, e.tenant, e.sku, r.outcome)
    for r in results:
        if r.outcome != "duplicate":
            metrics.lag_seconds.observe(max(0.0, (now - r.event.received_at).total_seconds()))


async def expired_holds(pool: AsyncConnectionPool, *, limit: int = 1_000) -> list[ReservationReleased]:
    """An expiry event for each hold past its ``expires_at`` still ``held`` (oldest first, at most `limit`);
    stamped now. Its id is the reservation's release id, so an agent's release racing it applies once."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT tenant, sku, reservation_id, quantity, connection_id FROM reservations "
            "WHERE state = 'held' AND expires_at <= now() ORDER BY expires_at LIMIT %s",
            (limit,),
        )
        rows = await cur.fetchall()
    now = datetime.now(UTC)
    return [
        ReservationReleased(
            event_id=reservation_event_id(rid, "release"),
            tenant=tenant,
            sku=sku,
            quantity=quantity,
            reservation_id=rid,
            reason="expired",
            connection_id=connection_id,
            occurred_at=now,
            received_at=now,
        )
        for tenant, sku, rid, quantity, connection_id in rows
    ]


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


@dataclass
class Processor:
    """The loop and what it owns: the consumer, the results producer, the database pool."""

    settings: ProcessorSettings
    consumer: Consumer
    producer: AsyncProducer
    pool: AsyncConnectionPool
    registry: CollectorRegistry
    metrics: ProcessorMetrics
    allocation: AllocationConfig
    progress: Progress = field(default_factory=Progress)
    assigned: set[tuple[str, int]] = field(default_factory=set)
    applying: bool = False  # a batch is in PostgreSQL: the next one may gather meanwhile (gather)

    async def apply(self, batch: Decoded) -> list[Outgoing]:
        """Apply one batch (retried until it commits); what it publishes."""
        self.applying = True
        try:
            return await commit_batch(
                self.pool,
                batch,
                self.metrics,
                progress=self.progress,
                skew=timedelta(seconds=self.settings.clock_skew_s),
                allocation=self.allocation,
            )
        finally:
            self.applying = False

    async def publish(self, records: list[Outgoing], after: asyncio.Future[None] | None) -> None:
        """Publish a committed batch's records once the batch before it is acknowledged (so the results
        of a SKU go out in commit order, a retry included); retried until Kafka acknowledges them all."""
        if after is not None:
            await after
        kafka = self.settings.kafka
        async for attempt in _retrying("publishing results to Kafka", self.progress, self.metrics):
            with attempt:
                await self.producer.send_all([(kafka.topic(o.topic), o.key, o.value) for o in records])
        self.progress.stalled_since = None
        self.metrics.stalled.set(0)

    async def gather(self) -> list[Message]:
        """Wait up to 0.2 s for a first record, then take what the consumer already holds, up to
        PROCESSOR_BATCH_MAX. While the batch before is being applied, go on gathering (in slices of
        GATHER_SLICE_S) until it is done or PROCESSOR_BATCH_WITHIN_S has passed: a busy pipeline batches
        itself (what arrives during one apply joins the next batch), an idle one applies a lone record at
        once instead of waiting for company (an agent's reservation waits on that answer)."""
        first = await asyncio.to_thread(self.consumer.poll, 0.2)
        if first is None:
            return []
        messages = [first]
        deadline = time.monotonic() + self.settings.batch_within_s
        while len(messages) < self.settings.batch_max:
            left = deadline - time.monotonic()
            wait = min(GATHER_SLICE_S, left) if self.applying and left > 0 else 0.0
            got = await asyncio.to_thread(
                self.consumer.consume, self.settings.batch_max - len(messages), wait
            )
            messages += got
            if not got and wait == 0.0:
                break
        readable = []
        for m in messages:
            if m.error() is None:
                readable.append(m)
            else:  # the consumer's own trouble (a broker away): librdkafka retries by itself
                log.warning("consumer error on %s: %s", m.topic(), m.error())
        return readable

    async def take(self) -> tuple[list[Message], Decoded]:
        """The next batch's records, decoded."""
        messages = await self.gather()
        return messages, decode_all([m.value() or b"" for m in messages])

    def store(self, messages: list[Message]) -> None:
        """Store the offsets after `messages` (applied and published) for the next commit."""
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if topic is not None and partition is not None and offset is not None:
                last[(topic, partition)] = offset
        for (topic, partition), offset in last.items():
            try:
                self.consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset + 1)])
            except KafkaException as exc:  # revoked meanwhile: the new owner redoes them as duplicates
                log.info("offset of %s[%d] not stored (%s): no longer assigned here", topic, partition, exc)

    def subscribe(self) -> None:
        def on_assign(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned.update((p.topic, p.partition) for p in partitions)
            log.info("assigned %s", sorted(p.partition for p in partitions))

        def on_revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            # Inside poll(): no batch is in flight. Hand over what was applied.
            with contextlib.suppress(KafkaException):  # nothing stored since the last commit
                consumer.commit(asynchronous=False)
            self.assigned.difference_update((p.topic, p.partition) for p in partitions)
            log.info("revoked %s", sorted(p.partition for p in partitions))

        def on_lost(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.assigned.difference_update((p.topic, p.partition) for p in partitions)
            log.warning(
                "lost %s (the group moved on without this worker)", sorted(p.partition for p in partitions)
            )

        topic = self.settings.kafka.topic(inventory_events.TOPIC)
        self.consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, apply and publish until `stop`; the batches in flight are always finished.

        Three batches overlap: while one is applied in PostgreSQL, the next is taken from the consumer and
        decoded, and the results of the one before wait for Kafka's acknowledgement. A batch's results are
        published after the previous batch's are acknowledged, its offsets stored after its own are."""
        self.subscribe()
        pending: tuple[list[Message], asyncio.Future[None]] | None = None
        upcoming = asyncio.ensure_future(self.take())
        try:
            while not stop.is_set():
                messages, batch = await upcoming
                upcoming = asyncio.ensure_future(self.take())
                if not messages:  # idle: settle the last batch now rather than with the next one
                    await self._settle(pending)
                    pending = None
                    continue
                # Shielded: a cancellation lets the started batch commit and publish before it is stored.
                step = asyncio.ensure_future(self._step(batch, pending[1] if pending else None))
                try:
                    publishing = await asyncio.shield(step)
                except asyncio.CancelledError:
                    publishing = await step
                    await self._settle(pending)
                    pending = None
                    await self._settle((messages, publishing))
                    raise
                await self._settle(pending)
                pending = (messages, publishing)
        finally:
            # Taken but not applied: never stored, so delivered again. Waited for, not cancelled: the consumer
            # must not be closed while a poll of it runs on another thread.
            with contextlib.suppress(Exception):
                await asyncio.shield(upcoming)
            await asyncio.shield(self._settle(pending))

    async def _step(self, batch: Decoded, after: asyncio.Future[None] | None) -> asyncio.Future[None]:
        records = await self.apply(batch)
        return asyncio.ensure_future(self.publish(records, after))

    async def _settle(self, pending: tuple[list[Message], asyncio.Future[None]] | None) -> None:
        """Wait until a batch's results are acknowledged, then store its offsets."""
        if pending is not None:
            messages, publishing = pending
            await asyncio.shield(publishing)
            self.store(messages)

    async def sweep(self) -> None:
        """Release holds past their expiry, every PROCESSOR_RESERVATION_SWEEP_S: each becomes an expiry event
        on inventory.events, applied like any other. A hold swept recently is not published again until
        ten sweeps later (the event is probably in flight; a second copy would only be a duplicate)."""
        settings = self.settings
        small = settings.postgres.model_copy(update={"pool_min_size": 1, "pool_max_size": 1})
        recent: dict[str, float] = {}
        async with open_pool(small, name="processor-sweep") as pool:
            while True:
                try:
                    due = await expired_holds(pool)
                    now = time.monotonic()
                    recent = {
                        rid: at for rid, at in recent.items() if now - at < 10 * settings.reservation_sweep_s
                    }
                    fresh = [e for e in due if e.reservation_id not in recent]
                    if fresh:
                        topic = settings.kafka.topic(inventory_events.TOPIC)
                        await self.producer.send_all(
                            [(topic, inventory_events.key(e), inventory_events.encode(e)) for e in fresh]
                        )
                        recent.update((e.reservation_id, now) for e in fresh)
                        log.info("reservations: %d hold(s) past their expiry released", len(fresh))
                except (psycopg.Error, OSError, DeliveryError) as exc:  # the next sweep tries again
                    log.warning(
                        "reservation sweep failed, retrying in %.1f s: %s", settings.reservation_sweep_s, exc
                    )
                await asyncio.sleep(settings.reservation_sweep_s)  # the sweep's schedule

    async def ops(self) -> None:
        """The ops HTTP server and the processed_events retention, on a small pool of their own."""
        settings = self.settings
        small = settings.postgres.model_copy(update={"pool_min_size": 1, "pool_max_size": 2})
        async with open_pool(small, name="processor-ops") as pool:
            surface = ops_app(
                self.registry,
                pool,
                metrics=self.metrics,
                kafka=settings.kafka,
                group=settings.app_id,
                assigned=lambda: bool(self.assigned),
                stalled=self.progress.problem,
            )
            runner = web.AppRunner(surface, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, settings.ops_host, settings.ops_port).start()
            log.info("processor ops server on %s", runner.addresses)
            try:
                while True:
                    deleted = await prune_processed(pool, timedelta(days=settings.retention_days))
                    self.metrics.retention_deleted.inc(deleted)
                    if deleted:
                        log.info("retention: pruned %d processed_events rows", deleted)
                    await asyncio.sleep(settings.retention_interval_s)  # the retention schedule
            finally:
                await runner.cleanup()


@asynccontextmanager
async def build_processor(
    settings: ProcessorSettings,
    *,
    registry: CollectorRegistry | None = None,
    producer: AsyncProducer | None = None,
    pool: AsyncConnectionPool | None = None,
    connections: ConnectionRegistry | None = None,
) -> AsyncIterator[Processor]:
    """The processor: the only place that knows the real consumer, results producer and PostgreSQL pool
    (pass a producer or pool in to share it; what is passed in is not closed here)."""
    kafka = settings.kafka
    overrides = {
        "session.timeout.ms": int(settings.session_timeout_s * 1000),
        "heartbeat.interval.ms": int(min(3.0, settings.session_timeout_s / 3) * 1000),
    }
    async with AsyncExitStack() as stack:
        if producer is None:
            # Results go out through librdkafka (idempotent, acks=all).
            producer = AsyncProducer(producer_config(kafka))
            stack.push_async_callback(producer.close)
        if pool is None:
            pool = await stack.enter_async_context(open_pool(settings.postgres, name="processor"))
        consumer = Consumer(consumer_config(kafka, settings.app_id, **overrides))
        # Closed last: commits the stored offsets and leaves the group.
        stack.push_async_callback(asyncio.to_thread, consumer.close)
        registry = registry or CollectorRegistry()
        yield Processor(
            settings,
            consumer,
            producer,
            pool,
            registry,
            ProcessorMetrics(registry),
            AllocationConfig.of(connections or ConnectionRegistry([]), settings.default_policy),
        )


async def run_processor(
    settings: ProcessorSettings, connections: ConnectionRegistry, stop: asyncio.Event
) -> None:
    """Build the processor and run it, with its ops server, until `stop`."""
    async with build_processor(settings, connections=connections) as processor:
        side = [asyncio.create_task(processor.ops()), asyncio.create_task(processor.sweep())]
        try:
            await processor.run(stop)
        finally:
            for task in side:
                task.cancel()
            for task in side:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
