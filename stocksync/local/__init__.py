"""Real local infrastructure (Kafka, PostgreSQL) for tests and the demo; never mocks."""

from stocksync.local.kafka import KafkaEndpoint, local_kafka
from stocksync.local.postgres import PostgresEndpoint, local_postgres
from stocksync.local.process import LaunchError

__all__ = ["KafkaEndpoint", "LaunchError", "PostgresEndpoint", "local_kafka", "local_postgres"]
