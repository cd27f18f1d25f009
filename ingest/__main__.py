"""``python -m ingest``: run the webhook gateway until SIGTERM/SIGINT."""

from __future__ import annotations

from aiohttp import web

from channels.connection import ConnectionRegistry
from ingest.app import build_app
from ingest.settings import IngestSettings
from stocksync import logs


def main() -> None:
    logs.configure("ingest")
    settings = IngestSettings()
    connections = ConnectionRegistry.from_file(settings.connections_file)
    web.run_app(
        build_app(settings, connections=connections),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
