"""``python -m reconciler``: reconcile on a schedule (RECONCILER_INTERVAL_S) until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging

from channels.connection import ConnectionsFileError
from reconciler.service import run_service
from reconciler.settings import ReconcilerSettings
from stocksync import logs
from stocksync.connections import load_for_service
from stocksync.db import migrate
from stocksync.lifecycle import run_until_signalled

log = logging.getLogger("reconciler")


def main() -> None:
    logs.configure("reconciler")
    settings = ReconcilerSettings()
    migrate(settings.postgres.database_url)
    try:
        connections = load_for_service(
            settings.connections_file,
            settings.postgres.database_url if settings.connections_table else None,
            service="reconciler",
            setting="RECONCILER_CONNECTIONS_FILE",
        )
    except ConnectionsFileError as exc:  # an invalid connection is refused, never served half-configured
        log.error("reconciler cannot start: %s", exc)
        raise SystemExit(2) from None

    async def service(stop: asyncio.Event) -> None:
        await run_service(settings, connections, stop)

    run_until_signalled(service)


if __name__ == "__main__":
    main()
