"""What one ``stocksync bench`` run measures and for how long (the CLI's flags set it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    gateway_seconds: float = 10.0
    gateway_warmup_s: float = 2.0
    concurrency: int = 64
    gateway_rate: float = 3000.0  # the open-loop level: the throughput target, to check the latency target
    processor_events: int = 20_000
    slow_seconds: float = 48.0  # 50 orders/minute for this long (40 orders)
    medium_seconds: float = 10.0  # 200 orders/s
    fast_seconds: float = 5.0  # 2,000 orders/s
    profile: bool = True  # sample the gateway with py-spy in a run of its own, when py-spy is there
    profile_out: Path = Path("reports/gateway-profile.txt")
