"""``stocksync``: the operator's command line (topics, migrations, audit, replay, dead letters, connections;
and, with the lab installed, the demo, the benchmark and local infrastructure).

Errors are answered in cli.errors (one or two lines, exit 1 or 2; ``--debug`` for the traceback). The lab is
imported only inside its commands, so a deployment without it runs every other command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvloop
from rich.console import Console
from rich.table import Table

from cli.connections import connections_app, tenants_app
from cli.errors import BoundaryGroup, LabMissing, kafka_reachable
from cli.feed import feed_app
from cli.policy import policy_app
from cli.subscribers import subscribers_app
from reconciler.cli import reconcile as reconcile_command
from schemas import TOPICS
from stocksync.db import migrate as apply_migrations
from stocksync.kafka import ensure_topics
from stocksync.settings import KafkaSettings, PostgresSettings

T = TypeVar("T")

app = typer.Typer(
    cls=BoundaryGroup,
    help="Event-driven multichannel inventory sync.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # --debug shows a plain traceback: rich's would print locals (secrets)
)
console = Console(emoji=False)  # ids such as "admin:receipt:R-1" must print as they are, not as 🧾
app.add_typer(connections_app, name="connections")
app.add_typer(tenants_app, name="tenants")
app.add_typer(policy_app, name="policy")
app.add_typer(feed_app, name="feed")
app.add_typer(subscribers_app, name="subscribers")
app.command("reconcile")(reconcile_command)


@app.callback()
def root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="STOCKSYNC_DEBUG", help="Show the traceback of an error, not a short answer."
        ),
    ] = False,
) -> None:
    """Event-driven multichannel inventory sync."""


@contextlib.contextmanager
def lab_required(command: str) -> Iterator[None]:
    """Import the lab inside this block: a missing lab (or extra) becomes a one-line answer (exit 2)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise LabMissing(command, (exc.name or "lab").split(".")[0]) from exc


