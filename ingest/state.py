"""What the gateway's handlers share: application keys, the live connection directory, publishing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from channels.connection import ConnectionRegistry, ConnectionsFileError
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from stocksync.connections import load_all, read_file
from stocksync.kafka import AsyncProducer

log = logging.getLogger(__name__)
FILE_SETTING = "INGEST_CONNECTIONS_FILE"


class Directory:
    """The connections and admin tokens in force; swapped whole when the connections table is re-read."""

    def __init__(self, registry: ConnectionRegistry) -> None:
        self.current = registry

    async def refresh_forever(self, file: Path | None, database_url: str, every_s: float) -> None:
        """Re-read file and table every `every_s`; keep the last good set while a read fails.

        A named file that cannot be read counts as empty (the table's connections are still served and
        refreshed): that is said once, again only if the problem changes, and its return is logged too."""
        last_problem = ""
        # what start-up (load_for_service) already said about the file, so it is not said twice
        last_file_notice = await asyncio.to_thread(_file_notice, file)
        while True:
            await asyncio.sleep(every_s)  # the refresh schedule itself, not a synchronisation
            notices: list[str] = []
            try:
                self.current = await asyncio.to_thread(
                    load_all, file, database_url, setting=FILE_SETTING, notice=notices.append
                )
                last_problem = ""
            except (psycopg.Error, ConnectionsFileError) as exc:  # keep serving what we have
                problem = str(exc).strip()
                if problem != last_problem:
                    log.warning("connections not refreshed (keeping the previous set): %s", problem)
                last_problem = problem
                continue
            file_notice = " ".join(notices)
            if file_notice and file_notice != last_file_notice:
                log.warning("%s", file_notice)
            elif last_file_notice and not file_notice:
                log.info("connections file %s is readable again; its connections are served", file)
            last_file_notice = file_notice


def _file_notice(file: Path | None) -> str:
    """What reading `file` would say about it being unreadable ("" if it can be read or is not named)."""
    notices: list[str] = []
    with contextlib.suppress(ConnectionsFileError):  # invalid content is reported by the refresh itself
        read_file(file, setting=FILE_SETTING, using_database=True, notice=notices.append)
    return " ".join(notices)


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
