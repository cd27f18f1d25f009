"""Canonical events, one module per Kafka topic. Frozen pydantic models, unknown fields refused."""

from schemas import (
    fanout_dlq,
    inventory_events,
    processor_dlq,
    quarantine,
    stock_allocated,
    stock_changed,
    stock_rejected,
)

TOPICS = (
    inventory_events.TOPIC,
    stock_changed.TOPIC,
    stock_rejected.TOPIC,
    stock_allocated.TOPIC,
    quarantine.TOPIC,
    fanout_dlq.TOPIC,
    processor_dlq.TOPIC,
)
"""Every topic the pipeline uses (before the deployment's prefix)."""
