"""``python -m fanout [--channel NAME ...]``: fan-out workers, one group per channel, until SIGTERM."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from channels.connection_store import connections_or_exit
from fanout.app import run_fanout
from fanout.settings import FanoutSettings
from fanout.subscribers import SubscriberSettings, run_subscribers
from stocksync import logs
from stocksync.lifecycle import run_until_signalled


def main(
    channel: Annotated[
        list[str] | None,
        typer.Option(help="Channel to serve; repeat for several (default: FANOUT_CHANNELS)."),
    ] = None,
    subscribers: Annotated[
        bool,
        typer.Option(
            "--subscribers",
            help="Send the signed availability webhooks of agent_subscribers (group fanout.subscribers) "
            "instead of serving channels (fanout/subscribers.py).",
        ),
    ] = False,
) -> None:
    logs.configure("fanout")
    if subscribers:
        if channel:
            raise typer.BadParameter(
                "--subscribers runs no channel workers; run --channel in another process"
            )
        subscriber_settings = SubscriberSettings()

        async def send_webhooks(stop: asyncio.Event) -> None:
            await run_subscribers(subscriber_settings, stop)

        run_until_signalled(send_webhooks)
        return
    settings = FanoutSettings() if not channel else FanoutSettings(channels=channel)
    connections = connections_or_exit(
        settings.connections_file,
        settings.postgres.database_url if settings.connections_table else None,
        service="fanout",
        setting="FANOUT_CONNECTIONS_FILE",
    )

    async def service(stop: asyncio.Event) -> None:
        await run_fanout(settings, connections, stop)

    run_until_signalled(service)


if __name__ == "__main__":
    typer.run(main)
