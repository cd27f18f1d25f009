"""The demo's console tables and the dict written to ``demo.json``.

Three ways on the same orders: ``never_cancel`` and ``mirror`` through the real pipeline, and the polling
baseline at each interval. For each: orders; accepted (taken by a storefront and filled); cancellations
(taken by a storefront, not fillable: orders the seller must cancel); units sold (units of the filled orders);
sell-through (units sold over, per SKU, the smaller of its stock and the units asked for).
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from allocation.rules import Policy
from lab.demo.ideal import Instant
from lab.demo.model import TARGET_SELL_THROUGH, DemoOptions, EventDriven
from lab.polling import Order, PollingResult, demanded


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def pct(value: float) -> str:
    return f"{value * 100:.1f} %"


@dataclass(frozen=True)
class Baseline:
    """The polling baseline at one interval: the headline run (first pass half an interval after the
    opening) and the same sale at every phase of the job's cycle."""

    minutes: float
    headline: PollingResult
    phases: list[PollingResult]
    sellable: int

    @property
    def accepted(self) -> int:
        return self.headline.accepted - self.headline.cancellations

    @property
    def cancellations(self) -> int:
        return self.headline.cancellations

    @property
    def units_sold(self) -> int:
        return self.headline.units_filled

    @property
    def sell_through(self) -> float:
        return self.units_sold / self.sellable if self.sellable else 1.0

    def spread(self) -> dict[str, Any]:
        """Cancellations, sell-through and passes during the sale over the phases of the job's cycle."""
        cancels = [r.cancellations for r in self.phases]
        through = [r.units_filled / self.sellable if self.sellable else 1.0 for r in self.phases]
        return {
            "phases": len(self.phases),
            "first_pass_s": [round(r.phase_s, 1) for r in self.phases],
            "cancellations": {"min": min(cancels), "median": statistics.median(cancels), "max": max(cancels)},
            "sell_through": {"min": round(min(through), 4), "max": round(max(through), 4)},
            "passes_in_sale": sorted({r.syncs for r in self.phases}),
        }


def machine() -> dict[str, Any]:
    """What the demo ran on: CPU model, logical cores, architecture, memory."""
    cpu = platform.processor() or ""
    memory_gib: float | None = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_gib = round(int(line.split()[1]) / 1024**2, 1)
                    break
    except OSError:
        pass  # not Linux: platform.processor() is what there is
    return {
        "cpu": cpu or "unknown CPU",
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
    }


def unsold(nc: EventDriven, stock: dict[str, int], asked: dict[str, int], instant: Instant) -> dict[str, Any]:
    """Where never_cancel's unsold sellable units are: per SKU that sold less than it could, its stock, the
    units asked, sold, left in the master, granted to channels at the end, buyers turned away by a storefront
    (while the SKU had units left: it ended with some), and what instant propagation sells of it."""
    out = {}
    for sku, q in stock.items():
        best = min(q, asked.get(sku, 0))
        sold = nc.sold_by_sku.get(sku, 0)
        if sold >= best:
            continue
        out[sku] = {
            "stock": q,
            "asked": asked.get(sku, 0),
            "sold": sold,
            "left": nc.left_by_sku.get(sku, 0),
            "granted_at_end": nc.stranded.get(sku, 0),
            "buyers_turned_away": nc.refused_by_sku.get(sku, 0),
            "instant_sold": q - instant.left_by_sku.get(sku, q),
        }
    return out


def target_met(nc: EventDriven) -> bool:
    return nc.cancellations_needed == 0 and nc.sell_through >= TARGET_SELL_THROUGH


