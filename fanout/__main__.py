"""``python -m fanout [--channel NAME ...]``: fan-out workers, one group per channel, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from channels.connection import ConnectionsFileError
from fanout.settings import FanoutSettings
from fanout.worker import run_fanout
from stocksync import logs
from stocksync.connections import load_for_service
from stocksync.lifecycle import run_until_signalled

log = logging.getLogger("fanout")


def main(
    channel: Annotated[
        list[str] | None,
        typer.Option(help="Channel to serve; repeat for several (default: FANOUT_CHANNELS)."),
    ] = None,
) -> None:
    logs.configure("fanout")
    settings = FanoutSettings() if not channel else FanoutSettings(channels=channel)
    try:
        connections = load_for_service(
            settings.connections_file,
            settings.postgres.database_url if settings.connections_table else None,
            service="fanout",
            setting="FANOUT_CONNECTIONS_FILE",
        )
    except ConnectionsFileError as exc:  # an invalid connection is refused, never served half-configured
        log.error("fanout cannot start: %s", exc)
        raise SystemExit(2) from None

    async def service(stop: asyncio.Event) -> None:
        await run_fanout(settings, connections, stop)

    run_until_signalled(service)


if __name__ == "__main__":
    typer.run(main)
