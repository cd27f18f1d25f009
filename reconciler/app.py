"""The reconciler's composition root: the only place that creates the real PostgreSQL connection, Kafka
producer and HTTP session; whatever is handed in is used as-is (and left open), for tests and for sharing.

The run lock keeps its own session connection (reconciler/store.py run_lock): an advisory lock lives and dies
with one connection, so it is never borrowed from a pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from channels.connection import Connection
from reconciler.metrics import ReconcilerMetrics
from reconciler.progress import Progress
from reconciler.run import Connect, Reconciler
from reconciler.settings import ReconcilerSettings
from stocksync.kafka import AsyncProducer, producer_config


def _connect(settings: ReconcilerSettings, pool: AsyncConnectionPool | None) -> Connect:
    """One autocommit connection per run: from `pool` if given (autocommit restored on return), else own."""
    if pool is not None:
        return partial(_from_pool, pool)

    @asynccontextmanager
    async def own() -> AsyncIterator[AsyncConnection[Any]]:
        db = await AsyncConnection.connect(settings.postgres.database_url, autocommit=True)
        try:
            yield db
        finally:
            await db.close()

    return own


@asynccontextmanager
async def _from_pool(pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnection[Any]]:
    async with pool.connection() as db:
        await db.set_autocommit(True)
        try:
            yield db
        finally:
            await db.set_autocommit(False)


@asynccontextmanager
async def build_reconciler(
    settings: ReconcilerSettings,
    *,
    connections: Sequence[Connection],
    registry: CollectorRegistry | None = None,
    progress: Progress | None = None,
    producer: AsyncProducer | None = None,
    session: aiohttp.ClientSession | None = None,
    pool: AsyncConnectionPool | None = None,
    publish: bool = True,
) -> AsyncIterator[Reconciler]:
    """The reconciler for `connections` (the enabled ones); `publish` False builds no producer (dry runs
    only). What it created is closed when the block ends."""
    metrics = ReconcilerMetrics(registry or CollectorRegistry())
    async with AsyncExitStack() as stack:
        if producer is None and publish:
            own_producer = AsyncProducer(producer_config(settings.kafka))
            stack.push_async_callback(partial(own_producer.close, timeout_s=settings.publish_timeout_s))
            producer = own_producer
        if session is None:
            timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s)
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        yield Reconciler(
            settings,
            connections,
            metrics=metrics,
            connect=_connect(settings, pool),
            session=session,
            producer=producer,
            progress=progress,
        )
