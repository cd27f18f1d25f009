"""``python -m fanout [--channel NAME]``: run one channel's fan-out worker until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from channels.connection import ConnectionRegistry
from fanout.settings import FanoutSettings
from fanout.worker import run_fanout
from stocksync import logs
from stocksync.lifecycle import run_until_signalled


def main(
    channel: Annotated[str | None, typer.Option(help="Channel to serve (default: FANOUT_CHANNEL).")] = None,
) -> None:
    logs.configure("fanout")
    settings = FanoutSettings() if channel is None else FanoutSettings(channel=channel)
    connections = ConnectionRegistry.from_file(settings.connections_file)

    async def service(stop: asyncio.Event) -> None:
        await run_fanout(settings, connections, stop)

    run_until_signalled(service)


if __name__ == "__main__":
    typer.run(main)
