"""``python -m ingest``: run the webhook gateway until SIGTERM/SIGINT."""

from __future__ import annotations

from aiohttp import web

from ingest.app import build_app
from ingest.settings import IngestSettings
from stocksync import logs
from stocksync.connections import load_for_service


def main() -> None:
    logs.configure("ingest")
    settings = IngestSettings()
    connections = load_for_service(
        settings.connections_file,
        settings.postgres.database_url if settings.connections_table else None,
        service="ingest",
    )
    web.run_app(
        build_app(settings, connections=connections),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
