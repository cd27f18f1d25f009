"""The dead-letter topic, for operators: list what could not be delivered, and replay it once fixed.

Replay is idempotent: for the newest dead letter of each (connection, SKU) it reads what the master allows
the connection now and what the channel shows, and sets the channel only where they differ. It can be run
again after a partial fix; letters are never deleted (the topic's retention does that).

What the master allows: for a mirrored SKU its count (less the connection's buffer, times its share); for a
SKU under allocation (policy never_cancel) the connection's grant. A grant bounds what the channel shows
plus its sales the master has not heard of yet, so setting a channel to its grant is exact only once every
sale it took has reached the master: replay once the channel's webhooks are in (the demo does it once the
fan-out has gone quiet; in production, after the reconciler's backfill).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import psycopg
from pydantic import ValidationError

from allocation.policy import grants
from channels.connection import ConnectionRegistry, channel_quantity
from channels.errors import ChannelError
from channels.registry import spec
from schemas import fanout_dlq
from schemas.fanout_dlq import UpdateDeadLettered
from stocksync.kafka import read_to_end
from stocksync.settings import KafkaSettings

SUBSCRIBER = "subscriber"  # the channel of an agent subscriber's dead letters (fanout/subscribers.py)


def read_dead_letters(kafka: KafkaSettings, *, connection: str | None = None) -> list[UpdateDeadLettered]:
    """Every dead letter in the topic (optionally of one connection), oldest first."""
    letters: list[UpdateDeadLettered] = []
    for msg in read_to_end(kafka, fanout_dlq.TOPIC, missing_ok=True):
        try:
            letter = fanout_dlq.decode(msg.value() or b"")
        except ValidationError:
            continue  # not ours to judge here; `dlq list` shows what parses
        if connection is None or letter.connection_id == connection:
            letters.append(letter)
    return sorted(letters, key=lambda d: d.failed_at)


@dataclass(frozen=True)
class Replayed:
    connection_id: str
    sku: str
    outcome: str  # set | already_in_sync | unknown_connection | not_in_master | failed
    channel_had: int | None
    master_allows: int | None
    detail: str = ""


async def replay(
    letters: list[UpdateDeadLettered], connections: ConnectionRegistry, database_url: str
) -> list[Replayed]:
    """Bring each dead-lettered (connection, SKU) to what the master allows now. A subscriber's letters
    (channel ``subscriber``, fanout/subscribers.py) are not replayed: the SKU's next change brings that
    subscriber up to date, and it holds no count of its own that could be wrong."""
    newest = {(d.connection_id, d.sku): d for d in letters if d.channel != SUBSCRIBER}
    out: list[Replayed] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for (conn_id, sku), letter in newest.items():
            conn = connections.get(conn_id)
            if conn is None:
                out.append(
                    Replayed(conn_id, sku, "unknown_connection", None, None, "not in the connections file")
                )
                continue
            row = await asyncio.to_thread(_master, database_url, letter.tenant, sku)
            if row is None:
                out.append(Replayed(conn_id, sku, "not_in_master", None, None))
                continue
            granted = (await asyncio.to_thread(grants, database_url, letter.tenant, [sku])).get(sku)
            if granted is not None:
                allows = granted.get(conn_id, 0)
            else:
                allows = channel_quantity(row, buffer=conn.safety_buffer, allocation=conn.allocation)
            client = spec(conn.channel).client(session, conn)
            try:
                had = (await client.get_available([sku])).get(sku)
                if had == allows:
                    out.append(Replayed(conn_id, sku, "already_in_sync", had, allows))
                    continue
                await client.set_available(
                    sku, allows, change_from=had, reference=f"stocksync://dlq-replay/{sku}"
                )
                out.append(Replayed(conn_id, sku, "set", had, allows))
            except (ChannelError, aiohttp.ClientError, TimeoutError) as exc:
                out.append(Replayed(conn_id, sku, "failed", None, allows, f"{type(exc).__name__}: {exc}"))
    return out


def _master(database_url: str, tenant: str, sku: str) -> int | None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT available FROM inventory WHERE tenant = %s AND sku = %s", (tenant, sku)
        ).fetchone()
    return int(row[0]) if row else None
