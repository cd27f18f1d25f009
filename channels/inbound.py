"""Which code verifies and normalises each channel's webhooks: the gateway's only view of channels."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from channels.amazon import webhooks as amazon
from channels.bigcommerce import webhooks as bigcommerce
from channels.connection import Connection
from channels.ebay import webhooks as ebay
from channels.etsy import webhooks as etsy
from channels.flipkart import webhooks as flipkart
from channels.shopify import webhooks as shopify
from channels.tiktok import webhooks as tiktok
from channels.walmart import webhooks as walmart
from channels.woocommerce import webhooks as woocommerce
from schemas.inventory_events import ChannelEvent

# The events of a verified body; PayloadError if the body is unusable, LinesRefused (channels.payload, a
# PayloadError) carrying the other lines' events if only some of its lines are.
Normalise = Callable[[Connection, bytes, Mapping[str, str], datetime], Sequence[ChannelEvent]]
Expand = Callable[[aiohttp.ClientSession, Connection, bytes, Mapping[str, str]], Awaitable[bytes]]


Verify = Callable[[str, bytes, Mapping[str, str]], bool]


@dataclass(frozen=True)
class WebhookAdapter:
    verify: Verify
    normalise: Normalise
    # The headers verify reads (the signature, and what is signed with it or checked against the body). A
    # request carrying one of them twice is refused before verifying: which copy a check reads is an accident
    # of the code, so two copies are never accepted, whatever their order.
    auth_headers: tuple[str, ...]
    expand: Expand | None = None  # thin payloads: fetch the full order from the channel before normalising
    ping: Callable[[bytes, Mapping[str, str]], bool] | None = None  # unsigned set-up pings that need a 200
    verifier: Callable[[Connection], Verify] | None = None  # a verify that needs more of the connection

    def verify_for(self, connection: Connection) -> Verify:
        return self.verifier(connection) if self.verifier is not None else self.verify


ADAPTERS: dict[str, WebhookAdapter] = {
    "shopify": WebhookAdapter(
        verify=shopify.verify, normalise=shopify.normalise, auth_headers=shopify.AUTH_HEADERS
    ),
    "amazon": WebhookAdapter(
        verify=amazon.verify, normalise=amazon.normalise, auth_headers=amazon.AUTH_HEADERS
    ),
    "ebay": WebhookAdapter(verify=ebay.verify, normalise=ebay.normalise, auth_headers=ebay.AUTH_HEADERS),
    "etsy": WebhookAdapter(
        verify=etsy.verify, normalise=etsy.normalise, auth_headers=etsy.AUTH_HEADERS, expand=etsy.expand
    ),
    "woocommerce": WebhookAdapter(
        verify=woocommerce.verify,
        normalise=woocommerce.normalise,
        auth_headers=woocommerce.AUTH_HEADERS,
        ping=woocommerce.is_ping,
    ),
    "walmart": WebhookAdapter(
        verify=walmart.verify, normalise=walmart.normalise, auth_headers=walmart.AUTH_HEADERS
    ),
    "tiktok": WebhookAdapter(
        verify=tiktok.verify,
        normalise=tiktok.normalise,
        auth_headers=tiktok.AUTH_HEADERS,
        expand=tiktok.expand,
        verifier=tiktok.verifier,
    ),
    "bigcommerce": WebhookAdapter(
        verify=bigcommerce.verify,
        normalise=bigcommerce.normalise,
        auth_headers=bigcommerce.AUTH_HEADERS,
        expand=bigcommerce.expand,
    ),
    "flipkart": WebhookAdapter(
        verify=flipkart.verify,
        normalise=flipkart.normalise,
        auth_headers=flipkart.AUTH_HEADERS,
        expand=flipkart.expand,
    ),
}
