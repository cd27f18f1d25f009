"""Prometheus exposition for every service: an aiohttp handler over an injectable registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    return handle


def _buckets(exposition: str, name: str, labels: dict[str, str]) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name`, summed over every series that carries `labels`."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket" and all(sample.labels.get(k) == v for k, v in labels.items()):
                le = float(sample.labels["le"])
                out[le] = out.get(le, 0.0) + float(sample.value)
    return out


def bucket_growth(
    exposition: str, name: str, *, since: str | None = None, **labels: str
) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of histogram `name` in Prometheus text `exposition`, summed over the
    series that carry `labels`, less what the exposition `since` already held; in bound order."""
    now = _buckets(exposition, name, labels)
    before = _buckets(since, name, labels) if since is not None else {}
    return sorted((le, count - before.get(le, 0.0)) for le, count in now.items())


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of cumulative `buckets`, interpolated within its bucket as Prometheus'
    histogram_quantile does; None when nothing was observed."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_quantile(
    exposition: str, name: str, q: float, *, since: str | None = None, **labels: str
) -> float | None:
    """The q-quantile of a histogram in Prometheus text `exposition` (only what was observed after the
    exposition `since`, if given); None when there are no observations."""
    return quantile(bucket_growth(exposition, name, since=since, **labels), q)
