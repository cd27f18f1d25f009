"""``FANOUT_*`` settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from channels.connection_store import ConnectionsFileSetting
from stocksync.settings import KafkaSettings, PostgresSettings


class FanoutSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FANOUT_", extra="ignore")

    channels: list[str] = Field(["shopify"], description="Channels served by this process, one group each.")
    connections_file: ConnectionsFileSetting = Field(
        None, description="TOML file of connections; unset: the database's only (a missing file is reported)."
    )
    connections_table: bool = Field(
        True,
        description="Also read connections from the database (read at start; restart to pick up changes).",
    )
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="Port of /metrics and /healthz (0: any free port).")
    coalesce_window_s: float = Field(
        0.03, ge=0, description="How long a batch gathers records before it is sent."
    )
    max_batch: int = Field(5000, ge=1, description="Most records consumed, and coalesced, per batch.")
    retry_deadline_s: float = Field(120.0, gt=0, description="How long one update is retried before the DLQ.")
    max_attempts: int = Field(40, ge=1, description="Most tries of one update before the DLQ.")
    session_timeout_s: float = Field(
        10.0,
        ge=6.0,
        description="A silent worker is dropped from the group (and its partitions moved) after this.",
    )
    capped_settle_s: float = Field(
        2.0,
        gt=0,
        description="A count held back from a channel with a daily cap (eBay, Etsy, TikTok) is sent once its "
        "listing has had no newer change for this long (one write after a burst; fanout/budget.py).",
    )
    pause_on_rejection: bool = Field(
        True, description="Show zero after a refused sale until the next change."
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
