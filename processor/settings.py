"""``PROCESSOR_*`` settings."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stocksync.settings import KafkaSettings, PostgresSettings


class ProcessorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROCESSOR_", extra="ignore")

    app_id: str = Field("stocksync-processor", description="Faust app id; also the consumer group id.")
    batch_max: int = Field(500, ge=1, description="Most events applied in one database transaction.")
    batch_within_s: float = Field(0.02, gt=0, description="Longest wait to fill a batch.")
    datadir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "stocksync-processor",
        description="Faust's local state directory.",
    )
    web_enabled: bool = False
    web_port: int = 6066
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
