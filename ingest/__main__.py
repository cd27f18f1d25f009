"""``python -m ingest``: run the webhook gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import gc

import uvloop
from aiohttp import web

from channels.connection_store import connections_or_exit
from ingest.app import build_app
from ingest.settings import IngestSettings
from stocksync import logs


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Move everything alive after start-up (modules, pydantic schemas, the registry) out of the collector's
    reach: a full collection then scans only what requests allocate. Measured with `make bench` (2 cores):
    ack p99 at 3,000 webhooks/s went from ~39 ms to ~22 ms, the closed loop's throughput up ~10 %."""
    gc.collect()
    gc.freeze()


def main() -> None:
    logs.configure("ingest")
    settings = IngestSettings()
    connections = connections_or_exit(
        settings.connections_file,
        settings.postgres.database_url if settings.connections_table else None,
        service="ingest",
        setting="INGEST_CONNECTIONS_FILE",
    )
    app = build_app(settings, connections=connections)
    app.on_startup.append(_freeze_startup_objects)  # runs after the app's own start-up (cleanup_ctx)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),  # the gateway's hot path is the event loop itself
    )


if __name__ == "__main__":
    main()
