"""Which code verifies and normalises each channel's webhooks: the gateway's only view of channels."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from channels.amazon import webhooks as amazon
from channels.connection import Connection
from channels.shopify import webhooks as shopify
from schemas.inventory_events import OrderCancelled, OrderPlaced

Normalise = Callable[[Connection, bytes, Mapping[str, str], datetime], list[OrderPlaced | OrderCancelled]]


@dataclass(frozen=True)
class WebhookAdapter:
    verify: Callable[[str, bytes, Mapping[str, str]], bool]
    normalise: Normalise


ADAPTERS: dict[str, WebhookAdapter] = {
    "shopify": WebhookAdapter(verify=shopify.verify, normalise=shopify.normalise),
    "amazon": WebhookAdapter(verify=amazon.verify, normalise=amazon.normalise),
}
