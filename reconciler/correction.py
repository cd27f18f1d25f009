"""Correction: read what a channel shows, and write the drifts back, version-guarded.

The master's version is read again just before each write; a SKU whose version moved is left to the fan-out,
which is already carrying the newer count. Single writes are compare-and-set against the count read where the
channel supports it (Shopify); a count that moved meanwhile is left to the next run.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from psycopg import AsyncConnection

from channels.connection import Connection
from channels.errors import CompareMismatch
from channels.spec import InventoryClient
from reconciler import store
from reconciler.progress import Progress
from reconciler.report import CORRECTED, SKIPPED_CHANNEL_MOVED, SKIPPED_MASTER_MOVED, Drift
from stocksync.retry import RetryPolicy


async def read_counts(
    conn: Connection,
    client: InventoryClient,
    skus: list[str],
    *,
    max_batch: int,
    policy: RetryPolicy,
    progress: Progress,
) -> dict[str, int]:
    """What the channel shows for `skus` (those it lists), read in batches of `max_batch`."""
    step = max(1, max_batch)
    shows: dict[str, int] = {}
    for i in range(0, len(skus), step):
        part = skus[i : i + step]
        shows.update(await policy.call(partial(client.get_available, part)))
        progress.advance(conn.id, len(part))
    return shows


async def still_current(db: AsyncConnection[Any], tenant: str, part: list[Drift]) -> list[Drift]:
    """The version guard: the drifts whose SKU's master version has not moved since it was compared (the
    others are marked skipped)."""
    now = await store.versions(db, tenant, [d.sku for d in part])
    current = []
    for d in part:
        if now.get(d.sku) == d.master_version:
            current.append(d)
        else:
            d.action = SKIPPED_MASTER_MOVED
    return current


async def write_back(
    conn: Connection,
    drifts: list[Drift],
    *,
    db: AsyncConnection[Any],
    client: InventoryClient,
    max_batch: int,
    reference: str,
    policy: RetryPolicy,
    progress: Progress,
) -> None:
    """Write every drift without an action yet; each ends corrected or skipped (a failure raises)."""
    todo = [d for d in drifts if not d.action]
    single = max_batch == 1 or len(todo) == 1
    step = 1 if single else max_batch
    for i in range(0, len(todo), step):
        part = await still_current(db, conn.tenant, todo[i : i + step])
        if not part:
            continue
        if single:
            d = part[0]
            try:
                await policy.call(
                    partial(
                        client.set_available,
                        d.sku,
                        d.expected,
                        change_from=d.channel_value,
                        reference=reference,
                    )
                )
            except CompareMismatch:
                d.action = SKIPPED_CHANNEL_MOVED
                continue
        else:
            items = [(d.sku, d.expected) for d in part]
            await policy.call(partial(client.set_many, items, reference=reference))
        for d in part:
            d.action = CORRECTED
        progress.advance(conn.id, len(part))
