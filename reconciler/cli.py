"""``reconcile``: one reconcile run on demand, with a progress bar per connection and a summary table.

Mounted in the operator CLI as ``stocksync reconcile``; also ``python -m reconciler.cli``. Settings come from
the environment (``RECONCILER_*``, ``KAFKA_*``, ``DATABASE_URL``), as for the service.

Exit status: 0 every connection reconciled; 1 a connection failed or the processor did not apply the backfill
in time; 2 bad arguments or configuration; 75 another run holds the lock (try again later).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Table

if TYPE_CHECKING:
    from reconciler.report import RunReport

EXIT_LOCKED = 75  # EX_TEMPFAIL

console = Console()


def _markup(text: str) -> str:
    """A phase as the bars show it: outcomes in colour (reconciler.progress names them)."""
    from reconciler.progress import COMPARED, DONE, FAILED, PROCESSOR_BEHIND

    if text in (DONE, COMPARED):
        return f"[green]{text}[/]"
    if text == PROCESSOR_BEHIND or text.startswith(FAILED.split("{", 1)[0]):
        return f"[red]{text}[/]"
    return text


class _Bars:
    """One rich progress task per connection."""

    def __init__(self, progress: Progress, connection_ids: list[str]) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {
            c: progress.add_task(c, total=None, phase="waiting", name=c) for c in connection_ids
        }

    def phase(self, connection_id: str, text: str, total: int | None = None) -> None:
        self._progress.update(self._tasks[connection_id], phase=_markup(text), total=total, completed=0)

    def advance(self, connection_id: str, n: int = 1) -> None:
        self._progress.advance(self._tasks[connection_id], n)


def reconcile(
    connection: Annotated[
        list[str] | None,
        typer.Option("--connection", "-c", help="Only this connection (repeat for several; default: all)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List and compare only: publish, write and move nothing.")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="Where to write the JSON report (default: RECONCILER_REPORT_DIR/<time>.json)."),
    ] = None,
    connections_file: Annotated[
        Path | None,
        typer.Option(help="The channel connections (TOML; default: RECONCILER_CONNECTIONS_FILE)."),
    ] = None,
) -> None:
    """Backfill the orders the webhooks missed, then make every channel show what the master allows."""
    from prometheus_client import CollectorRegistry

    from channels.connection import ConnectionsFileError
    from channels.connection_store import load_for_service
    from reconciler.app import build_reconciler
    from reconciler.settings import ReconcilerSettings
    from reconciler.store import AlreadyRunning
    from stocksync.db import migrate

    settings = ReconcilerSettings()
    path = connections_file or settings.connections_file
    database_url = settings.postgres.database_url
    migrate(database_url)
    try:
        registry = load_for_service(
            path, database_url if settings.connections_table else None, service="reconcile"
        )
    except ConnectionsFileError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    sources = [str(path)] if path else []
    sources += ["the connections table"] if settings.connections_table else []
    where = " or ".join(sources) or "no connections file or table"
    chosen = list(registry)
    if connection:
        unknown = [c for c in connection if registry.get(c) is None]
        if unknown:
            known = ", ".join(c.id for c in registry) or "none"
            console.print(f"[red]no connection {', '.join(unknown)} in {where}[/] (known: {known})")
            raise typer.Exit(2)
        chosen = [c for c in chosen if c.id in connection]
    disabled = [c.id for c in chosen if not c.enabled]
    if disabled:
        console.print(f"[yellow]skipping disabled connections: {', '.join(disabled)}[/]")
    chosen = [c for c in chosen if c.enabled]
    if not chosen:
        console.print(f"[red]no enabled connection to reconcile in {where}[/]")
        raise typer.Exit(2)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.fields[name]:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[phase]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bars = _Bars(progress, [c.id for c in chosen])

        async def run_once() -> RunReport:
            async with build_reconciler(
                settings, connections=chosen, registry=CollectorRegistry(), progress=bars, publish=not dry_run
            ) as reconciler:
                return await reconciler.run(dry_run=dry_run, report_path=report)

        try:
            result = asyncio.run(run_once())
        except AlreadyRunning as exc:
            progress.stop()
            console.print(f"[yellow]{exc}[/]")
            raise typer.Exit(EXIT_LOCKED) from exc

    title = f"reconcile run {result.run_id}" + (" (dry run: nothing published or written)" if dry_run else "")
    table = Table(title=title)
    for col in (
        "connection",
        "orders listed",
        "backfilled" if not dry_run else "would backfill",
        "already applied",
        "quarantined",
        "drifts",
        "corrected" if not dry_run else "would correct",
        "of which written",
        "checkpoint",
        "failure",
    ):
        table.add_column(col)
    for c in result.connections:
        fixed = (
            c.drifts_corrected if not dry_run else sum(1 for d in c.drifts if d.action.startswith("would"))
        )
        table.add_row(
            c.connection_id,
            str(c.orders_listed) if c.backfill != "unavailable" else "no order list",
            str(c.orders_backfilled),
            str(c.events_duplicate),
            str(c.rejected),
            str(c.drifts_found),
            str(fixed),
            str(c.drifts_written),
            c.checkpoint_after.isoformat(timespec="seconds") if c.checkpoint_after else "-",
            f"[red]{c.failed_in}: {(c.failure or '')[:100]}[/]" if c.failure else "",
        )
    console.print(table)
    drifts = [(c.connection_id, d) for c in result.connections for d in c.drifts]
    if drifts:
        detail = Table(title="drifts")
        for col in ("connection", "sku", "channel showed", "master allows", "cause", "action"):
            detail.add_column(col)
        for conn_id, d in drifts[:200]:
            shown = "-" if d.channel_value is None else str(d.channel_value)
            detail.add_row(conn_id, d.sku, shown, str(d.expected), d.cause, d.action)
        console.print(detail)
        if len(drifts) > 200:
            console.print(f"... and {len(drifts) - 200} more in the report")
    totals = result.totals()
    console.print(
        f"backfilled {totals['orders_backfilled']} orders ({totals['events_published']} events published), "
        f"{totals['drifts_corrected']} of {totals['drifts_found']} drifts corrected "
        f"({totals['drifts_written']} written by the reconciler, the rest by the fan-out from the backfill); "
        f"report: {result.report_path}"
    )
    if result.error:
        console.print(f"[red]{result.error}[/]")
    if not result.ok:
        raise typer.Exit(1)


app = typer.Typer(add_completion=False)
app.command()(reconcile)

if __name__ == "__main__":
    app()
