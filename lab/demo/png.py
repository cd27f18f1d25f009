"""The demo's figure: propagation per update, oversells per approach, oversold units over the sale."""

from __future__ import annotations

from pathlib import Path

from lab.demo.metrics import lag_buckets
from lab.demo.model import (
    DemoOptions,
    EventDriven,
)
from lab.demo.report import fmt
from lab.polling import PollingResult


def write_png(
    path: Path, ed: EventDriven, polling: PollingResult, before: str, after: str, options: DemoOptions
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lag_ax, bars_ax, time_ax) = plt.subplots(1, 3, figsize=(17, 5.2))
    labels: list[str] = []
    bottom: list[float] = []
    for channel in ed.per_channel:
        buckets = lag_buckets(after, before, channel)
        counts = [c - (buckets[i - 1][1] if i else 0.0) for i, (_le, c) in enumerate(buckets)]
        if not labels:
            labels = [
                f"≤{le * 1000:g}" if le != float("inf") else f">{buckets[i - 1][0] * 1000:g}"
                for i, (le, _c) in enumerate(buckets)
            ]
            bottom = [0.0] * len(counts)
        lag_ax.bar(labels, counts, bottom=bottom, label=channel)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    lag_ax.set_title(f"Propagation per update (p50 {fmt(ed.p50_ms)} ms, p99 {fmt(ed.p99_ms)} ms)")
    lag_ax.set_xlabel("gateway arrival -> channel confirmed (ms, bucket upper bound)")
    lag_ax.set_ylabel("channel updates")
    lag_ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    lag_ax.legend(fontsize=7, ncols=2)

    approaches = ["event-driven", f"polling {options.poll_minutes:g} min"]
    oversold = [ed.oversells, polling.oversells]
    cancels = [ed.cancellations_needed, polling.cancellations]
    xs = range(len(approaches))
    bars_ax.bar([x - 0.2 for x in xs], oversold, width=0.4, label="oversold units", color="tab:red")
    bars_ax.bar([x + 0.2 for x in xs], cancels, width=0.4, label="cancellations needed", color="tab:orange")
    for x, (o, c) in enumerate(zip(oversold, cancels, strict=True)):
        bars_ax.annotate(str(o), (x - 0.2, o), ha="center", va="bottom")
        bars_ax.annotate(str(c), (x + 0.2, c), ha="center", va="bottom")
    bars_ax.set_xticks(list(xs), approaches)
    bars_ax.set_title(f"Same {ed.orders:,} orders: oversells per approach")
    bars_ax.legend()

    minutes = [0.0] + [t / 60 for t, _n in polling.timeline] + [options.sale_minutes]
    level = [0] + [n for _t, n in polling.timeline]
    time_ax.step(minutes, [*level, level[-1]], where="post", label=approaches[1], color="tab:red")
    time_ax.plot(
        [0, options.sale_minutes], [ed.oversells, ed.oversells], label=approaches[0], color="tab:green"
    )
    for k in range(1, int(options.sale_minutes // options.poll_minutes) + 1):
        time_ax.axvline(k * options.poll_minutes, color="grey", linewidth=0.6, linestyle=":")
    time_ax.set_title("Oversold units during the sale (dotted: sync passes)")
    time_ax.set_xlabel("minutes since the sale opened")
    time_ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
