"""``python -m processor [worker options]``: apply migrations, then run the Faust worker until SIGTERM."""

from __future__ import annotations

import sys

from channels.connection_store import connections_or_exit
from processor.app import build_app
from processor.settings import ProcessorSettings
from stocksync import logs
from stocksync.db import migrate


def main() -> None:
    logs.configure("processor")
    settings = ProcessorSettings()
    migrate(settings.postgres.database_url)
    connections = connections_or_exit(
        settings.connections_file,
        settings.postgres.database_url if settings.connections_table else None,
        service="processor",
        setting="PROCESSOR_CONNECTIONS_FILE",
    )
    app = build_app(settings, connections=connections)
    args = sys.argv[1:] or ["worker", "--loglevel", "info"]
    if args[0] != "worker":
        args = ["worker", *args]
    if not settings.web_enabled and "--without-web" not in args:
        args.append("--without-web")
    sys.argv = [sys.argv[0], *args]  # Faust's CLI reads sys.argv
    app.main()


if __name__ == "__main__":
    main()
