"""One reconcile run: first learn (backfill the orders the webhooks missed), then correct (make every channel
show what the master allows).

Backfill, per connection: list the channel's orders since the connection's checkpoint (less an overlap), keep
the events the processor has not seen, publish them to ``inventory.events`` as the gateway does (same key,
same ids: an order applied meanwhile is a duplicate there) and refused orders to ``ingest.quarantine``; the
checkpoint moves to a page's high water only once Kafka acknowledged that page.

Correct: once the processor has applied every backfilled event (bounded wait), read each connection's counts
through its outbound client (in batches of the channel's ``max_batch``, each call within the connection's
budget), compare with the master's allowance (safety buffer, allocation, paused after a refused sale), and
write the differences back. Each write is version-guarded: the master's version is read again just before it,
and a SKU whose version moved is left to the fan-out, which is already carrying the newer count. Single writes
are compare-and-set against the count read where the channel supports it (Shopify).

A connection whose channel fails (ChannelError, timeouts) fails alone: it is reported, its checkpoint stays at
what was published, and the other connections carry on. ``dry_run`` lists and compares but publishes, writes
and moves nothing; its expected counts assume the backfill it would have published.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
from psycopg import AsyncConnection
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay

from channels.connection import Connection, channel_quantity
from channels.errors import ChannelError, CompareMismatch
from channels.orders import OrderBatch, order_source
from channels.outbound import InventoryClient, outbound
from channels.ratelimit import TokenBucket
from reconciler import store
from reconciler.metrics import ReconcilerMetrics
from reconciler.report import (
    CORRECTED,
    EDITED_ON_CHANNEL,
    FANOUT_FIXED,
    MISSED_ORDER,
    NOT_CORRECTED,
    NOT_LISTED,
    SKIPPED_CHANNEL_MOVED,
    SKIPPED_MASTER_MOVED,
    SKIPPED_NOT_LISTED,
    UNKNOWN,
    WOULD_CORRECT,
    ConnectionReport,
    Drift,
    RunReport,
    default_report_path,
)
from reconciler.settings import ReconcilerSettings
from schemas import inventory_events, quarantine
from schemas.base import partition_key
from schemas.inventory_events import OrderCancelled, OrderPlaced
from stocksync.kafka import AsyncProducer, DeliveryError, producer_config

log = logging.getLogger(__name__)

T = TypeVar("T")
ChannelFailure = (ChannelError, aiohttp.ClientError, TimeoutError)


class PublishError(RuntimeError):
    """Kafka did not acknowledge a page of backfilled events: the checkpoint stays where it was."""


class Progress(Protocol):
    def phase(self, connection_id: str, text: str, total: int | None = None) -> None: ...

    def advance(self, connection_id: str, n: int = 1) -> None: ...


class _Silent:
    def phase(self, connection_id: str, text: str, total: int | None = None) -> None:
        pass

    def advance(self, connection_id: str, n: int = 1) -> None:
        pass


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, CompareMismatch):
        return False
    if isinstance(exc, ChannelError):
        return exc.retryable
    return isinstance(exc, aiohttp.ClientError | TimeoutError)


def _backoff(state: RetryCallState) -> float:
    """The channel's Retry-After when it gave one, else exponential backoff with full jitter (cap 5 s)."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ChannelError) and exc.retry_after_s is not None:
        return min(exc.retry_after_s, 30.0)
    return random.uniform(0, min(5.0, 0.2 * 2**state.attempt_number))  # noqa: S311 - jitter, not secrets


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


@dataclass
class _Learned:
    """What the backfill of one connection taught, for the correction phase."""

    pages: list[OrderBatch] = field(default_factory=list)  # listed pages, only the events not yet seen
    published: list[str] = field(default_factory=list)
    net_sold: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # new events only, per SKU
    shown_before: dict[str, int] | None = None  # the channel's counts before the backfill was published
    error: BaseException | None = None


