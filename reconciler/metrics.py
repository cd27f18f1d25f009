"""Reconciler metrics. Labels: channel names only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ReconcilerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.drift = Counter(
            "reconcile_drift",
            "(connection, SKU) pairs found showing another count than the master allows.",
            ["channel"],
            registry=registry,
        )
        self.corrected = Counter(
            "reconcile_corrected",
            "Drifts the reconciler wrote back to what the master allows.",
            ["channel"],
            registry=registry,
        )
        self.backfilled_orders = Counter(
            "reconcile_backfilled_orders",
            "Orders found in a channel's order list that the pipeline had not seen, published by a run.",
            ["channel"],
            registry=registry,
        )
        self.failures = Counter(
            "reconcile_failures",
            "Connections whose reconciliation failed in a run (channel error, timeout, Kafka).",
            ["channel"],
            registry=registry,
        )
        self.last_success = Gauge(
            "reconcile_last_success_timestamp_seconds",
            "Unix time at which the last run finished with every connection reconciled.",
            registry=registry,
        )
        self.duration = Histogram(
            "reconcile_run_duration_seconds",
            "Wall-clock time of a whole run.",
            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.lock_busy = Counter(
            "reconcile_skipped_runs",
            "Scheduled runs skipped because another run held the lock.",
            registry=registry,
        )