def print_tables(
    console: Console,
    options: DemoOptions,
    runs: dict[Policy, EventDriven],
    polling: dict[str, Baseline],
    stock: dict[str, int],
    asked: dict[str, int],
    instant: Instant,
    host: dict[str, Any],
) -> None:
    nc = runs["never_cancel"]
    clock = (
        f"{options.sale_minutes:g} min of sale in real time"
        if options.real_time
        else f"{options.sale_minutes:g} min of sale in {options.seconds:g} s: NOT real time"
    )
    # narrow enough for an 80-column terminal (orders = refused + taken; all of it is in the JSON)
    headline = Table(
        title=f"{nc.orders:,} orders for {sum(stock.values())} units of {options.skus} SKUs ({clock}); "
        f"at best {nc.sellable} units can sell",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),
        pad_edge=False,
        show_edge=False,
    )
    columns = ("", "refused", "taken", "accepted", "to cancel", "sold", "sell-thr.", "p50/p99 ms")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for col in columns:
        headline.add_column(col, justify="left" if not col else "right", no_wrap=True)
    for policy, ed in runs.items():
        headline.add_row(
            policy,
            f"{ed.refused_by_channel:,}",
            f"{ed.taken:,}",
            f"{ed.accepted:,}",
            f"{ed.cancellations_needed:,}",
            f"{ed.units_sold:,}",
            pct(ed.sell_through),
            f"{ms(ed.p50_ms)}/{ms(ed.p99_ms)}",
        )
    for key, b in polling.items():
        r = b.headline
        headline.add_row(
            f"polling {key}",
            f"{r.refused:,}",
            f"{r.accepted:,}",
            f"{b.accepted:,}",
            f"{b.cancellations:,}",
            f"{b.units_sold:,}",
            pct(b.sell_through),
            f"{r.syncs} pass{'' if r.syncs == 1 else 'es'}",
        )
    console.print(headline)
    console.print(
        "[dim]refused: the storefront showed fewer units than ordered (the buyer went away). taken: the "
        "storefront took the order; accepted: the master filled it; to cancel: the master had no stock for "
        "it, the seller must cancel it. sell-through: units sold / sum over SKUs of min(stock, units "
        "asked). Polling: the job's first pass comes half an interval after the opening (a sale opening at "
        f"a random moment of its cycle); a sale of {options.sale_minutes:g} min sees no pass of a longer "
        "interval, so every channel sells the whole stock. p50/p99: ms from the sale at the gateway to the "
        "channel confirming its new count (fan-out's sync_lag_seconds); for polling, the job's passes "
        "during the sale.[/]"
    )
    for key, b in polling.items():
        s = b.spread()
        console.print(
            f"[dim]polling {key} over {s['phases']} phases of its cycle: {s['cancellations']['min']} to "
            f"{s['cancellations']['max']} orders to cancel (median {s['cancellations']['median']:.0f}), "
            f"{pct(s['sell_through']['min'])} to {pct(s['sell_through']['max'])} sell-through, "
            f"{'/'.join(str(n) for n in s['passes_in_sale'])} passes during the sale[/]"
        )

    details = Table(title="Event-driven runs", box=box.SIMPLE_HEAD)
    details.add_column("")
    for policy in runs:
        details.add_column(policy, justify="right")
    rows: list[tuple[str, ...]] = [
        ("sale played in (s)", *(f"{ed.sale_s:.1f}" for ed in runs.values())),
        ("oversold units", *(f"{ed.oversells}" for ed in runs.values())),
        ("outbound calls (429s)", *(f"{ed.outbound_calls:,} ({ed.rate_limited})" for ed in runs.values())),
        ("dead letters (DLQ), replayed", *(f"{ed.dlq}, {ed.dlq_replayed}" for ed in runs.values())),
        ("webhooks never accepted", *(f"{ed.webhooks_not_accepted}" for ed in runs.values())),
        (
            "channels in sync at the end",
            *(
                ("yes" if not ed.skus_out_of_sync else f"NO ({len(ed.skus_out_of_sync)})")
                for ed in runs.values()
            ),
        ),
        ("units left in the master", *(f"{sum(ed.left_by_sku.values())}" for ed in runs.values())),
    ]
    for row in rows:
        details.add_row(*row)
    console.print(details)
    lost = unsold(nc, stock, asked, instant)
    if lost:
        missing = nc.sellable - nc.units_sold
        left = sum(nc.left_by_sku.values())
        on_channels = sum(nc.stranded.values())
        ratio = max(v["asked"] / v["stock"] for v in lost.values())
        turned_away = sum(v["buyers_turned_away"] for v in lost.values() if v["left"] > 0)
        console.print(
            f"[dim]never_cancel: {missing} of the {nc.sellable} sellable units did not sell, all of SKUs "
            f"whose buyers asked for at most {ratio:.2f}x their stock ({len(lost)} SKUs: "
            f"{', '.join(lost)}). The master ended with {left} units: {on_channels} granted to channels "
            f"(shown on storefronts whose buyers stopped coming), {left - on_channels} in its reserve; "
            f"{turned_away} buyers of the SKUs that ended with units left were turned away by a storefront "
            "showing fewer units than they ordered. The same rules with instant propagation "
            f"(lab.demo.ideal) sell {instant.units_sold} units ({pct(instant.units_sold / nc.sellable)}): "
            + (
                f"the pipeline's latency and budgets cost {diff} units, the allocation rules the rest.[/]"
                if (diff := instant.units_sold - nc.units_sold) >= 0
                else f"the pipeline sold {-diff} more (it decides per batch); the loss is the rules'.[/]"
            )
        )

    # narrow enough for an 80-column terminal (orders = refused + applied + rejected; all are in the JSON)
    for policy, ed in runs.items():
        per = Table(
            title=f"Per channel, {policy}",
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

    met = target_met(nc)
    verdict = "[green]MET[/]" if met else "[red]NOT MET[/]"
    console.print(
        f"target (never_cancel: 0 orders to cancel, sell-through ≥ {TARGET_SELL_THROUGH:.0%}): {verdict} "
        f"({nc.cancellations_needed} to cancel, {pct(nc.sell_through)} sell-through)"
    )
    console.print(
        f"machine: {host['cpu']}, {host['cores']} logical cores ({host['arch']}, "
        f"{host['memory_gib'] or '?'} GiB, Python {host['python']})"
    )
    if not options.real_time:
        console.print(f"[bold yellow]warning: {options.clock_warning()}[/]")


def event_driven_dict(ed: EventDriven) -> dict[str, Any]:
    return {
        "policy": ed.policy,
        "tenant": ed.tenant,
        "orders": ed.orders,
        "accepted": ed.accepted,
        "cancellations": ed.cancellations_needed,
        "units_sold": ed.units_sold,
        "sell_through": round(ed.sell_through, 4),
        "p50_ms": ed.p50_ms,
        "p99_ms": ed.p99_ms,
        "sellable": ed.sellable,
        "taken": ed.taken,
        "rejected": ed.rejected,
        "cancellations_needed": ed.cancellations_needed,  # the old report's name of `cancellations`
        "oversells": ed.oversells,
        "refused_by_channel": ed.refused_by_channel,
        "outbound_calls": ed.outbound_calls,
        "rate_limited": ed.rate_limited,
        "dlq": ed.dlq,
        "dlq_replayed": ed.dlq_replayed,
        "webhooks_not_accepted": ed.webhooks_not_accepted,
        "out_of_sync": ed.skus_out_of_sync,
        "sale_s": round(ed.sale_s, 1),
        "cancelled_at_s": [round(t, 1) for t in ed.cancelled_at],
        "sold_by_sku": ed.sold_by_sku,
        "left_by_sku": ed.left_by_sku,
        "refused_by_sku": ed.refused_by_sku,
        **({"granted_at_end_by_sku": ed.stranded} if ed.policy == "never_cancel" else {}),
        "per_channel": {ch: asdict(t) for ch, t in ed.per_channel.items()},
    }


def polling_dict(b: Baseline) -> dict[str, Any]:
    r = b.headline
    return {
        "orders": r.orders,
        "accepted": b.accepted,
        "cancellations": b.cancellations,
        "units_sold": b.units_sold,
        "sell_through": round(b.sell_through, 4),
        "sellable": b.sellable,
        "taken": r.accepted,
        "refused": r.refused,
        "units_taken": r.units_sold,
        "oversells": r.oversells,
        "poll_minutes": b.minutes,
        "first_pass_s": r.phase_s,
        "syncs": r.syncs,
        "undone_units": r.undone_units,
        "oversold_by_sku": r.oversold_by_sku,
        "cancelled_at_s": [round(t, 1) for t in r.cancelled_at],
        "by_phase": b.spread(),
    }


def report(
    options: DemoOptions,
    stock: dict[str, int],
    orders: list[Order],
    runs: dict[Policy, EventDriven],
    polling: dict[str, Baseline],
    instant: Instant,
    elapsed_s: float,
    host: dict[str, Any],
) -> dict[str, Any]:
    nc = runs["never_cancel"]
    asked = demanded(orders)
    runs_out: dict[str, dict[str, Any]] = {policy: event_driven_dict(ed) for policy, ed in runs.items()}
    runs_out["never_cancel"]["unsold"] = unsold(nc, stock, asked, instant)
    runs_out["never_cancel"]["instant_propagation"] = {
        "units_sold": instant.units_sold,
        "sell_through": round(instant.units_sold / nc.sellable, 4) if nc.sellable else 1.0,
        "accepted": instant.accepted,
        "refused_while_stock": instant.refused_while_stock,
        "granted_at_end": sum(instant.granted_at_end_by_sku.values()),
    }
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "real_time": options.real_time,
        "compression": round(options.compression, 3),
        "stock": stock,
        "demand": asked,
        "elapsed_s": round(elapsed_s, 1),
        "machine": host,
        "target": {
            "cancellations": 0,
            "sell_through": TARGET_SELL_THROUGH,
            "met": target_met(nc),
        },
        **runs_out,
        "polling": {key: polling_dict(b) for key, b in polling.items()},
        "event_driven": runs_out["never_cancel"],  # the never_cancel run, for readers of the old report
    }
