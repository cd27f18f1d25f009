"""``stocksync``: the operator's command line (demo, benchmark, local infrastructure, topics, migrations)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from schemas import TOPICS
from stocksync.db import migrate as apply_migrations
from stocksync.kafka import ensure_topics
from stocksync.local import LaunchError, local_kafka, local_postgres
from stocksync.settings import KafkaSettings, PostgresSettings

app = typer.Typer(
    help="Event-driven multichannel inventory sync.", no_args_is_help=True, add_completion=False
)
console = Console()


@app.command()
def demo() -> None:
    """Orders through the real pipeline on local Kafka + PostgreSQL, with what happened at each step."""
    from stocksync.demo import run_demo

    try:
        ok = asyncio.run(run_demo(console))
    except LaunchError as exc:
        console.print(f"[red]could not start local infrastructure:[/] {exc}")
        raise typer.Exit(2) from exc
    raise typer.Exit(0 if ok else 1)


@app.command()
def bench(
    orders: Annotated[int, typer.Option(help="Orders per load level.")] = 200,
    out: Annotated[str, typer.Option(help="Where to write the JSON results.")] = "reports/bench.json",
) -> None:
    """Gateway throughput and ack latency, and webhook-to-channel latency; JSON and a table."""
    from stocksync.bench import print_tables, run_bench, write_report

    result = asyncio.run(run_bench(console, orders=orders))
    write_report(result, Path(out))
    print_tables(console, result)
    console.print(f"results written to {out}")


@app.command()
def infra() -> None:
    """Start local Kafka and PostgreSQL, print their addresses, and keep them up until Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with local_postgres() as pg, local_kafka() as kafka:
        console.print(f"PostgreSQL: {pg.describe()}\nKafka: {kafka.describe()}")
        console.print(
            f"export DATABASE_URL='{pg.url}'\nexport KAFKA_BOOTSTRAP_SERVERS='{kafka.bootstrap_servers}'"
        )
        console.print("[dim]Ctrl-C stops both and removes their data[/]")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


@app.command()
def topics() -> None:
    """Create the pipeline's topics (KAFKA_* settings) if they are missing."""
    settings = KafkaSettings()
    created = ensure_topics(settings, TOPICS)
    console.print(f"created: {', '.join(created) or 'none (all exist)'}")


@app.command()
def migrate() -> None:
    """Apply the database migrations this version ships (DATABASE_URL)."""
    applied = apply_migrations(PostgresSettings().database_url)
    console.print(f"applied: {', '.join(applied) or 'none (up to date)'}")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
