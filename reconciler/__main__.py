"""``python -m reconciler``: reconcile on a schedule (RECONCILER_INTERVAL_S) until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from channels.connection_store import connections_or_exit
from reconciler.service import run_service
from reconciler.settings import ReconcilerSettings
from stocksync import logs
from stocksync.db import migrate
from stocksync.lifecycle import run_until_signalled


def main() -> None:
    logs.configure("reconciler")
    settings = ReconcilerSettings()
    migrate(settings.postgres.database_url)
    connections = connections_or_exit(
        settings.connections_file,
        settings.postgres.database_url if settings.connections_table else None,
        service="reconciler",
        setting="RECONCILER_CONNECTIONS_FILE",
    )

    async def service(stop: asyncio.Event) -> None:
        await run_service(settings, connections, stop)

    run_until_signalled(service)


if __name__ == "__main__":
    main()
