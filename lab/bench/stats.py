"""Percentiles of measured durations, as the bench reports them."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(values: list[float], q: float) -> float | None:
    """Percentile `q` of seconds, in ms rounded to 0.1; None when nothing was measured."""
    return round(percentile(values, q) * 1000, 1) if values else None
