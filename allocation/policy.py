"""Allocation policies (table ``allocation_policies``): per tenant, overridable per SKU; and the grants in
force (table ``allocations``), for the services that set a channel outside the fan-out's stream.

``never_cancel`` (the default): strict escrow allocation (allocation/rules.py); ``mirror``: every channel
shows the whole master count, as before allocation existed. `buffer` units of a SKU are shown on no channel;
`spread` is the share of the sellable units spread over the connections at once (the rest refills those
that sell out). The default for a tenant with no row is PROCESSOR_DEFAULT_POLICY.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection

from allocation.rules import DEFAULT_POLICY, DEFAULT_SPREAD, POLICIES, Policy

Key = tuple[str, str]


@dataclass(frozen=True)
class Rule:
    """The policy in force for one SKU, and where it comes from (a SKU's row, the tenant's, the default)."""

    policy: Policy = DEFAULT_POLICY
    buffer: int = 0
    spread: float = DEFAULT_SPREAD
    source: str = "default"


async def rules_for(
    conn: AsyncConnection, keys: Iterable[Key], *, default: Policy = DEFAULT_POLICY
) -> dict[Key, Rule]:
    """The rule in force for each (tenant, sku): the SKU's row, else the tenant's (sku ''), else `default`."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    cur = await conn.execute(
        "SELECT tenant, sku, policy, buffer, spread FROM allocation_policies WHERE tenant = ANY(%s)",
        (list({t for t, _ in keys}),),
    )
    rows = {(t, s): Rule(p, b, float(sp), "sku" if s else "tenant") async for t, s, p, b, sp in cur}
    fallback = Rule(default)
    return {(t, s): rows.get((t, s)) or rows.get((t, "")) or fallback for t, s in keys}


async def granted_sums(conn: AsyncConnection, keys: Iterable[Key]) -> dict[Key, int]:
    """The sum of the grants of each (tenant, sku) that has any, in one statement: what the allocation has
    promised the marketplaces (the rest, less the buffer, is what an agent may see:
    allocation.availability)."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    cur = await conn.execute(
        "SELECT a.tenant, a.sku, sum(a.granted)::bigint FROM allocations a "
        "JOIN unnest(%s::text[], %s::text[]) AS k(tenant, sku) ON a.tenant = k.tenant AND a.sku = k.sku "
        "GROUP BY a.tenant, a.sku",
        ([t for t, _ in keys], [s for _, s in keys]),
    )
    return {(str(t), str(s)): int(g) async for t, s, g in cur}


def set_policy(
    database_url: str,
    tenant: str,
    policy: Policy,
    *,
    sku: str | None = None,
    buffer: int = 0,
    spread: float = DEFAULT_SPREAD,
) -> None:
    """Set the policy of `tenant` (or of one of its SKUs); it applies from each SKU's next event."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    if buffer < 0:
        raise ValueError(f"buffer must be 0 or more, got {buffer}")
    if not 0 < spread <= 1:
        raise ValueError(f"spread must be above 0 and at most 1, got {spread}")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO allocation_policies (tenant, sku, policy, buffer, spread) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tenant, sku) DO UPDATE "
            "SET policy = EXCLUDED.policy, buffer = EXCLUDED.buffer, spread = EXCLUDED.spread, "
            "updated_at = now()",
            (tenant, sku or "", policy, buffer, spread),
        )


def clear_policy(database_url: str, tenant: str, *, sku: str | None = None) -> bool:
    """Remove a tenant's (or SKU's) row: the SKU then follows its tenant, the tenant the default."""
    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "DELETE FROM allocation_policies WHERE tenant = %s AND sku = %s", (tenant, sku or "")
        )
        return cur.rowcount > 0


def list_policies(database_url: str, tenant: str | None = None) -> list[tuple[str, str, str, int, float]]:
    """(tenant, sku or '', policy, buffer, spread) rows, optionally of one tenant."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tenant, sku, policy, buffer, spread FROM allocation_policies "
            "WHERE %s::text IS NULL OR tenant = %s ORDER BY tenant, sku",
            (tenant, tenant),
        ).fetchall()
    return [(str(t), str(s), str(p), int(b), float(sp)) for t, s, p, b, sp in rows]


def grants(database_url: str, tenant: str, skus: Iterable[str]) -> dict[str, dict[str, int]]:
    """The grants of each of `skus` that is under allocation (never_cancel as of its last event): SKU ->
    connection id -> granted. A SKU that is absent is mirrored (the processor drops a SKU's grants when
    its policy becomes mirror)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT sku, connection_id, granted FROM allocations WHERE tenant = %s AND sku = ANY(%s)",
            (tenant, list(skus)),
        ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for sku, cid, granted in rows:
        out.setdefault(str(sku), {})[str(cid)] = int(granted)
    return out