class Reconciler:
    """Runs reconciliations for a set of connections; one run at a time across every process (a lock)."""

    def __init__(
        self,
        settings: ReconcilerSettings,
        connections: Sequence[Connection],
        *,
        metrics: ReconcilerMetrics,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.connections = [c for c in connections if c.enabled]
        self.metrics = metrics
        self.progress: Progress = progress or _Silent()

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=_backoff,
            stop=stop_after_delay(self.settings.channel_retry_s),
            reraise=True,
        )

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """One client operation, transient failures retried for a while (the client charges the connection's
        budget for every HTTP request it makes)."""
        async for attempt in self._retrying():
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover

    async def run(self, *, dry_run: bool = False, report_path: Path | None = None) -> RunReport:
        """Reconcile every connection; write the JSON report; raise store.AlreadyRunning if a run is on."""
        started = datetime.now(UTC)
        run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        report = RunReport(run_id=run_id, started_at=started, dry_run=dry_run)
        clock = time.perf_counter()
        url = self.settings.postgres.database_url
        async with store.run_lock(url):
            db = await AsyncConnection.connect(url, autocommit=True)
            producer = None if dry_run else AsyncProducer(producer_config(self.settings.kafka))
            timeout = aiohttp.ClientTimeout(total=self.settings.http_timeout_s)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    await self._reconcile(report, db, session, producer)
            finally:
                if producer is not None:
                    await producer.close(timeout_s=self.settings.publish_timeout_s)
                report.finished_at = datetime.now(UTC)
                try:
                    await store.record_run(
                        db,
                        run_id,
                        started,
                        report.finished_at,
                        dry_run=dry_run,
                        ok=report.ok,
                        totals=report.totals(),
                    )
                finally:
                    await db.close()
        duration = time.perf_counter() - clock
        if not dry_run:
            self.metrics.duration.observe(duration)
            if report.ok:
                self.metrics.last_success.set(time.time())
        report.write(report_path or default_report_path(self.settings.report_dir, started))
        log.info(
            "reconcile run %s%s finished in %.1f s: %s%s",
            run_id,
            " (dry run)" if dry_run else "",
            duration,
            report.totals(),
            f"; {report.error}" if report.error else "",
        )
        return report

    async def _reconcile(
        self,
        report: RunReport,
        db: AsyncConnection[Any],
        session: aiohttp.ClientSession,
        producer: AsyncProducer | None,
    ) -> None:
        reps = [
            ConnectionReport(connection_id=c.id, channel=c.channel, tenant=c.tenant) for c in self.connections
        ]
        report.connections = reps
        budgets = {c.id: outbound(c.channel).budget(c) for c in self.connections}
        pairs = list(zip(self.connections, reps, strict=True))
        learned = await asyncio.gather(
            *(self._backfill(report, c, rep, db, session, budgets[c.id]) for c, rep in pairs)
        )
        if producer is not None:
            if any(page.events for got in learned for page in got.pages):
                # Something will change: note what every channel shows before it does.
                await asyncio.gather(
                    *(
                        self._snapshot(c, session, budgets[c.id], got)
                        for (c, _rep), got in zip(pairs, learned, strict=True)
                    )
                )
            await asyncio.gather(
                *(
                    self._publish_backfill(report, c, rep, db, producer, got)
                    for (c, rep), got in zip(pairs, learned, strict=True)
                )
            )
        else:
            for (c, rep), got in zip(pairs, learned, strict=True):
                if got.error is not None:
                    self._fail(c, rep, "backfill", got.error)
        # What the master learns in this run, per (tenant, SKU): the cause of drifts there, and in a dry run
        # the change the expected counts assume.
        net: dict[tuple[str, str], int] = defaultdict(int)
        for c, got in zip(self.connections, learned, strict=True):
            for sku, sold in got.net_sold.items():
                net[(c.tenant, sku)] += sold
        published = [i for got in learned for i in got.published]
        if published:
            for c in self.connections:
                self.progress.phase(c.id, "waiting for the processor to apply the backfill")
            waited = time.monotonic()
            missing = await self._wait_applied(db, published)
            report.applied_wait_s = time.monotonic() - waited
            if missing:
                report.error = (
                    f"the processor did not apply {missing} of {len(published)} backfilled events within "
                    f"{self.settings.apply_timeout_s:.0f} s (RECONCILER_APPLY_TIMEOUT_S): is `python -m "
                    "processor` running and caught up? Nothing was corrected (the master has not learned "
                    "yet); the events are stored, so the next run corrects"
                )
                log.error("%s", report.error)
                for c, rep in zip(self.connections, reps, strict=True):
                    if rep.failure is None:
                        self.progress.phase(c.id, "[red]not corrected: processor behind[/]")
                return
        await asyncio.gather(
            *(
                self._correct(report, c, rep, db, session, budgets[c.id], net, got.shown_before)
                for (c, rep), got in zip(pairs, learned, strict=True)
                if rep.failure is None
            )
        )

    # ---- backfill ------------------------------------------------------------------------------------

    async def _backfill(
        self,
        report: RunReport,
        conn: Connection,
        rep: ConnectionReport,
        db: AsyncConnection[Any],
        session: aiohttp.ClientSession,
        budget: TokenBucket,
    ) -> _Learned:
        """List the connection's orders and sort out what the pipeline has not seen; publish nothing yet."""
        learned = _Learned()
        try:
            source = order_source(conn.channel)
        except ValueError:
            rep.backfill = "unavailable"
            log.warning(
                "connection %s: channel %s has no order list; its missed orders cannot be backfilled, "
                "corrections only",
                conn.id,
                conn.channel,
            )
            return learned
        self.progress.phase(conn.id, "listing orders")
        rep.checkpoint_before = rep.checkpoint_after = await store.checkpoint(db, conn.id)
        if rep.checkpoint_before is not None:
            since = rep.checkpoint_before - timedelta(seconds=self.settings.overlap_s)
        else:
            since = report.started_at - timedelta(hours=self.settings.lookback_h)
        rep.listed_since = since
        seen: set[str] = set()
        orders: set[str] = set()
        new_orders: set[str] = set()
        position = since
        try:
            async for attempt in self._retrying():
                with attempt:
                    # A retry lists again from the last page's high water; what is re-listed is skipped.
                    pages = source(session, conn, position, budget=budget, received_at=report.started_at)
                    async for page in pages:
                        events = [e for e in page.events if e.event_id not in seen]
                        seen.update(e.event_id for e in events)
                        known = await store.known_ids(db, (e.event_id for e in events))
                        new = [e for e in events if e.event_id not in known]
                        learned.pages.append(OrderBatch(new, page.rejected, page.high_water))
                        rep.events_listed += len(events)
                        rep.events_duplicate += len(events) - len(new)
                        rep.rejected += len(page.rejected)
                        orders.update(e.order_id for e in events)
                        new_orders.update(e.order_id for e in new)
                        for e in new:
                            learned.net_sold[e.sku] += (
                                e.quantity if isinstance(e, OrderPlaced) else -e.quantity
                            )
                        if page.high_water is not None:
                            position = max(position, page.high_water)
                        self.progress.advance(conn.id)
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the others
            learned.error = exc  # what was listed is still published; then the connection fails
        rep.orders_listed, rep.orders_backfilled = len(orders), len(new_orders)
        return learned

    async def _publish_backfill(
        self,
        report: RunReport,
        conn: Connection,
        rep: ConnectionReport,
        db: AsyncConnection[Any],
        producer: AsyncProducer,
        learned: _Learned,
    ) -> None:
        """Publish the listed pages in order; the checkpoint follows each acknowledged page."""
        try:
            for page in learned.pages:
                await self._publish(report, conn, producer, page.events, page.rejected)
                learned.published += [e.event_id for e in page.events]
                rep.events_published += len(page.events)
                if page.high_water is not None:
                    rep.checkpoint_after = await store.move_checkpoint(db, conn.id, page.high_water)
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the others
            learned.error = learned.error or exc
        if learned.error is not None:
            self._fail(conn, rep, "backfill", learned.error)
        self.metrics.backfilled_orders.labels(conn.channel).inc(rep.orders_backfilled)

    async def _read(self, conn: Connection, client: InventoryClient, skus: list[str]) -> dict[str, int]:
        """What the channel shows for `skus`, in batches of its max_batch."""
        step = max(1, outbound(conn.channel).max_batch)
        shows: dict[str, int] = {}
        for i in range(0, len(skus), step):
            part = skus[i : i + step]
            shows.update(await self._call(partial(client.get_available, part)))
            self.progress.advance(conn.id, len(part))
        return shows

    async def _snapshot(
        self, conn: Connection, session: aiohttp.ClientSession, budget: TokenBucket, learned: _Learned
    ) -> None:
        """What the channel shows before the backfill is published: the drift the missed orders caused, even
        where the fan-out fixes it (from the backfilled events) before the correction phase looks."""
        self.progress.phase(conn.id, "reading the channel before the backfill", total=len(conn.listings))
        try:
            learned.shown_before = await self._read(
                conn, outbound(conn.channel).client(session, conn, budget=budget), list(conn.listings)
            )
        except ChannelFailure as exc:
            log.warning("connection %s: could not read the counts before the backfill: %s", conn.id, exc)

    async def _publish(
        self,
        report: RunReport,
        conn: Connection,
        producer: AsyncProducer,
        events: list[OrderPlaced | OrderCancelled],
        rejected: list[tuple[bytes, str]],
    ) -> None:
        """Publish a page as the gateway does; return only once Kafka acknowledged every record."""
        kafka = self.settings.kafka
        sends = [
            producer.send(
                kafka.topic(inventory_events.TOPIC),
                inventory_events.encode(e),
                key=partition_key(e.tenant, e.sku),
                headers={"channel": conn.channel, "type": e.type, "source": "reconciler"},
            )
            for e in events
        ]
        for body, reason in rejected:
            record = quarantine.WebhookQuarantined(
                connection_id=conn.id,
                channel=conn.channel,
                reason=f"order list (reconciler): {reason}",
                headers={"source": "reconciler", "run": report.run_id},
                body_b64=base64.b64encode(body).decode(),
                received_at=report.started_at,
            )
            sends.append(
                producer.send(
                    kafka.topic(quarantine.TOPIC),
                    record.model_dump_json().encode(),
                    key=conn.id.encode(),
                    headers={"channel": conn.channel, "source": "reconciler"},
                )
            )
        if not sends:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*sends), self.settings.publish_timeout_s)
        except (TimeoutError, DeliveryError) as exc:
            raise PublishError(
                f"Kafka did not acknowledge the backfilled events of connection {conn.id!r} ({exc!r}); "
                "the checkpoint stays before them, so the next run publishes them again"
            ) from exc

    async def _wait_applied(self, db: AsyncConnection[Any], ids: list[str]) -> int:
        """Wait until the processor handled every id or the deadline passed; return those missing."""
        wanted = set(ids)
        deadline = time.monotonic() + self.settings.apply_timeout_s
        while True:
            missing = len(wanted - await store.known_ids(db, wanted))
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.1)  # polling the database, bounded by the deadline

    # ---- correct -------------------------------------------------------------------------------------

    async def _correct(
        self,
        report: RunReport,
        conn: Connection,
        rep: ConnectionReport,
        db: AsyncConnection[Any],
        session: aiohttp.ClientSession,
        budget: TokenBucket,
        net: dict[tuple[str, str], int],
        shown_before: dict[str, int] | None,
    ) -> None:
        spec = outbound(conn.channel)
        client = spec.client(session, conn, budget=budget)
        skus = list(conn.listings)
        rep.skus_checked = len(skus)
        try:
            self.progress.phase(conn.id, "reading the channel", total=len(skus))
            shows = await self._read(conn, client, skus)
            master = await store.master_rows(db, conn.tenant, skus)
            rep.drifts = self._drifts(report, conn, skus, shows, master, net, shown_before or {})
            if not report.dry_run:
                self.metrics.drift.labels(conn.channel).inc(len(rep.drifts))
            if report.dry_run:
                for d in rep.drifts:
                    d.action = d.action or (SKIPPED_NOT_LISTED if d.channel_value is None else WOULD_CORRECT)
                self.progress.phase(conn.id, "[green]compared (dry run)[/]")
                return
            self.progress.phase(conn.id, "correcting", total=len(rep.drifts) or None)
            await self._write(report, conn, rep, db, client, spec.max_batch)
            self.metrics.corrected.labels(conn.channel).inc(rep.drifts_written)
            self.progress.phase(conn.id, "[green]done[/]")
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the others
            self._fail(conn, rep, "correct", exc)
            for d in rep.drifts:
                d.action = d.action or NOT_CORRECTED

    def _drifts(
        self,
        report: RunReport,
        conn: Connection,
        skus: list[str],
        shows: dict[str, int],
        master: dict[str, store.MasterRow],
        net: dict[tuple[str, str], int],
        shown_before: dict[str, int],
    ) -> list[Drift]:
        drifts: list[Drift] = []
        grace = timedelta(seconds=self.settings.fanout_grace_s)
        for sku in skus:
            row = master.get(sku)
            if row is None:
                continue  # not in the master record: nothing says what the channel should show
            learning = (conn.tenant, sku) in net
            available = row.available
            if report.dry_run and learning:
                available = max(0, available - net[(conn.tenant, sku)])  # as if the backfill were applied
            paused = row.paused and self.settings.pause_on_rejection and not (report.dry_run and learning)
            expected = (
                0
                if paused
                else channel_quantity(available, buffer=conn.safety_buffer, allocation=conn.allocation)
            )
            value = shows.get(sku)
            if value == expected:
                before = shown_before.get(sku)
                if learning and before is not None and before != expected:
                    # Wrong before the run; right now because the fan-out delivered the backfilled change.
                    drift = Drift(sku, before, expected, available, row.version, MISSED_ORDER, FANOUT_FIXED)
                    drifts.append(drift)
                continue
            if value is None:
                cause = NOT_LISTED
            elif learning:
                cause = MISSED_ORDER
            elif report.started_at - row.updated_at > grace:
                cause = EDITED_ON_CHANNEL
            else:
                cause = UNKNOWN  # the master changed moments ago: the fan-out may still be on its way
            drifts.append(Drift(sku, value, expected, available, row.version, cause))
        return drifts

    async def _write(
        self,
        report: RunReport,
        conn: Connection,
        rep: ConnectionReport,
        db: AsyncConnection[Any],
        client: InventoryClient,
        max_batch: int,
    ) -> None:
        reference = f"stocksync://{conn.tenant}/reconcile/{report.run_id}"
        todo: list[Drift] = []
        for d in rep.drifts:
            if d.action:
                continue  # already settled (by the fan-out)
            if d.channel_value is None:
                d.action = SKIPPED_NOT_LISTED
            else:
                todo.append(d)
        single = max_batch == 1 or len(todo) == 1
        step = 1 if single else max_batch
        for i in range(0, len(todo), step):
            part = await self._still_current(db, conn, todo[i : i + step])
            if not part:
                continue
            if single:
                d = part[0]
                try:
                    await self._call(
                        partial(
                            client.set_available,
                            d.sku,
                            d.expected,
                            change_from=d.channel_value,
                            reference=reference,
                        ),
                    )
                except CompareMismatch:
                    d.action = SKIPPED_CHANNEL_MOVED
                    continue
            else:
                items = [(d.sku, d.expected) for d in part]
                await self._call(partial(client.set_many, items, reference=reference))
            for d in part:
                d.action = CORRECTED
            self.progress.advance(conn.id, len(part))

    async def _still_current(
        self, db: AsyncConnection[Any], conn: Connection, part: list[Drift]
    ) -> list[Drift]:
        """The version guard: the drifts whose SKU's master version has not moved since it was compared."""
        now = await store.versions(db, conn.tenant, [d.sku for d in part])
        current = []
        for d in part:
            if now.get(d.sku) == d.master_version:
                current.append(d)
            else:
                d.action = SKIPPED_MASTER_MOVED
        return current

    def _fail(self, conn: Connection, rep: ConnectionReport, phase: str, exc: BaseException) -> None:
        if isinstance(exc, (*ChannelFailure, PublishError)):
            log.error("connection %s failed in %s: %s", conn.id, phase, exc)
        else:
            log.exception("connection %s failed in %s with an unexpected error", conn.id, phase)
        rep.failure, rep.failed_in = _describe(exc), phase
        if phase == "backfill":
            rep.backfill = "failed"
        self.metrics.failures.labels(conn.channel).inc()
        self.progress.phase(conn.id, f"[red]failed in {phase}[/]")
