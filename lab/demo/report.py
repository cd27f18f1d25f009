"""The demo's console tables and the dict written to ``demo.json``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from lab.demo.model import (
    DemoOptions,
    EventDriven,
)
from lab.polling import PollingResult


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_tables(
    console: Console, options: DemoOptions, ed: EventDriven, polling: PollingResult, stock_units: int
) -> None:
    summary = Table(
        title=f"{ed.orders:,} orders for {stock_units} units of {options.skus} SKUs "
        f"({options.sale_minutes:g} min of sale in {options.seconds:g} s)",
        box=box.SIMPLE_HEAD,
    )
    summary.add_column("")
    summary.add_column("event-driven", justify="right")
    summary.add_column(f"polling {options.poll_minutes:g} min", justify="right")
    rows = [
        ("orders", f"{ed.orders:,}", f"{polling.orders:,}"),
        ("refused by the storefront", f"{ed.refused_by_channel:,}", f"{polling.refused:,}"),
        ("taken by a storefront", f"{ed.accepted + ed.rejected:,}", f"{polling.accepted:,}"),
        ("accepted (can be filled)", f"{ed.accepted:,}", f"{polling.accepted - polling.cancellations:,}"),
        ("rejected by the master", f"{ed.rejected:,}", "no master check"),
        ("units sold", f"{ed.units_sold:,}", f"{polling.units_sold:,}"),
        ("oversold units", f"{ed.oversells:,}", f"{polling.oversells:,}"),
        ("cancellations needed", f"{ed.cancellations_needed:,}", f"{polling.cancellations:,}"),
        (
            "propagation p50 / p99 ms",
            f"{fmt(ed.p50_ms)} / {fmt(ed.p99_ms)}",
            f"≤ {options.poll_minutes:g} min",
        ),
        ("outbound calls (429s)", f"{ed.outbound_calls:,} ({ed.rate_limited})", f"{polling.syncs} syncs x 9"),
        ("dead letters (DLQ), replayed", f"{ed.dlq}, {ed.dlq_replayed}", "-"),
    ]
    for row in rows:
        summary.add_row(*row)
    console.print(summary)
    console.print(
        "[dim]refused: the channel showed fewer units than ordered. rejected: a channel took the order "
        "before "
        "it heard the last units were gone; the master refused it (no stock taken), so it must be cancelled. "
        "oversold: units sold beyond the physical stock. The sale is played "
        f"{options.sale_minutes * 60 / options.seconds:.0f}x faster than its clock: in sale time "
        "the pipeline reacts that many times slower, so its rejections "
        "are an upper bound for a real-time sale.[/]"
    )

    # narrow enough for an 80-column terminal (orders = refused + applied + rejected; all are in the JSON)
    per = Table(
        title="Per channel, event-driven",
        caption="p50/p99: ms from the sale at the gateway to the channel confirming its new count",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),  # plus the box's own column separator
        pad_edge=False,
    )
    columns = ("channel", "refused", "applied", "rejected", "p50", "p99", "calls (429)", "DLQ")
    for col in columns:
        per.add_column(col, justify="left" if col == "channel" else "right", no_wrap=True)
    for ch, t in ed.per_channel.items():
        cells = (t.refused, t.applied, t.rejected, fmt(t.p50_ms), fmt(t.p99_ms))
        per.add_row(ch, *(str(c) for c in cells), f"{t.calls} ({t.rate_limited})", str(t.dlq))
    console.print(per)


def report(
    options: DemoOptions, stock: dict[str, int], ed: EventDriven, polling: PollingResult, elapsed_s: float
) -> dict[str, Any]:
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "stock": stock,
        "elapsed_s": round(elapsed_s, 1),
        "event_driven": {
            "orders": ed.orders,
            "accepted": ed.accepted,
            "rejected": ed.rejected,
            "oversells": ed.oversells,
            "p50_ms": ed.p50_ms,
            "p99_ms": ed.p99_ms,
            "refused_by_channel": ed.refused_by_channel,
            "units_sold": ed.units_sold,
            "cancellations_needed": ed.cancellations_needed,
            "outbound_calls": ed.outbound_calls,
            "rate_limited": ed.rate_limited,
            "dlq": ed.dlq,
            "dlq_replayed": ed.dlq_replayed,
            "webhooks_not_accepted": ed.webhooks_not_accepted,
            "out_of_sync": ed.skus_out_of_sync,
            "per_channel": {ch: asdict(t) for ch, t in ed.per_channel.items()},
        },
        "polling": {
            "orders": polling.orders,
            "accepted": polling.accepted,
            "oversells": polling.oversells,
            "refused": polling.refused,
            "units_sold": polling.units_sold,
            "cancellations_needed": polling.cancellations,
            "syncs": polling.syncs,
            "undone_units": polling.undone_units,
            "poll_minutes": options.poll_minutes,
            "oversold_by_sku": polling.oversold_by_sku,
        },
    }
