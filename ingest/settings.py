"""``INGEST_*`` settings of the gateway."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stocksync.settings import KafkaSettings


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INGEST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    connections_file: Path = Field(Path("connections.toml"), description="TOML file of channel connections.")
    ack_timeout_s: float = Field(2.0, gt=0, description="Longest wait for Kafka before answering 503.")
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="Larger webhook bodies are refused with 413.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
