"""The demo's figure: orders to cancel and sell-through per way, side by side; orders to cancel over the sale
(cumulative, by the sale's clock); propagation per update of the two event-driven runs."""

from __future__ import annotations

from pathlib import Path

from allocation.rules import Policy
from lab.demo.metrics import lag_buckets
from lab.demo.model import TARGET_SELL_THROUGH, DemoOptions, EventDriven
from lab.demo.report import Baseline, fmt

COLOURS = {"never_cancel": "tab:green", "mirror": "tab:blue"}
POLLING_COLOURS = ("tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink")


def write_png(
    path: Path,
    runs: dict[Policy, EventDriven],
    windows: dict[Policy, tuple[str, str]],
    polling: dict[str, Baseline],
    options: DemoOptions,
) -> None:
    """`windows`: each run's fan-out metrics (before, after) for its propagation histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((cancel_ax, through_ax), (time_ax, lag_ax)) = plt.subplots(2, 2, figsize=(15, 10))
    ways = [*runs, *(f"polling {k}" for k in polling)]
    colours = [COLOURS.get(w, "grey") for w in runs] + list(POLLING_COLOURS[: len(polling)])
    cancels = [ed.cancellations_needed for ed in runs.values()] + [b.cancellations for b in polling.values()]
    through = [ed.sell_through * 100 for ed in runs.values()] + [
        b.sell_through * 100 for b in polling.values()
    ]
    xs = list(range(len(ways)))

    cancel_ax.bar(xs, cancels, color=colours)
    for x, c in zip(xs, cancels, strict=True):
        cancel_ax.annotate(f"{c:,}", (x, c), ha="center", va="bottom")
    cancel_ax.set_xticks(xs, ways, rotation=15)
    cancel_ax.set_title(f"Orders to cancel (same {runs['never_cancel'].orders:,} orders)")
    cancel_ax.set_ylabel("orders a storefront took that cannot be filled")

    through_ax.bar(xs, through, color=colours)
    for x, t in zip(xs, through, strict=True):
        through_ax.annotate(f"{t:.1f} %", (x, t), ha="center", va="bottom")
    through_ax.axhline(TARGET_SELL_THROUGH * 100, color="black", linestyle="--", linewidth=0.8)
    through_ax.annotate(
        f"target {TARGET_SELL_THROUGH:.0%}",
        (-0.4, TARGET_SELL_THROUGH * 100 + 1),
        ha="left",
        va="bottom",
        fontsize=8,
    )
    through_ax.set_xticks(xs, ways, rotation=15)
    through_ax.set_ylim(0, 112)
    through_ax.set_title("Sell-through: units sold / Σ min(stock, units asked)")
    through_ax.set_ylabel("%")

    sale_s = options.sale_s

    def step(at: list[float], label: str, colour: str, width: float = 1.5) -> None:
        xs_ = [0.0, *sorted(at), sale_s]
        ys = [0, *range(1, len(at) + 1), len(at)]
        time_ax.step(xs_, ys, where="post", label=f"{label} ({len(at):,})", color=colour, linewidth=width)

    for policy, ed in runs.items():
        step(ed.cancelled_at, policy, COLOURS.get(policy, "grey"), 2.5)  # never_cancel's 0 lies on the axis
    for (key, b), colour in zip(polling.items(), POLLING_COLOURS, strict=False):
        step(b.headline.cancelled_at, f"polling {key}", colour)
        period = b.minutes * 60
        passes = [b.headline.phase_s + k * period for k in range(int(sale_s // period) + 2)]
        for at in passes:
            if at <= sale_s:
                time_ax.axvline(at, color=colour, linewidth=1.0, linestyle=":")
    time_ax.set_xlim(0, sale_s)
    time_ax.set_yscale("symlog", linthresh=10)  # 0 and tens beside polling's hundreds
    time_ax.set_ylim(bottom=0)
    time_ax.set_title("Orders to cancel over the sale (dotted: polling passes)")
    time_ax.set_xlabel("seconds since the sale opened" + ("" if options.real_time else " (sale's clock)"))
    time_ax.set_ylabel("orders to cancel so far (linear to 10, then log)")
    time_ax.legend(fontsize=8)

    labels: list[str] = []
    width = 0.8 / max(1, len(runs))
    for i, (policy, (before, after)) in enumerate(windows.items()):
        buckets = lag_buckets(after, before)
        counts = [c - (buckets[j - 1][1] if j else 0.0) for j, (_le, c) in enumerate(buckets)]
        if not labels:
            labels = [
                f"≤{le * 1000:g}" if le != float("inf") else f">{buckets[j - 1][0] * 1000:g}"
                for j, (le, _c) in enumerate(buckets)
            ]
        if not counts:
            continue
        ed = runs[policy]
        lag_ax.bar(
            [j + (i - (len(runs) - 1) / 2) * width for j in range(len(counts))],
            counts,
            width=width,
            color=COLOURS.get(policy, "grey"),
            label=f"{policy} (p50 {fmt(ed.p50_ms)} ms, p99 {fmt(ed.p99_ms)} ms)",
        )
    lag_ax.set_xticks(range(len(labels)), labels)
    lag_ax.set_title("Propagation per channel update")
    lag_ax.set_xlabel("gateway arrival -> channel confirmed (ms, bucket upper bound)")
    lag_ax.set_ylabel("channel updates")
    lag_ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    if lag_ax.get_legend_handles_labels()[0]:
        lag_ax.legend(fontsize=8)

    fig.suptitle(
        f"Flash sale on nine marketplaces: {options.sale_minutes:g} min"
        + (" in real time" if options.real_time else f" played in {options.seconds:g} s (not real time)")
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
