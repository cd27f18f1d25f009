"""Per-tenant availability thresholds (table ``agent_thresholds``): the most units agents may see at which a
SKU is ``limited_stock`` (``allocation.availability.status``). A tenant with no row uses
``allocation.availability.LIMITED_AT``. Set with ``stocksync feed thresholds``; read by the agent feed
(cli/feed.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import AsyncConnection

from allocation.availability import LIMITED_AT


async def limited_at_for(conn: AsyncConnection, tenants: Iterable[str]) -> dict[str, int]:
    """The ``limited_stock`` threshold of each of `tenants` (LIMITED_AT where none is set); one statement."""
    wanted = list(dict.fromkeys(tenants))
    if not wanted:
        return {}
    cur = await conn.execute(
        "SELECT tenant, limited_at FROM agent_thresholds WHERE tenant = ANY(%s)", (wanted,)
    )
    found = {str(tenant): int(limited_at) async for tenant, limited_at in cur}
    return {tenant: found.get(tenant, LIMITED_AT) for tenant in wanted}


def set_limited_at(database_url: str, tenant: str, limited_at: int) -> None:
    """Set the ``limited_stock`` threshold of `tenant`: from then on a SKU of which agents may see between 1
    and `limited_at` units is ``limited_stock`` (0 makes every SKU with a unit to show ``in_stock``)."""
    if limited_at < 0:
        raise ValueError(f"limited_at must be 0 or more, got {limited_at}")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO agent_thresholds (tenant, limited_at) VALUES (%s, %s) "
            "ON CONFLICT (tenant) DO UPDATE SET limited_at = EXCLUDED.limited_at, updated_at = now()",
            (tenant, limited_at),
        )


def limited_at_set(database_url: str, tenant: str) -> int | None:
    """The threshold set for `tenant`, or None where none is (it then uses LIMITED_AT)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT limited_at FROM agent_thresholds WHERE tenant = %s", (tenant,)).fetchone()
    return None if row is None else int(row[0])
