"""Settings shared by every service; each service adds its own class with its own env prefix.

Built once in a service's ``__main__`` and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """``KAFKA_*``: where the cluster is, and a topic prefix that isolates tests and tenants of a cluster."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of the Kafka cluster."
    )
    topic_prefix: str = Field("", description="Prepended to every topic name and consumer group id.")
    partitions: int = Field(12, ge=1, description="Partitions for topics this project creates.")
    replication_factor: int = Field(
        1, ge=1, description="Replication factor for topics this project creates."
    )

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


class PostgresSettings(BaseSettings):
    """``DATABASE_URL`` and pool sizes."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias="DATABASE_URL",
        description="libpq connection URL of the master-record database.",
    )
    pool_min_size: int = Field(1, ge=1, validation_alias="DATABASE_POOL_MIN")
    pool_max_size: int = Field(8, ge=1, validation_alias="DATABASE_POOL_MAX")
