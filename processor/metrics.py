"""Processor metrics. Outcome label values are the fixed set of processor.emit.Outcome, and "undecodable"."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "processor_events_total", "Inventory events handled, by outcome.", ["outcome"], registry=registry
        )
        self.oversells_prevented = Counter(
            "processor_oversells_prevented_total",
            "Sales refused because they asked for more than was available.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "processor_batch_size",
            "Events per database transaction.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000),
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "processor_commit_seconds",
            "Time to apply and commit one batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "processor_lag_seconds",
            "From the event's arrival at the gateway to its commit in the master record.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self.stalled = Gauge(
            "processor_stalled",
            "1 while the processor retries a batch it cannot commit or publish (PostgreSQL or Kafka away): "
            "it takes no new events and acknowledges nothing meanwhile; 0 once a batch goes through.",
            registry=registry,
        )
        self.retention_deleted = Counter(
            "processor_retention_deleted_total",
            "processed_events rows pruned by the retention task.",
            registry=registry,
        )
        self.negative_records = Gauge(
            "inventory_negative_records",
            "Master records whose available count is below zero, checked periodically. The conditional "
            "update and CHECK (available >= 0) make this impossible: any value above 0 is an oversell.",
            registry=registry,
        )
        self.overcommitted = Gauge(
            "allocation_overcommitted_skus",
            "SKUs under allocation (never_cancel) whose grants add up to more than the master holds, checked "
            "periodically. Only a count below the grants (units gone from the warehouse) can cause it; while "
            "it lasts, the channels together may sell more than exists.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_records",
            "Records of a topic not yet committed by a consumer group, read from the broker periodically.",
            ["group", "topic"],
            registry=registry,
        )
        self.checks_timestamp = Gauge(
            "processor_checks_last_success_timestamp_seconds",
            "When the periodic oversell and lag checks last completed (Unix time).",
            registry=registry,
        )
