"""The audit trail: every change of a SKU, newest first, with the quantity after each (the running count).

Answers "why is SKU X at 7?": each row names the event, its channel and connection, what it asked for and
what the master record did with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

COLUMNS = (
    "id, event_id, kind, delta, absolute, before, after, version, outcome, reason, channel, connection_id, "
    "occurred_at, applied_at"
)


async def trail(conn: AsyncConnection, tenant: str, sku: str, *, limit: int = 100) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {COLUMNS} FROM ledger WHERE tenant = %s AND sku = %s ORDER BY id DESC LIMIT %s",
            (tenant, sku, limit),
        )
        rows = await cur.fetchall()
    return [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()} for row in rows]


ALLOCATION_COLUMNS = (
    "id, seq, connection_id, channel, event_id, available, granted_before, granted_after, write_quantity, "
    "write_expect, reason, at"
)


async def allocation_trail(
    conn: AsyncConnection, tenant: str, sku: str, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The SKU's allocation changes, newest first: each connection's grant before and after, the write it
    was asked to make (a compare-and-set base, or an absolute set), and why (sales, refills, policy)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {ALLOCATION_COLUMNS} FROM allocation_log WHERE tenant = %s AND sku = %s "
            "ORDER BY id DESC LIMIT %s",
            (tenant, sku, limit),
        )
        rows = await cur.fetchall()
    return [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()} for row in rows]
