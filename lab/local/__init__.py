"""Real local infrastructure (Kafka, PostgreSQL) for tests and the demo; never mocks."""

from lab.local.kafka import KafkaEndpoint, local_kafka
from lab.local.postgres import PostgresEndpoint, local_postgres
from lab.local.process import LaunchError

__all__ = ["KafkaEndpoint", "LaunchError", "PostgresEndpoint", "local_kafka", "local_postgres"]
