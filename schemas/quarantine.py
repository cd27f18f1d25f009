"""Topic ``ingest.quarantine``: webhooks with a valid signature that could not be understood.

The raw body is kept verbatim (base64) with the reason, so nothing a channel sent is ever lost.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime

from schemas.base import Event

TOPIC = "ingest.quarantine"


class WebhookQuarantined(Event):
    type: Literal["webhook_quarantined"] = "webhook_quarantined"
    connection_id: str
    channel: str
    reason: str
    headers: dict[str, str]
    body_b64: str
    received_at: AwareDatetime
