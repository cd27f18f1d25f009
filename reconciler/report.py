"""A run's report: what each connection backfilled and corrected, and the run's totals, as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# Causes of a drift, as the report names them.
MISSED_ORDER = "missed order backfilled"
EDITED_ON_CHANNEL = "edited on channel"
NOT_LISTED = "not listed on channel"
UNKNOWN = "unknown"

# What became of a drift.
CORRECTED = "corrected"
FANOUT_FIXED = "corrected by the fan-out, from the backfilled orders"
WOULD_CORRECT = "would correct (dry run)"
SKIPPED_MASTER_MOVED = "skipped: the master changed meanwhile (left to the fan-out)"
SKIPPED_CHANNEL_MOVED = "skipped: the channel's count changed meanwhile (next run)"
SKIPPED_NOT_LISTED = "skipped: the channel does not list this SKU"
NOT_CORRECTED = "not corrected: the connection failed"


@dataclass
class Drift:
    sku: str
    channel_value: int | None
    expected: int
    master_available: int
    master_version: int
    cause: str
    action: str = ""


@dataclass
class ConnectionReport:
    connection_id: str
    channel: str
    tenant: str
    listed_since: datetime | None = None
    checkpoint_before: datetime | None = None
    checkpoint_after: datetime | None = None
    backfill: str = "listed"  # listed | unavailable (the channel has no order list) | failed
    orders_listed: int = 0
    events_listed: int = 0
    orders_backfilled: int = 0  # orders with at least one event the pipeline had not seen
    events_published: int = 0
    events_duplicate: int = 0  # already applied (their webhooks arrived): not published again
    rejected: int = 0  # orders the normaliser refused: sent to ingest.quarantine
    skus_checked: int = 0
    drifts: list[Drift] = field(default_factory=list)
    failure: str | None = None
    failed_in: str | None = None  # backfill | correct

    @property
    def drifts_found(self) -> int:
        return len(self.drifts)

    @property
    def drifts_corrected(self) -> int:
        """Drifts this run put right: written back by the reconciler, or by the fan-out from its backfill."""
        return sum(1 for d in self.drifts if d.action in (CORRECTED, FANOUT_FIXED))

    @property
    def drifts_written(self) -> int:
        """Drifts the reconciler itself wrote back to the channel."""
        return sum(1 for d in self.drifts if d.action == CORRECTED)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifts_found"] = self.drifts_found
        out["drifts_corrected"] = self.drifts_corrected
        out["drifts_written"] = self.drifts_written
        return out


@dataclass
class RunReport:
    run_id: str
    started_at: datetime
    dry_run: bool
    finished_at: datetime | None = None
    connections: list[ConnectionReport] = field(default_factory=list)
    # Run-level problem (e.g. the processor did not apply the backfill in time: nothing was corrected).
    error: str | None = None
    applied_wait_s: float = 0.0
    report_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.failure is None for c in self.connections)

    def totals(self) -> dict[str, int]:
        cs = self.connections
        return {
            "connections": len(cs),
            "connections_failed": sum(1 for c in cs if c.failure),
            "orders_listed": sum(c.orders_listed for c in cs),
            "orders_backfilled": sum(c.orders_backfilled for c in cs),
            "events_published": sum(c.events_published for c in cs),
            "events_duplicate": sum(c.events_duplicate for c in cs),
            "rejected": sum(c.rejected for c in cs),
            "skus_checked": sum(c.skus_checked for c in cs),
            "drifts_found": sum(c.drifts_found for c in cs),
            "drifts_corrected": sum(c.drifts_corrected for c in cs),
            "drifts_written": sum(c.drifts_written for c in cs),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "error": self.error,
            "applied_wait_s": round(self.applied_wait_s, 3),
            "totals": self.totals(),
            "connections": [c.as_dict() for c in self.connections],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=_default)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        self.report_path = str(path)
        return path


def default_report_path(report_dir: Path, started_at: datetime) -> Path:
    return report_dir / f"{started_at.strftime('%Y%m%dT%H%M%S.%fZ')}.json"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
