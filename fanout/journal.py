"""The fan-out's journal of allocation writes (table ``allocation_writes``): each write is claimed before it
is sent, so a redelivered record never sends it twice.

Why: the fan-out is at-least-once (offsets are committed after the batch), and an allocation raise sent again
after the channel has sold from it would show the units twice: an absolute ``set N`` re-sent after the
channel sold one of the N makes it show N again while its grant is N - 1; a compare-and-set raise re-based
on what it shows does the same. So a write is claimed first (its connection, SKU and the record's
``seq``; only a higher seq can claim again) and sent only if the claim is new. A crash between the claim
and the channel's answer leaves the write claimed and perhaps unsent: the channel then shows less than its
grant (never more) until the reconciler, after its backfill, sets it to its grant.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from fanout.plan import Target

log = logging.getLogger(__name__)

CLAIM = (
    "INSERT INTO allocation_writes AS w (connection_id, tenant, sku, seq) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) "
    "ON CONFLICT (connection_id, tenant, sku) DO UPDATE SET seq = EXCLUDED.seq, claimed_at = now() "
    "WHERE w.seq < EXCLUDED.seq RETURNING connection_id, tenant, sku"
)


class WriteJournal:
    """Claims allocation writes in PostgreSQL before they are sent."""

    def __init__(self, pool: AsyncConnectionPool, *, retry_for_s: float = 30.0) -> None:
        self.pool, self.retry_for_s = pool, retry_for_s

    async def claim(self, targets: list[Target]) -> tuple[list[Target], list[Target]]:
        """(the targets claimed now, to send; those an earlier delivery already claimed, not to send).
        Raises psycopg.Error if PostgreSQL stays away for `retry_for_s`."""
        if not targets:
            return [], []
        params = (
            [t.connection_id for t in targets],
            [t.cause.tenant for t in targets],
            [t.sku for t in targets],
            [t.seq for t in targets],
        )
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(self.retry_for_s),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(psycopg.OperationalError),
            reraise=True,
        ):
            with attempt:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(CLAIM, params)
                    fresh = {(c, t, s) for c, t, s in await cur.fetchall()}
        claimed = [t for t in targets if (t.connection_id, t.cause.tenant, t.sku) in fresh]
        done = [t for t in targets if (t.connection_id, t.cause.tenant, t.sku) not in fresh]
        for t in done:
            log.info(
                "allocation write seq %d to %s for %s/%s was claimed by an earlier delivery: not sent again",
                t.seq,
                t.connection_id,
                t.cause.tenant,
                t.sku,
            )
        return claimed, done
