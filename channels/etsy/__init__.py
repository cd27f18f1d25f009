"""Etsy: Standard-Webhooks-signed thin webhooks in (fetch the receipt), Open API v3 listing inventory out.

What is real (developers.etsy.com: Webhooks, Request Standards, Rate Limits; etsy/open-api issues):

- Webhook authentication follows Standard Webhooks: headers ``webhook-id`` (stable across retries),
  ``webhook-timestamp`` (unix seconds of the attempt) and ``webhook-signature`` (space-separated
  ``v1,<base64 HMAC-SHA256>`` entries over ``f"{id}.{timestamp}.{body}"``), keyed with the base64 part of the
  ``whsec_`` signing secret. Deliveries older or newer than 5 minutes are refused (replay window).
- Payloads are thin: ``{"event_type": "order.paid", "resource_url": ".../v3/application/shops/{shop_id}/
  receipts/{receipt_id}", "shop_id": ...}``; ``expand`` fetches the receipt (getShopReceipt) with
  ``x-api-key: <keystring>:<shared secret>`` and ``Authorization: Bearer <user id>.<token>``.
  ``order.canceled`` (a seller cancelation) is listed by Etsy's AsyncAPI description; only order events are
  normalised. Retries: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
- Ids: ``receipt_id`` and ``transaction_id`` (one transaction per purchased listing product).
- Outbound: ``PUT /v3/application/listings/{listing_id}/inventory`` replaces the listing's whole inventory
  (omitted products are deleted; product and offering ids change on every write), so a write is always
  get-modify-put of every product. There is no bulk endpoint across listings (MAX_BATCH = 1); ``set_many``
  still groups the SKUs of one listing into one write.
- Rate limits: 10 requests a second and 10,000 a day per app by default (429 with ``retry-after``).

Connection mapping: ``listings[sku].listing_id`` is the Etsy listing id; ``inventory_ref`` is the product's
SKU on Etsy when it differs from the master SKU (variations of one listing are told apart by it).
``options``: ``shop_id`` (checked against every webhook) and ``api_key`` (``keystring:shared_secret``).
"""

from __future__ import annotations

from typing import Final

CHANNEL: Final = "etsy"
API_PATH: Final = "/v3/application"
RATE_LIMIT_PER_S: Final = 10.0
RATE_BURST: Final = 10
MAX_BATCH: Final = 1
MAX_QUANTITY: Final = 999
REPLAY_WINDOW_S: Final = 300

# The parts import the constants above, so the spec is built after them.
from channels.etsy import client, orders, webhooks  # noqa: E402
from channels.spec import ChannelSpec  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.EtsyInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    daily_calls=10_000,  # 10,000 requests a day per token
    list_orders=orders.list_orders,
    expand=webhooks.expand,
)
