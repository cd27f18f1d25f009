"""``FANOUT_*`` settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stocksync.settings import KafkaSettings


class FanoutSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FANOUT_", extra="ignore")

    channel: str = Field("shopify", description="The channel this worker's consumer group serves.")
    connections_file: Path = Path("connections.toml")
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="Port of /metrics and /healthz (0: any free port).")
    max_batch: int = Field(1000, ge=1, description="Most records consumed, and coalesced, per round.")
    max_attempts: int = Field(8, ge=1, description="Tries per channel call before it counts as failed.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
