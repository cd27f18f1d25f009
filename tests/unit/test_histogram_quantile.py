"""Quantiles read back from a real prometheus-client histogram's exposition."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stocksync.metrics import histogram_quantile


def exposition(values: list[float]) -> str:
    registry = CollectorRegistry()
    h = Histogram("lag_seconds", "x", ["channel"], buckets=(0.1, 0.2, 0.5, 1.0), registry=registry)
    for v in values:
        h.labels("shopify").observe(v)
    return generate_latest(registry).decode()


def test_interpolates_within_the_bucket() -> None:
    text = exposition([0.05] * 50 + [0.15] * 40 + [0.4] * 10)
    assert histogram_quantile(text, "lag_seconds", 0.5, channel="shopify") == pytest.approx(0.1)
    assert histogram_quantile(text, "lag_seconds", 0.9, channel="shopify") == pytest.approx(0.2)
    assert histogram_quantile(text, "lag_seconds", 0.99, channel="shopify") == pytest.approx(0.2 + 0.3 * 0.9)


def test_no_observations_no_answer() -> None:
    assert histogram_quantile(exposition([]), "lag_seconds", 0.99, channel="shopify") is None
    assert histogram_quantile(exposition([0.3]), "lag_seconds", 0.99, channel="ebay") is None


def test_only_what_came_after_a_snapshot() -> None:
    snapshot = exposition([5.0] * 10)  # slow start-up observations, all in the +Inf bucket
    later = exposition([5.0] * 10 + [0.05] * 100)
    assert histogram_quantile(later, "lag_seconds", 0.99, channel="shopify") == pytest.approx(1.0)
    assert histogram_quantile(later, "lag_seconds", 0.99, since=snapshot, channel="shopify") == pytest.approx(
        0.099
    )
