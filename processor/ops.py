"""The processor's own HTTP surface: /metrics, /healthz and /audit/{tenant}/{sku}."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from processor import audit
from stocksync.metrics import metrics_handler

POOL = web.AppKey("pool", AsyncConnectionPool)


async def audit_view(request: web.Request) -> web.Response:
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        return web.json_response({"error": "limit must be a whole number from 1 to 1000"}, status=400)
    tenant, sku = request.match_info["tenant"], request.match_info["sku"]
    async with request.app[POOL].connection() as conn:
        rows = await audit.trail(conn, tenant, sku, limit=limit)
    return web.json_response({"tenant": tenant, "sku": sku, "changes": rows})


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def ops_app(registry: CollectorRegistry, pool: AsyncConnectionPool) -> web.Application:
    app = web.Application()
    app[POOL] = pool
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/audit/{tenant}/{sku}", audit_view)
    return app
