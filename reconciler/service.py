"""The reconciler as a service: a run on start (optional) and then every ``interval_s``, with /metrics and
/healthz. A run that finds the lock held (another run, e.g. an operator's ``stocksync reconcile``) is skipped
and counted; the schedule carries on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from channels.connection import ConnectionRegistry
from reconciler.app import build_reconciler
from reconciler.settings import ReconcilerSettings
from reconciler.store import AlreadyRunning
from stocksync.metrics import metrics_handler

log = logging.getLogger(__name__)


@asynccontextmanager
async def serve_ops(
    settings: ReconcilerSettings, registry: CollectorRegistry, status: dict[str, Any]
) -> AsyncIterator[int]:
    """/metrics and /healthz (with the last run's outcome) for the process; yields the bound port."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **status})

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def run_service(
    settings: ReconcilerSettings, connections: ConnectionRegistry, stop: asyncio.Event
) -> None:
    """Build the reconciler, serve its ops endpoints and run on the schedule until `stop`."""
    registry = CollectorRegistry()
    status: dict[str, Any] = {"last_run": None}
    async with (
        build_reconciler(settings, connections=list(connections), registry=registry) as reconciler,
        serve_ops(settings, registry, status) as port,
    ):
        metrics = reconciler.metrics
        log.info(
            "reconciler: %d connections, a run every %.0f s; metrics on port %d",
            len(reconciler.connections),
            settings.interval_s,
            port,
        )
        first = settings.run_on_start
        while not stop.is_set():
            if not first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.interval_s)  # the schedule, or SIGTERM
                if stop.is_set():
                    break
            first = False
            try:
                report = await reconciler.run()
            except AlreadyRunning as exc:
                metrics.lock_busy.inc()
                log.warning("scheduled run skipped: %s", exc)
                continue
            except Exception:
                # The database or Kafka is down: the run failed as a whole; the next one tries again.
                log.exception("reconcile run failed; the next scheduled run tries again")
                status["last_run"] = {"ok": False, "error": "the run failed; see the log"}
                continue
            status["last_run"] = {
                "run_id": report.run_id,
                "ok": report.ok,
                "finished_at": report.finished_at.isoformat() if report.finished_at else None,
                "report": report.report_path,
                **report.totals(),
            }
