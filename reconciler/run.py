"""One reconcile run, orchestrated: first learn (backfill the orders the webhooks missed:
reconciler/backfill.py), then correct (classify the drift: reconciler/drift.py; write it back:
reconciler/correction.py).

Once the processor has applied every backfilled event (bounded wait), each connection's counts are read,
classified against the master's allowance and written back. A connection whose channel fails fails alone: it
is reported, its checkpoint stays at what was published, and the others carry on. ``dry_run`` lists and
compares but publishes, writes and moves nothing; its expected counts assume the backfill it would publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from psycopg import AsyncConnection

from channels.connection import Connection
from channels.errors import ChannelError
from channels.ratelimit import TokenBucket
from channels.registry import spec as channel_spec
from reconciler import store
from reconciler.backfill import Learned, PublishError, list_missed, publish_learned, wait_applied
from reconciler.correction import read_counts, write_back
from reconciler.drift import Rules, classify
from reconciler.metrics import ReconcilerMetrics
from reconciler.progress import COMPARED, DONE, FAILED, PROCESSOR_BEHIND, Progress, Silent
from reconciler.report import NOT_CORRECTED, ConnectionReport, RunReport, default_report_path
from reconciler.settings import ReconcilerSettings
from stocksync.kafka import AsyncProducer
from stocksync.retry import RetryPolicy

log = logging.getLogger(__name__)

ChannelFailure = (ChannelError, aiohttp.ClientError, TimeoutError)
Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]


def retry_policy(settings: ReconcilerSettings) -> RetryPolicy:
    """RECONCILER_CHANNEL_RETRY_S; backoff capped at 5 s, a Retry-After at 30 s."""
    return RetryPolicy(deadline_s=settings.channel_retry_s, backoff_cap_s=5.0, retry_after_cap_s=30.0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc) or repr(exc)}"


class Reconciler:
    """Runs reconciliations for a set of connections; one run at a time across every process (a lock).
    Built by reconciler.app.build_reconciler, which hands in the database, the HTTP session and the producer
    (None: dry runs only)."""

    def __init__(
        self,
        settings: ReconcilerSettings,
        connections: Sequence[Connection],
        *,
        metrics: ReconcilerMetrics,
        connect: Connect,
        session: aiohttp.ClientSession,
        producer: AsyncProducer | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.connections = [c for c in connections if c.enabled]
        self.metrics = metrics
        self.connect, self.session, self.producer = connect, session, producer
        self.progress: Progress = progress or Silent()
        self.policy = retry_policy(settings)

    async def run(self, *, dry_run: bool = False, report_path: Path | None = None) -> RunReport:
        """Reconcile every connection; write the JSON report; raise store.AlreadyRunning if a run is on."""
        if not dry_run and self.producer is None:
            raise ValueError(
                "a reconcile run that publishes needs a producer (built without one: dry runs only)"
            )
        started = datetime.now(UTC)
        run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        report = RunReport(run_id=run_id, started_at=started, dry_run=dry_run)
        clock = time.perf_counter()
        async with store.run_lock(self.settings.postgres.database_url), self.connect() as db:
            try:
                await self._reconcile(report, db, None if dry_run else self.producer)
            finally:
                report.finished_at = datetime.now(UTC)
                await store.record_run(
                    db,
                    run_id,
                    started,
                    report.finished_at,
                    dry_run=dry_run,
                    ok=report.ok,
                    totals=report.totals(),
                )
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
        self, report: RunReport, db: AsyncConnection[Any], producer: AsyncProducer | None
    ) -> None:
        reps = [
            ConnectionReport(connection_id=c.id, channel=c.channel, tenant=c.tenant) for c in self.connections
        ]
        report.connections = reps
        budgets = {c.id: channel_spec(c.channel).budget(c) for c in self.connections}
        pairs = list(zip(self.connections, reps, strict=True))
        learned = await asyncio.gather(
            *(self._backfill(report, c, rep, db, budgets[c.id]) for c, rep in pairs)
        )
        pairs_learned = list(zip(pairs, learned, strict=True))
        if producer is not None:
            if any(page.events for got in learned for page in got.pages):
                # Something will change: note what every channel shows before it does.
                await asyncio.gather(
                    *(self._snapshot(c, budgets[c.id], got) for (c, _rep), got in pairs_learned)
                )
            await asyncio.gather(
                *(
                    publish_learned(
                        c,
                        rep,
                        got,
                        db=db,
                        producer=producer,
                        settings=self.settings,
                        run_id=report.run_id,
                        started_at=report.started_at,
                    )
                    for (c, rep), got in pairs_learned
                )
            )
            for c, rep in pairs:
                self.metrics.backfilled_orders.labels(c.channel).inc(rep.orders_backfilled)
        for (c, rep), got in pairs_learned:
            if got.error is not None:
                self._fail(c, rep, "backfill", got.error)
        # What the master learns in this run, per (tenant, SKU): the cause of drifts there, and in a dry run
        # the change the expected counts assume.
        net: dict[tuple[str, str], int] = defaultdict(int)
        for c, got in zip(self.connections, learned, strict=True):
            for sku, sold in got.net_sold.items():
                net[(c.tenant, sku)] += sold
        published = [i for got in learned for i in got.published]
        if published and not await self._applied(report, db, published):
            return
        await asyncio.gather(
            *(
                self._correct(report, c, rep, db, budgets[c.id], net, got.shown_before)
                for (c, rep), got in pairs_learned
                if rep.failure is None
            )
        )

    async def _backfill(
        self,
        report: RunReport,
        conn: Connection,
        rep: ConnectionReport,
        db: AsyncConnection[Any],
        budget: TokenBucket,
    ) -> Learned:
        try:
            source = channel_spec(conn.channel).list_orders
        except ValueError:
            rep.backfill = "unavailable"
            log.warning(
                "connection %s: channel %s has no order list; its missed orders cannot be backfilled, "
                "corrections only",
                conn.id,
                conn.channel,
            )
            return Learned()
        return await list_missed(
            conn,
            rep,
            source,
            db=db,
            session=self.session,
            budget=budget,
            settings=self.settings,
            policy=self.policy,
            started_at=report.started_at,
            progress=self.progress,
        )

    async def _snapshot(self, conn: Connection, budget: TokenBucket, learned: Learned) -> None:
        """What the channel shows before the backfill is published: the drift the missed orders caused, even
        where the fan-out fixes it (from the backfilled events) before the correction phase looks."""
        self.progress.phase(conn.id, "reading the channel before the backfill", total=len(conn.listings))
        spec = channel_spec(conn.channel)
        try:
            learned.shown_before = await read_counts(
                conn,
                spec.client(self.session, conn, budget=budget),
                list(conn.listings),
                max_batch=spec.max_batch,
                policy=self.policy,
                progress=self.progress,
            )
        except ChannelFailure as exc:
            log.warning("connection %s: could not read the counts before the backfill: %s", conn.id, exc)

    async def _applied(self, report: RunReport, db: AsyncConnection[Any], published: list[str]) -> bool:
        """Wait for the processor to apply the backfill; False (and the run's error) if it did not in time."""
        for c in self.connections:
            self.progress.phase(c.id, "waiting for the processor to apply the backfill")
        waited = time.monotonic()
        missing = await wait_applied(db, published, self.settings.apply_timeout_s)
        report.applied_wait_s = time.monotonic() - waited
        if not missing:
            return True
        report.error = (
            f"the processor did not apply {missing} of {len(published)} backfilled events within "
            f"{self.settings.apply_timeout_s:.0f} s (RECONCILER_APPLY_TIMEOUT_S): is `python -m "
            "processor` running and caught up? Nothing was corrected (the master has not learned "
            "yet); the events are stored, so the next run corrects"
        )
        log.error("%s", report.error)
        for c, rep in zip(self.connections, report.connections, strict=True):
            if rep.failure is None:
                self.progress.phase(c.id, PROCESSOR_BEHIND)
        return False

    async def _correct(
        self,
        report: RunReport,
        conn: Connection,
        rep: ConnectionReport,
        db: AsyncConnection[Any],
        budget: TokenBucket,
        net: dict[tuple[str, str], int],
        shown_before: dict[str, int] | None,
    ) -> None:
        spec = channel_spec(conn.channel)
        client = spec.client(self.session, conn, budget=budget)
        skus = list(conn.listings)
        rep.skus_checked = len(skus)
        try:
            self.progress.phase(conn.id, "reading the channel", total=len(skus))
            shows = await read_counts(
                conn, client, skus, max_batch=spec.max_batch, policy=self.policy, progress=self.progress
            )
            master = await store.master_rows(db, conn.tenant, skus)
            rules = Rules(
                started_at=report.started_at,
                fanout_grace=timedelta(seconds=self.settings.fanout_grace_s),
                pause_on_rejection=self.settings.pause_on_rejection,
                dry_run=report.dry_run,
            )
            learned = {sku: n for (tenant, sku), n in net.items() if tenant == conn.tenant}
            rep.drifts = classify(
                conn, skus, shows, master, rules, learned=learned, shown_before=shown_before or {}
            )
            if report.dry_run:
                self.progress.phase(conn.id, COMPARED)
                return
            self.metrics.drift.labels(conn.channel).inc(len(rep.drifts))
            self.progress.phase(conn.id, "correcting", total=len(rep.drifts) or None)
            await write_back(
                conn,
                rep.drifts,
                db=db,
                client=client,
                max_batch=spec.max_batch,
                reference=f"stocksync://{conn.tenant}/reconcile/{report.run_id}",
                policy=self.policy,
                progress=self.progress,
            )
            self.metrics.corrected.labels(conn.channel).inc(rep.drifts_written)
            self.progress.phase(conn.id, DONE)
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the others
            self._fail(conn, rep, "correct", exc)
            for d in rep.drifts:
                d.action = d.action or NOT_CORRECTED

    def _fail(self, conn: Connection, rep: ConnectionReport, phase: str, exc: BaseException) -> None:
        if isinstance(exc, (*ChannelFailure, PublishError)):
            log.error("connection %s failed in %s: %s", conn.id, phase, exc)
        else:
            log.exception("connection %s failed in %s with an unexpected error", conn.id, phase)
        rep.failure, rep.failed_in = _describe(exc), phase
        if phase == "backfill":
            rep.backfill = "failed"
        self.metrics.failures.labels(conn.channel).inc()
        self.progress.phase(conn.id, FAILED.format(phase=phase))
