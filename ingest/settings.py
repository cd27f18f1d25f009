"""``INGEST_*`` settings of the gateway."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from channels.connection_store import ConnectionsFileSetting
from stocksync.settings import KafkaSettings, PostgresSettings


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    connections_file: ConnectionsFileSetting = Field(
        None,
        description="TOML file of channel connections and admin tenants; unset: the database's only. "
        "A file that is named but missing is reported once, and the database's connections are served.",
    )
    connections_table: bool = Field(
        True, description="Also read connections and admin tenants from the database's tables."
    )
    connections_refresh_s: float = Field(30.0, gt=0, description="How often the tables are read again.")
    ack_timeout_s: float = Field(2.0, gt=0, description="Longest wait for Kafka before answering 503.")
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="Larger webhook bodies are refused with 413.")
    reservation_wait_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for the processor's decision on a reservation step before answering 503 "
        "(the step stays recorded; the same call again returns its answer).",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
