"""What the gateway's handlers share: application keys, the live connection directory, publishing."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from channels.connection import ConnectionRegistry, ConnectionsFileError, ConnectionsFileUnreadable
from channels.connection_store import load_database, unreadable_file_notice
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from stocksync.kafka import AsyncProducer

log = logging.getLogger(__name__)
FILE_SETTING = "INGEST_CONNECTIONS_FILE"


class Directory:
    """The connections and admin tokens in force; swapped whole when the connections table is re-read."""

    def __init__(self, registry: ConnectionRegistry) -> None:
        self.current = registry

    async def refresh_forever(self, file: Path | None, database_url: str, every_s: float) -> None:
        """Re-read file and table every `every_s`; keep the last good set while a read fails.

        The file is optional. One that cannot be read from the start counts as empty (start-up said so):
        the table's connections are served and refreshed. One that stops being readable keeps serving the
        connections it held when last read. Either is said once (again only if the problem changes), and
        so is the file becoming readable again."""
        last_problem = ""
        try:  # the file as start-up found it, so what start-up said about it is not said again
            kept, unreadable = await asyncio.to_thread(_read_file, file)
        except ConnectionsFileError:
            kept, unreadable = None, None
        while True:
            await asyncio.sleep(every_s)  # the refresh schedule itself, not a synchronisation
            try:
                from_file, problem = await asyncio.to_thread(_read_file, file)
                from_table = await asyncio.to_thread(load_database, database_url)
            except (psycopg.Error, ConnectionsFileError) as exc:  # keep serving what we have
                message = str(exc).strip()
                if message != last_problem:
                    log.warning("connections not refreshed (keeping the previous set): %s", message)
                last_problem = message
                continue
            last_problem = ""
            if problem is None:
                if unreadable is not None:
                    log.info("connections file %s can be read again; its connections are served", file)
                kept = from_file
            elif unreadable is None or str(problem) != str(unreadable):
                if kept is None:
                    log.warning(
                        "%s", unreadable_file_notice(problem, setting=FILE_SETTING, using_database=True)
                    )
                else:
                    log.warning(
                        "connections file %s cannot be read any more (%s): still serving the %d connections "
                        "it held when last read, beside the table's. Restore the file, or unset %s and "
                        "restart the gateway to serve the database's connections only.",
                        file,
                        problem.reason,
                        sum(1 for _ in kept),
                        FILE_SETTING,
                    )
            unreadable = problem
            self.current = (kept if kept is not None else from_file).merged(from_table)


def _read_file(file: Path | None) -> tuple[ConnectionRegistry, ConnectionsFileUnreadable | None]:
    """The file's connections (none if no file is named), or none and why it cannot be read. Raises
    ConnectionsFileError if it holds something invalid."""
    if file is None:
        return ConnectionRegistry([]), None
    try:
        return ConnectionRegistry.from_file(file), None
    except ConnectionsFileUnreadable as exc:
        return ConnectionRegistry([]), exc


SETTINGS = web.AppKey("settings", IngestSettings)
CONNECTIONS = web.AppKey("connections", Directory)
PRODUCER = web.AppKey("producer", AsyncProducer)
METRICS = web.AppKey("metrics", IngestMetrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)
POOL = web.AppKey("pool", AsyncConnectionPool)


async def publish_all(
    producer: AsyncProducer, records: list[tuple[str, bytes, bytes, dict[str, str]]], timeout_s: float
) -> None:
    """Send every record and wait for all their acknowledgements, or raise (TimeoutError, DeliveryError).

    Most webhooks make one record: it is awaited directly, without a task per record (gather) and a
    waiter (wait_for), which showed in the gateway's profile; several are sent together."""
    async with asyncio.timeout(timeout_s):
        if len(records) == 1:
            topic, key, value, headers = records[0]
            await producer.send(topic, value, key=key, headers=headers)
            return
        await asyncio.gather(
            *(producer.send(topic, value, key=key, headers=headers) for topic, key, value, headers in records)
        )
