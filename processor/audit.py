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
