"""The reconciler's PostgreSQL side: the run lock, checkpoints, which event ids the processor has seen, and
what the master says per SKU."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from reconciler.drift import MasterRow

LOCK_KEY = 0x5EC0C1  # advisory lock id for "one reconcile run at a time"


class AlreadyRunning(RuntimeError):
    """Another reconcile run holds the lock; the message says which backend and since when."""


@asynccontextmanager
async def run_lock(database_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    """Hold the session-level advisory lock for the block; raise AlreadyRunning if another run has it.

    A session lock dies with its connection, so a killed run never leaves the lock behind."""
    conn = await AsyncConnection.connect(database_url, autocommit=True)
    try:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))).fetchone()
        if not row or not row[0]:
            holder = await (
                await conn.execute(
                    "SELECT a.pid, a.backend_start, a.client_addr::text, a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.objid = %s AND l.granted",
                    (LOCK_KEY,),
                )
            ).fetchone()
            who = (
                f" (PostgreSQL backend pid {holder[0]}, connected since {holder[1]:%Y-%m-%d %H:%M:%S %Z})"
                if holder
                else ""
            )
            raise AlreadyRunning(
                f"another reconcile run is already running{who}; wait for it to finish, or stop it, "
                "and run again"
            )
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    finally:
        await conn.close()


async def checkpoint(conn: AsyncConnection[Any], connection_id: str) -> datetime | None:
    cur = await conn.execute(
        "SELECT listed_until FROM reconcile_checkpoints WHERE connection_id = %s", (connection_id,)
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def move_checkpoint(conn: AsyncConnection[Any], connection_id: str, to: datetime) -> datetime:
    """Move the checkpoint forward to `to` (never back); return where it is now."""
    cur = await conn.execute(
        """INSERT INTO reconcile_checkpoints AS c (connection_id, listed_until) VALUES (%s, %s)
           ON CONFLICT (connection_id) DO UPDATE
              SET listed_until = greatest(c.listed_until, EXCLUDED.listed_until), updated_at = now()
           RETURNING listed_until""",
        (connection_id, to),
    )
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError(f"the checkpoint of connection {connection_id!r} was not stored")
    result: datetime = row[0]
    return result


async def known_ids(conn: AsyncConnection[Any], ids: Iterable[str]) -> set[str]:
    """The event ids the processor has handled (in processed_events, or in the ledger after retention)."""
    wanted = list(set(ids))
    if not wanted:
        return set()
    cur = await conn.execute(
        "SELECT event_id FROM processed_events WHERE event_id = ANY(%s) "
        "UNION SELECT event_id FROM ledger WHERE event_id = ANY(%s)",
        (wanted, wanted),
    )
    return {r[0] for r in await cur.fetchall()}


async def master_rows(conn: AsyncConnection[Any], tenant: str, skus: list[str]) -> dict[str, MasterRow]:
    """The master's row of each SKU, with the grants of the SKUs under allocation (never_cancel)."""
    cur = await conn.execute(
        "SELECT sku, connection_id, granted FROM allocations WHERE tenant = %s AND sku = ANY(%s)",
        (tenant, skus),
    )
    granted: dict[str, dict[str, int]] = {}
    for sku, cid, n in await cur.fetchall():
        granted.setdefault(sku, {})[cid] = int(n)
    cur = await conn.execute(
        """SELECT i.sku, i.available, i.version, i.updated_at,
                  coalesce((SELECT l.outcome = 'rejected' FROM ledger l
                             WHERE l.tenant = i.tenant AND l.sku = i.sku
                               AND l.outcome IN ('applied', 'rejected')
                             ORDER BY l.id DESC LIMIT 1), false)
             FROM inventory i WHERE i.tenant = %s AND i.sku = ANY(%s)""",
        (tenant, skus),
    )
    return {
        r[0]: MasterRow(r[0], int(r[1]), int(r[2]), r[3], bool(r[4]), granted.get(r[0]))
        for r in await cur.fetchall()
    }


async def versions(conn: AsyncConnection[Any], tenant: str, skus: list[str]) -> dict[str, int]:
    cur = await conn.execute(
        "SELECT sku, version FROM inventory WHERE tenant = %s AND sku = ANY(%s)", (tenant, skus)
    )
    return {r[0]: int(r[1]) for r in await cur.fetchall()}


async def record_run(
    conn: AsyncConnection[Any],
    run_id: str,
    started_at: datetime,
    finished_at: datetime,
    *,
    dry_run: bool,
    ok: bool,
    totals: dict[str, int],
) -> None:
    await conn.execute(
        "INSERT INTO reconcile_runs (run_id, started_at, finished_at, dry_run, ok, totals) "
        "VALUES (%s, %s, %s, %s, %s, %s::jsonb)",
        (run_id, started_at, finished_at, dry_run, ok, json.dumps(totals)),
    )
