"""Canonical events, one module per Kafka topic. Frozen pydantic models, unknown fields refused."""