def on_local_infra(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` (which starts local Kafka and PostgreSQL) on uvloop: the load it generates and the
    simulators it serves share the machine with what they measure. LaunchError is answered by the boundary."""
    return uvloop.run(main)


@app.command()
def demo(
    skus: Annotated[int, typer.Option(help="SKUs on sale, each with a small stock (5 to 40).")] = 20,
    orders: Annotated[int, typer.Option(help="Buyers' orders, spread over the nine channels.")] = 2000,
    seconds: Annotated[
        float | None,
        typer.Option(
            help="Wall-clock seconds the sale is played in. Default: the sale's own length (real time); "
            "any other value compresses or stretches the sale's clock and the run says it is not real time.",
            show_default="the sale's length",
        ),
    ] = None,
    sale_minutes: Annotated[
        float, typer.Option(help="How long the sale lasts by its own clock (a Lightning-Deal rush).")
    ] = 1.0,
    poll_minutes: Annotated[
        float | None,
        typer.Option(
            help="The polling baseline always runs at 1, 5 and 15 minutes; another interval given here is "
            "added to them (one of those three adds nothing).",
            show_default="none",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the order stream (the same seed, the same orders).")] = 8,
    out: Annotated[Path, typer.Option(help="Directory for demo.json and demo.png.")] = Path("reports"),
) -> None:
    """A real-time flash sale on nine marketplaces through the real pipeline (local Kafka + PostgreSQL) under
    never_cancel and under mirror, and the same orders polled every 1, 5 and 15 minutes: orders to cancel
    and sell-through, as tables, JSON and a PNG. Exit 0 when under never_cancel nothing was oversold, every
    webhook was accepted and every channel ended at its grant."""
    with lab_required("demo"):
        from lab.demo import DemoOptions, run_demo

    try:
        options = DemoOptions(
            skus=skus,
            orders=orders,
            seconds=sale_minutes * 60 if seconds is None else seconds,
            sale_minutes=sale_minutes,
            poll_minutes=poll_minutes,
            seed=seed,
            out=out,
        )
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    ok = on_local_infra(run_demo(console, options))
    raise typer.Exit(0 if ok else 1)


@app.command()
def bench(
    gateway_seconds: Annotated[float, typer.Option(help="Measured seconds of gateway load.")] = 10.0,
    concurrency: Annotated[int, typer.Option(help="Concurrent webhook senders for the gateway.")] = 64,
    processor_events: Annotated[
        int, typer.Option(help="Events through the processor per batch size.")
    ] = 20_000,
    slow_seconds: Annotated[float, typer.Option(help="Seconds at 50 orders/minute (nine channels).")] = 48.0,
    medium_seconds: Annotated[float, typer.Option(help="Seconds at 200 orders/s.")] = 10.0,
    fast_seconds: Annotated[float, typer.Option(help="Seconds at 2,000 orders/s.")] = 5.0,
    profile: Annotated[
        bool,
        typer.Option(help="Profile the gateway with py-spy in a run of its own (not the measured ones)."),
    ] = True,
    out: Annotated[str, typer.Option(help="Where to write the JSON results.")] = "reports/bench.json",
) -> None:
    """Gateway, processor and end-to-end benchmarks in one run; JSON and tables."""
    with lab_required("bench"):
        from lab.bench import BenchConfig, print_tables, run_bench, write_report

    config = BenchConfig(
        gateway_seconds=gateway_seconds,
        concurrency=concurrency,
        processor_events=processor_events,
        slow_seconds=slow_seconds,
        medium_seconds=medium_seconds,
        fast_seconds=fast_seconds,
        profile=profile,
        profile_out=Path(out).with_name("gateway-profile.txt"),
    )
    result = on_local_infra(run_bench(console, config))
    write_report(result, Path(out))
    print_tables(console, result)
    console.print(f"results written to {out}")


@app.command()
def infra() -> None:
    """Start local Kafka and PostgreSQL, print their addresses, and keep them up until Ctrl-C."""
    with lab_required("infra"):
        from lab.local import local_kafka, local_postgres

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
    settings = kafka_reachable(KafkaSettings())
    created = ensure_topics(settings, TOPICS)
    console.print(f"created: {', '.join(created) or 'none (all exist)'}")


@app.command()
def migrate() -> None:
    """Apply the database migrations this version ships (DATABASE_URL)."""
    applied = apply_migrations(PostgresSettings().database_url)
    console.print(f"applied: {', '.join(applied) or 'none (up to date)'}")


@app.command()
def replay(
    into: Annotated[str, typer.Option(help="URL of a new, empty database to rebuild into.")],
    batch: Annotated[int, typer.Option(help="Events per transaction.")] = 1000,
) -> None:
    """Rebuild inventory, ledger and processed_events from inventory.events into an empty database, then
    compare its checksum with the live database (DATABASE_URL)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from processor.checksum import checksum
    from processor.replay import ReplayError
    from processor.replay import replay as run_replay
    from processor.settings import ProcessorSettings

    kafka, live = kafka_reachable(KafkaSettings()), PostgresSettings().database_url
    skew = timedelta(
        seconds=ProcessorSettings().clock_skew_s
    )  # the live processor's rule, for an equal result
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("replay", total=None)
        try:
            stats = asyncio.run(
                run_replay(
                    kafka,
                    into,
                    batch=batch,
                    skew=skew,
                    progress=lambda d, t: bar.update(task, completed=d, total=t),
                )
            )
        except ReplayError as exc:
            console.print(f"[red]replay refused:[/] {exc}")
            raise typer.Exit(2) from exc
    if any(stats.first_offsets.values()):
        console.print(
            "[yellow]the topic no longer holds its oldest records (retention): the rebuild starts later "
            "than the live history, so it cannot match it[/]"
        )
    live_sum, rebuilt = checksum(live), checksum(into)
    table = Table(title=f"replayed {stats.records} records ({stats.undecodable} undecodable)")
    for col in ("table", "live rows", "rebuilt rows", "live md5", "rebuilt md5", "equal"):
        table.add_column(col)
    for name in live_sum:
        a, b = live_sum[name], rebuilt[name]
        table.add_row(name, str(a.rows), str(b.rows), a.md5[:12], b.md5[:12], "yes" if a == b else "NO")
    console.print(table)
    if live_sum != rebuilt:
        console.print("[red]checksums differ[/]: is the live processor caught up with inventory.events?")
        raise typer.Exit(1)
    console.print("[green]checksums match[/]: the topic rebuilds the live state")


@app.command()
def audit(
    tenant: str,
    sku: str,
    limit: Annotated[int, typer.Option(help="Most changes to show, newest first.")] = 50,
) -> None:
    """Why is this SKU at its count? Every change, newest first, with the quantity after each."""
    from psycopg import AsyncConnection

    from processor.audit import allocation_trail, trail

    async def fetch() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        async with await AsyncConnection.connect(PostgresSettings().database_url) as conn:
            return (
                await trail(conn, tenant, sku, limit=limit),
                await allocation_trail(conn, tenant, sku, limit=limit),
            )

    rows, allocations = asyncio.run(fetch())
    if not rows:
        console.print(f"no ledger rows for {tenant}/{sku}: the SKU never changed, or the name is wrong")
        raise typer.Exit(1)
    table = Table(title=f"{tenant}/{sku}: newest first")
    for col in ("applied at", "kind", "change", "outcome", "after", "version", "channel", "event", "reason"):
        table.add_column(col)
    for r in rows:
        change = (
            f"= {r['absolute']}" if r["absolute"] is not None else f"{r['delta']:+d}" if r["delta"] else ""
        )
        table.add_row(
            str(r["applied_at"])[:23],
            str(r["kind"]),
            change,
            str(r["outcome"]),
            str(r["after"]),
            str(r["version"]),
            str(r["channel"]),
            str(r["event_id"]),
            str(r["reason"] or ""),
        )
    console.print(table)
    if allocations:
        grants = Table(title=f"{tenant}/{sku}: allocation changes (policy never_cancel), newest first")
        for col in ("at", "seq", "connection", "grant", "write", "available", "why"):
            grants.add_column(col)
        for a in allocations:
            write = (
                ""
                if a["write_quantity"] is None
                else f"set {a['write_quantity']}"
                if a["write_expect"] is None
                else f"{a['write_expect']} -> {a['write_quantity']} (compare-and-set)"
            )
            grants.add_row(
                str(a["at"])[:23],
                str(a["seq"]),
                str(a["connection_id"]),
                f"{a['granted_before']} -> {a['granted_after']}",
                write,
                str(a["available"] if a["available"] is not None else ""),
                str(a["reason"]),
            )
        console.print(grants)


dlq = typer.Typer(
    help="The dead-letter topics: updates the fan-out could not deliver to a channel (list, replay), and "
    "inventory events the processor could not apply (events)."
)
app.add_typer(dlq, name="dlq")


@dlq.command("events")
def dlq_events(tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None) -> None:
    """Every inventory event the processor dead-lettered (processor.dlq), oldest first, with why."""
    from schemas import processor_dlq
    from stocksync.kafka import read_to_end

    letters = []
    for msg in read_to_end(kafka_reachable(KafkaSettings()), processor_dlq.TOPIC, missing_ok=True):
        try:
            letter = processor_dlq.decode(msg.value() or b"")
        except ValueError:
            continue
        if tenant is None or letter.tenant == tenant:
            letters.append(letter)
    letters.sort(key=lambda d: d.dead_lettered_at)
    table = Table(title=f"{len(letters)} dead-lettered inventory events")
    for col in ("dead-lettered at", "problem", "tenant", "sku", "event"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason")
    for d in letters:
        table.add_row(
            d.dead_lettered_at.isoformat(timespec="seconds"),
            d.problem,
            d.tenant or "-",
            d.sku or "-",
            d.event_id or "-",
            d.reason[:160],
        )
    console.print(table)


@dlq.command("list")
def dlq_list(connection: Annotated[str | None, typer.Option(help="Only this connection.")] = None) -> None:
    """Every dead-lettered update, oldest first, with the error that stopped it."""
    from fanout.dlq import read_dead_letters

    letters = read_dead_letters(kafka_reachable(KafkaSettings()), connection=connection)
    table = Table(title=f"{len(letters)} dead-lettered updates")
    for col in ("failed at", "connection", "sku", "quantity", "version", "attempts", "status", "last error"):
        table.add_column(col)
    for d in letters:
        table.add_row(
            d.failed_at.isoformat(timespec="seconds"),
            d.connection_id,
            d.sku,
            str(d.quantity),
            str(d.version),
            str(d.attempts),
            str(d.status or "-"),
            d.last_error[:120],
        )
    console.print(table)


@dlq.command("replay")
def dlq_replay(
    connection: Annotated[str | None, typer.Option(help="Only this connection.")] = None,
    connections_file: Annotated[
        Path | None,
        typer.Option(
            envvar="FANOUT_CONNECTIONS_FILE",
            help="A TOML connections file, beside the connections table (which wins where an id is in both).",
        ),
    ] = None,
) -> None:
    """Set each dead-lettered (connection, SKU) to what the master allows now; safe to run again."""
    from channels.connection_store import load_all
    from fanout.dlq import read_dead_letters
    from fanout.dlq import replay as run_replay

    database_url = PostgresSettings().database_url
    letters = read_dead_letters(kafka_reachable(KafkaSettings()), connection=connection)
    connections = load_all(connections_file, database_url, setting="FANOUT_CONNECTIONS_FILE")
    results = asyncio.run(run_replay(letters, connections, database_url))
    table = Table(title=f"replayed {len(results)} (connection, SKU) pairs from {len(letters)} dead letters")
    for col in ("connection", "sku", "outcome", "channel had", "master allows", "detail"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.connection_id, r.sku, r.outcome, str(r.channel_had), str(r.master_allows), r.detail[:120]
        )
    console.print(table)
    if any(r.outcome in ("failed", "unknown_connection") for r in results):
        raise typer.Exit(1)


def main() -> None:
    """The ``stocksync`` entry point; errors are answered by the app's BoundaryGroup (cli.errors)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
