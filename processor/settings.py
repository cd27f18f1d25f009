"""``PROCESSOR_*`` settings."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from allocation.rules import DEFAULT_POLICY, Policy
from channels.connection_store import ConnectionsFileSetting
from stocksync.settings import KafkaSettings, PostgresSettings


class ProcessorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROCESSOR_", extra="ignore")

    app_id: str = Field(
        "stocksync-processor", description="The consumer group id of the processor's workers."
    )
    batch_max: int = Field(500, ge=1, description="Most events applied in one database transaction.")
    batch_within_s: float = Field(
        0.02,
        gt=0,
        description="Longest wait to fill a batch while the one before is being applied (an idle processor "
        "applies what it holds at once).",
    )
    datadir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "stocksync-processor",
        description="Unused since issue 15 (was Faust's local state directory); accepted, so that existing "
        "deployments keep starting.",
    )
    web_enabled: bool = Field(False, description="Unused since issue 15 (was Faust's own web server).")
    web_port: int = Field(6066, description="Unused since issue 15 (was Faust's web port).")
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(8081, ge=0, le=65535, description="/metrics, /healthz, /audit; 0: any free port.")
    session_timeout_s: float = Field(
        10.0,
        ge=6.0,
        description="A silent worker is dropped from the group (and its partitions moved) after this.",
    )
    clock_skew_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="Clock skew tolerated between a channel and the counting system (0: clocks in "
        "sync): a sale stamped within this (plus 1 s for a whole-second stamp) of a count is applied on "
        "top of it, not taken as counted.",
    )
    default_policy: Policy = Field(
        DEFAULT_POLICY,
        description="Allocation policy of a tenant that set none (`stocksync policy set`): never_cancel "
        "(escrow: the channels together can never sell more than the master holds) or mirror (every "
        "channel shows the whole count).",
    )
    connections_file: ConnectionsFileSetting = Field(
        None,
        description="TOML file of connections (the same as the fan-out's): allocation splits each SKU over "
        "the connections that list it. Unset: the database's only.",
    )
    connections_table: bool = Field(True, description="Also read connections from the database.")
    retention_days: float = Field(30.0, gt=0, description="How long processed_events keeps an event id.")
    retention_interval_s: float = Field(3600.0, gt=0, description="How often old ids are pruned.")
    reservation_sweep_s: float = Field(
        1.0, gt=0, description="How often holds past their expiry are released (an expiry event each)."
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
