"""The bench's report: the machine it ran on, ``reports/bench.json``, and the printed tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_report(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _open_pairs(pairs: list[dict[str, Any]] | None) -> str:
    """The caption's account of the open-loop/Kafka-only pairs, when more than one was run."""
    if not pairs or len(pairs) < 2:
        return ""
    each = ", ".join(f"{p['ack_p99_ms']}/{p['floor_p99_ms']} ms" for p in pairs)
    return f" Open loop and Kafka only run in turn {len(pairs)} times (p99 {each}); the median pair shown."


def _s(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(title: str, columns: tuple[str, ...], rows: list[list[object]], caption: str = "") -> Table:
    table = Table(title=title, caption=caption or None)
    for n, col in enumerate(columns):
        table.add_column(col, justify="left" if n == 0 else "right")
    for row in rows:
        table.add_row(*(_s(v) for v in row))
    return table


def _cpu(cpu: dict[str, float] | None) -> str:
    if not cpu:
        return "-"
    return " / ".join(
        f"{cpu[k]:.2f}" if k in cpu else "-" for k in ("processor", "postgresql", "kafka_broker")
    )


def _pct(value: float | None) -> str:
    return f"{value * 100:.1f} %" if value is not None else "-"


def _processor_table(p: dict[str, Any]) -> Table:
    rows: list[list[object]] = [
        [
            f"worker, batch {r['batch']:,} ({r['events']:,} events)",
            r["events_per_s"],
            _cpu(r.get("cpu_ms_per_event")),
        ]
        for r in p["by_batch"]
    ]
    if "workers_2_per_s" in p:
        cpu = p.get("workers_cpu_ms_per_event", {})
        rows += [
            ["1 worker, batch 1,000, started before the events", p["workers_1_per_s"], _cpu(cpu.get("1"))],
            ["2 workers in one group, same way", p["workers_2_per_s"], _cpu(cpu.get("2"))],
            [
                f"Faust's stream alone, take(1,000): {_s(p['faust_us_per_event'])} us CPU/event",
                p["faust_floor_per_s"],
                "-",
            ],
        ]
    rows += [
        ["raw confluent-kafka consume (median of 3)", p["raw_consume_per_s"], "-"],
        ["apply only, batch 1,000 (apply_batch, no Kafka)", p["apply_only_per_s"], "-"],
    ]
    if "ceiling_per_s" in p:
        rows += [
            ["set-based ceiling, batch 1,000 (median of 3, no Kafka)", p["ceiling_per_s"], "-"],
            ["batch 1,000 / ceiling", _pct(p["vs_ceiling"]), "-"],
            ["2 workers / 1 worker", f"{p['scale_2_workers']:.2f}x" if p["scale_2_workers"] else "-", "-"],
        ]
    rows.append(["best worker / raw consume", _pct(p["ratio"]), "-"])
    return _table(
        f"processor: {p['events']:,} events, {p.get('partitions', 4)} partitions",
        ("", "events/s", "CPU ms/event: worker / PostgreSQL / broker"),
        rows,
        caption="targets: >= 5,000 events/s, >= 30 % of the raw consume, batch 1,000 >= 50 % of the ceiling. "
        "Worker rows are timed from the first commit to the last ledger row; CPU in that window, per event. "
        "Ceiling: the same events set-based, no business rules (lab.bench.ceiling).",
    )


def print_tables(console: Console, result: dict[str, Any]) -> None:
    m = result["machine"]
    console.print(
        f"machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gb']} GiB, Python {m['python']}; "
        f"load average at start {m['load_average_at_start']}, at end {m.get('load_average_at_end')}\n"
        f"{result['kafka']}; {result['postgres']}; whole run {result.get('wall_s')} s"
    )
    g = result["gateway"]
    console.print(
        _table(
            f"gateway ack time: {g['concurrency']} keep-alive senders, {g['seconds']:.0f} s after "
            f"{g['warmup_s']:.0f} s warm-up",
            ("load", "webhooks/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-200"),
            [
                [
                    run["mode"],
                    run["webhooks_per_s"],
                    run["ack_p50_ms"],
                    run["ack_p90_ms"],
                    run["ack_p99_ms"],
                    run["ack_max_ms"],
                    run["non_200"],
                ]
                for run in (g, *([g["paced"]] if "paced" in g else []))
            ]
            + (
                [
                    [
                        "bare aiohttp, same closed loop",
                        g["bare_http_per_s"],
                        g["bare_http_p50_ms"],
                        g["bare_http"].get("ack_p90_ms"),
                        g["bare_http_p99_ms"],
                        g["bare_http"].get("ack_max_ms"),
                        g["bare_http"].get("non_200"),
                    ]
                ]
                if "bare_http_per_s" in g
                else []
            )
            + (
                [
                    [
                        f"Kafka only {g['kafka_ack_floor']['rate_per_s']:,.0f}/s",
                        "-",
                        g["kafka_ack_floor"]["ack_p50_ms"],
                        "-",
                        g["kafka_ack_floor"]["ack_p99_ms"],
                        "-",
                        "-",
                    ]
                ]
                if "kafka_ack_floor" in g
                else []
            ),
            caption=f"closed / bare {_s(g.get('closed_vs_bare'))} (target >= 0.5); open p99 / Kafka-only p99 "
            f"{_s(g.get('open_p99_vs_floor'))} (target <= 2). Closed loop: each sender posts as soon as "
            "answered (saturation; latency includes the queue of 64 in flight). Open: requests due at a "
            "fixed rate, ack time counted from when each was due. Kafka only: this process produces the "
            "same rate with the gateway's producer settings (the durable-ack floor). Bare: an aiohttp app on "
            "uvloop that reads the body and answers JSON (lab.bench.bare), same requests."
            + _open_pairs(g.get("open_pairs")),
        )
    )
    explained = g.get("explained") or {}
    threads = [
        (name, explained.get(key))
        for name, key in (("gateway", "gateway_loop_thread"), ("bare aiohttp", "bare_loop_thread"))
    ]
    if any(clock for _name, clock in threads):
        console.print(
            _table(
                "the event-loop thread in the closed loop (Linux scheduler statistics)",
                ("process", "on CPU", "waiting for CPU", "asleep", "CPU ms/request", "preempted/request"),
                [
                    [
                        name,
                        _pct(clock.get("on_cpu_share")),
                        _pct(clock.get("waiting_for_cpu_share")),
                        _pct(clock.get("asleep_share")),
                        clock.get("cpu_ms_per_request"),
                        clock.get("preempted_per_request"),
                    ]
                    for name, clock in threads
                    if clock
                ],
                caption=str(explained.get("summary", "")),
            )
        )
    if "profile" in g:
        prof = g["profile"]
        console.print(
            _table(
                f"where the gateway's time goes (py-spy, {prof['samples']} samples, self time)",
                ("package", "%"),
                [[r["frame"], r["pct"]] for r in prof["self_by_package"][:10]],
            )
        )
    console.print(_processor_table(result["processor"]))
    measures = (  # (row label, key): one column per load level keeps the table narrow
        ("orders/s offered", "orders_per_s"),
        ("orders", "orders"),
        ("p50 ms (every channel)", "p50_ms"),
        ("p99 ms (every channel)", "p99_ms"),
        ("to the commit, p50 ms", "to_commit_p50_ms"),
        ("rejected (sold out)", "rejected"),
        ("oversells", "oversells"),
        ("duplicates", "duplicates"),
        ("channel repeat writes", "channel_repeat_writes"),
        ("channel stale writes", "channel_stale_writes"),
        ("non-200 answers", "non_200"),
    )
    console.print(
        _table(
            "end to end: webhook POST -> every channel confirmed a count including the order",
            ("", *(r["level"] for r in result["e2e"])),
            [[label, *(r[key] for r in result["e2e"])] for label, key in measures],
            caption="duplicates: units taken from the master beyond the distinct orders accepted "
            "(redelivered webhooks included); repeat writes: a channel write of the count it already "
            "confirmed; stale: a count above the one it replaced while only sales happened",
        )
    )
    levels = result["e2e"]
    channels = list(levels[0]["channels"]) if levels else []
    console.print(
        _table(
            "sync lag per channel, p50 / p99 ms (webhook POST -> that channel confirmed); bound: the "
            "channel's budget for the level's changing SKUs",
            ("channel", *(f"{r['level']} (bound)" for r in levels), "429s"),
            [
                [
                    ch,
                    *(
                        f"{_s(r['channels'][ch]['p50_ms'])} / {_s(r['channels'][ch]['p99_ms'])} "
                        f"({_s(r['channels'][ch].get('budget_bound_ms'))})"
                        for r in levels
                    ),
                    sum(r["channels"][ch]["rate_limited"] for r in levels),
                ]
                for ch in channels
            ],
        )
    )
    agent = result.get("agent")
    if agent:
        console.print(
            _table(
                f"agent reservations: open loop at {agent['rate_per_s']:,.0f} requests/s, each timed from "
                "when it was due to its answer (the processor's decision included)",
                ("step", "requests", "p50 ms", "p90 ms", "p99 ms", "max ms", "answers"),
                [
                    [
                        f"{step} ({path})",
                        agent[step]["webhooks"],
                        agent[step]["ack_p50_ms"],
                        agent[step]["ack_p90_ms"],
                        agent[step]["ack_p99_ms"],
                        agent[step]["ack_max_ms"],
                        ", ".join(f"{k}: {v}" for k, v in agent[step]["statuses"].items()),
                    ]
                    for step, path in (
                        ("hold", "POST /v1/reservations"),
                        ("commit", "POST /v1/reservations/{id}/commit"),
                        ("hold_streamed", "holds, a stream client attached"),
                    )
                    if step in agent
                ]
                + (
                    [
                        [
                            "stream lag (commit -> SSE message)",
                            agent["sse"]["messages"],
                            agent["sse"]["lag_p50_ms"],
                            "-",
                            agent["sse"]["lag_p99_ms"],
                            agent["sse"]["lag_max_ms"],
                            "-",
                        ]
                    ]
                    if "sse" in agent
                    else []
                ),
                caption=f"target: p99 <= {agent['p99_target_ms']:.0f} ms for holds and commits "
                f"({'met' if agent.get('meets_target') else 'not met'}); stream lag: from each change's "
                "commit in PostgreSQL to its message at a client of GET /v1/availability/stream",
            )
        )
    flash = result.get("flash_sale")
    if flash:
        console.print(
            _table(
                "flash sale under never_cancel, real time (a storefront takes an order only within its "
                "grant)",
                (
                    "orders",
                    "accepted",
                    "cancellations",
                    "units sold",
                    "sell-through",
                    "p50 / p99 ms",
                    "seconds",
                ),
                [
                    [
                        flash["orders"],
                        flash["accepted"],
                        flash["cancellations"],
                        flash["units_sold"],
                        f"{flash['sell_through'] * 100:.1f} %",
                        f"{_s(flash['p50_ms'])} / {_s(flash['p99_ms'])}",
                        flash["elapsed_s"],
                    ]
                ],
                caption="cancellations: orders a storefront took that the master refused (target 0); "
                "sell-through: units sold / sum over SKUs of min(stock, units asked)",
            )
        )
    parts = result["services"]
    names = sorted({n for part in parts.values() for n in part if not n.startswith("_")})
    console.print(
        _table(
            "processes: CPU % of one core (mean over the part), peak RSS MB",
            ("process", *parts),
            [
                [
                    n,
                    *(
                        f"{parts[p][n]['cpu_pct']:.0f}% {parts[p][n]['rss_mb_max']:.0f}M"
                        if n in parts[p]
                        else "-"
                        for p in parts
                    ),
                ]
                for n in names
            ],
        )
    )
