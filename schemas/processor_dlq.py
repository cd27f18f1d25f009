"""Topic ``processor.dlq``: inventory events the processor could not apply, kept with why.

Keyed like ``inventory.events`` (tenant/SKU; ``undecodable`` for a record that is no canonical event). The
raw record is kept verbatim (base64), so nothing acknowledged is lost: fix the cause, then publish the event
again (same ``event_id``: an event recorded ``invalid`` must be given a new id, or its ledger row removed).
A decodable event is also in the ledger and ``processed_events`` with outcome ``invalid`` and the same reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime

from schemas.base import Event

TOPIC = "processor.dlq"

Problem = Literal["undecodable", "invalid"]


class EventDeadLettered(Event):
    type: Literal["event_dead_lettered"] = "event_dead_lettered"
    problem: Problem
    reason: str
    event_id: str | None
    tenant: str | None
    sku: str | None
    value_b64: str
    dead_lettered_at: AwareDatetime


def decode(raw: bytes) -> EventDeadLettered:
    return EventDeadLettered.model_validate_json(raw)
