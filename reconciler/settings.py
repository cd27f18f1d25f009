"""``RECONCILER_*`` settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from channels.connection_store import ConnectionsFileSetting
from stocksync.settings import KafkaSettings, PostgresSettings


class ReconcilerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECONCILER_", extra="ignore")

    connections_file: ConnectionsFileSetting = Field(
        None, description="TOML file of connections; unset: the database's only (a missing file is reported)."
    )
    connections_table: bool = Field(
        True,
        description="Also read connections from the database (read at start; restart to pick up changes).",
    )
    interval_s: float = Field(3600.0, gt=0, description="Time between scheduled runs of the service.")
    run_on_start: bool = Field(True, description="The service runs once as soon as it starts.")
    lookback_h: float = Field(
        24.0, gt=0, description="A connection without a checkpoint lists the orders of this many past hours."
    )
    overlap_s: float = Field(
        300.0, ge=0, description="Each run lists from its checkpoint less this (late-indexed orders)."
    )
    apply_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for the processor to apply the backfilled events."
    )
    channel_retry_s: float = Field(
        30.0, ge=0, description="How long a channel's transient failures (429, 5xx, network) are retried."
    )
    http_timeout_s: float = Field(15.0, gt=0, description="Total timeout of one channel API call.")
    publish_timeout_s: float = Field(30.0, gt=0, description="Longest wait for Kafka to acknowledge a page.")
    fanout_grace_s: float = Field(
        60.0,
        ge=0,
        description="A master change older than this has had time to reach the channels: a channel that "
        "still differs was changed on its side ('edited on channel').",
    )
    pause_on_rejection: bool = Field(
        True, description="As FANOUT_PAUSE_ON_REJECTION: a SKU whose last sale was refused should show 0."
    )
    report_dir: Path = Field(Path("reports/reconcile"), description="Where each run's JSON report goes.")
    host: str = "127.0.0.1"
    port: int = Field(8083, ge=0, le=65535, description="/metrics and /healthz of the service (0: any).")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
