"""Processor metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "processor_events_total", "Inventory events handled, by outcome.", ["outcome"], registry=registry
        )
        self.batch_size = Histogram(
            "processor_batch_size",
            "Events per database transaction.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000),
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "processor_commit_seconds", "Time to apply and commit one batch.", registry=registry
        )
