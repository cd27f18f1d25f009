"""``python -m processor``: apply migrations, then run the processor until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from channels.connection_store import connections_or_exit
from processor.app import run_processor
from processor.settings import ProcessorSettings
from stocksync import logs
from stocksync.db import migrate
from stocksync.lifecycle import run_until_signalled

log = logging.getLogger("processor")


def main() -> None:
    logs.configure("processor")
    if sys.argv[1:]:
        # Until issue 15 the processor ran Faust's worker CLI (`python -m processor worker --loglevel info`);
        # its options have no meaning any more. Say so rather than fail a deployment that still passes them.
        log.warning(
            "ignoring command-line arguments %s: the processor takes its settings from PROCESSOR_* only",
            sys.argv[1:],
        )
    settings = ProcessorSettings()
    migrate(settings.postgres.database_url)
    connections = connections_or_exit(
        settings.connections_file,
        settings.postgres.database_url if settings.connections_table else None,
        service="processor",
        setting="PROCESSOR_CONNECTIONS_FILE",
    )

    async def service(stop: asyncio.Event) -> None:
        await run_processor(settings, connections, stop)

    run_until_signalled(service)


if __name__ == "__main__":
    main()
