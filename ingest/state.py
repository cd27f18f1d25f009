"""What the gateway's handlers share: application keys, the live connection directory, publishing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from channels.connection import ConnectionRegistry, ConnectionsFileError
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from stocksync.connections import load_all
from stocksync.kafka import AsyncProducer

log = logging.getLogger(__name__)


class Directory:
    """The connections and admin tokens in force; swapped whole when the connections table is re-read."""

    def __init__(self, registry: ConnectionRegistry) -> None:
        self.current = registry

    async def refresh_forever(self, file: Path | None, database_url: str, every_s: float) -> None:
        """Re-read file and table every `every_s`; keep the last good set while a read fails."""
        last_problem = ""
        while True:
            await asyncio.sleep(every_s)  # the refresh schedule itself, not a synchronisation
            try:
                self.current = await asyncio.to_thread(load_all, file, database_url)
                last_problem = ""
            except (psycopg.Error, ConnectionsFileError) as exc:  # keep serving what we have
                problem = str(exc).strip()
                if problem != last_problem:
                    log.warning("connections not refreshed (keeping the previous set): %s", problem)
                last_problem = problem


SETTINGS = web.AppKey("settings", IngestSettings)
CONNECTIONS = web.AppKey("connections", Directory)
PRODUCER = web.AppKey("producer", AsyncProducer)
METRICS = web.AppKey("metrics", IngestMetrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)
POOL = web.AppKey("pool", AsyncConnectionPool)


async def publish_all(
    producer: AsyncProducer, records: list[tuple[str, bytes, bytes, dict[str, str]]], timeout_s: float
) -> None:
    """Send every record and wait for all their acknowledgements, or raise (TimeoutError, DeliveryError)."""
    sends = [producer.send(topic, value, key=key, headers=headers) for topic, key, value, headers in records]
    await asyncio.wait_for(asyncio.gather(*sends), timeout_s)
