"""Fan-out metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class FanoutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sync_lag = Histogram(
            "sync_lag_seconds",
            "From the cause's arrival at the gateway to the channel confirming the new quantity.",
            ["channel"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        self.calls = Counter(
            "fanout_channel_calls_total",
            "Outbound channel calls by result.",
            ["channel", "result"],
            registry=registry,
        )
        self.coalesced = Counter(
            "fanout_coalesced_total",
            "Changes not sent because a newer version superseded them.",
            ["channel"],
            registry=registry,
        )
        self.failed = Counter(
            "fanout_failed_updates_total",
            "Updates that failed after all retries.",
            ["channel"],
            registry=registry,
        )
