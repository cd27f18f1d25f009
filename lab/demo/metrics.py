"""Reading the fan-out's Prometheus exposition: counter growth and sync-lag quantiles between two scrapes."""

from __future__ import annotations

from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from stocksync.metrics import bucket_growth, quantile


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name:
                out.append((dict(s.labels), float(s.value)))
    return out


def counter_by(exposition: str, since: str, name: str, *keys: str) -> defaultdict[tuple[str, ...], float]:
    """A counter's growth between two expositions, summed by the given label values."""
    out: defaultdict[tuple[str, ...], float] = defaultdict(float)
    for text, sign in ((exposition, 1), (since, -1)):
        for labels, value in samples(text, name):
            out[tuple(labels.get(k, "") for k in keys)] += sign * value
    return out


def lag_buckets(exposition: str, since: str, channel: str | None = None) -> list[tuple[float, float]]:
    """Cumulative sync-lag bucket counts observed between two expositions, one channel's or all."""
    labels = {"channel": channel} if channel is not None else {}
    return bucket_growth(exposition, "sync_lag_seconds", since=since, **labels)


def quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    seconds = quantile(buckets, q)
    return None if seconds is None else round(seconds * 1000, 1)
