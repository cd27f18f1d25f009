"""A content checksum of the master record, the ledger and the idempotency store.

It covers what the events decide (quantities, versions, outcomes, figures) and leaves out what only says
when or in which order a worker ran (identity ids, wall-clock times, emitted payloads), so a replay into an
empty database is checksum-equal to the live one.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# table -> (the columns that carry meaning, the order that makes the digest independent of insertion order)
COVERED = {
    "inventory": ("tenant, sku, available, version, extract(epoch FROM counted_at)", "tenant, sku"),
    "ledger": (
        "event_id, tenant, sku, kind, delta, absolute, before, after, version, outcome, reason, "
        "extract(epoch FROM occurred_at)",
        "event_id",
    ),
    "processed_events": ("event_id, tenant, sku, outcome, result_topic", "event_id"),
}


def _query(table: str) -> str:
    columns, order = COVERED[table]
    return (
        f"SELECT count(*), md5(COALESCE(string_agg(concat_ws('|', {columns}), ',' ORDER BY {order}), '')) "
        f"FROM {table}"
    )


@dataclass(frozen=True)
class TableSum:
    rows: int
    md5: str


def checksum(database_url: str) -> dict[str, TableSum]:
    with psycopg.connect(database_url) as conn:
        out = {}
        for table in COVERED:
            row = conn.execute(_query(table).encode()).fetchone()
            out[table] = TableSum(int(row[0]), str(row[1])) if row else TableSum(0, "")
    return out
