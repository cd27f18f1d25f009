"""eBay: ECDSA-signed Notification API webhooks in, Inventory API ``bulkUpdatePriceQuantity`` out.

What is real (eBay developer docs, Notification API and Inventory API):

- Webhook authentication: ``X-EBAY-SIGNATURE`` is base64 of a JSON object ``{"alg": "ecdsa", "kid": ...,
  "signature": ..., "digest": "SHA1"}``; ``signature`` is a base64 DER ECDSA signature (SHA-1 digest) over the
  notification body, verifiable with the public key that ``GET /commerce/notification/v1/public_key/{kid}``
  returns (eBay asks subscribers to cache it, about an hour). This package verifies offline: the connection's
  ``webhook_secret`` holds that public key as PEM. There is no timestamp in the header, so there is no replay
  window; replays are harmless because event ids are stable (order id + line item id).
- Ids: every notification carries ``notification.notificationId`` (stable across eBay's retries, whose
  schedule is unpublished); canonical events use the order id and line item id.
- Outbound: ``POST /sell/inventory/v1/bulk_update_price_quantity`` with an OAuth user token
  (``Authorization: Bearer``), up to 25 requests (SKU + its offers) per call; the response reports a status
  per item (HTTP 200, or 207 when some items failed). A listing may be revised at most 250 times a calendar
  day; beyond that eBay refuses the revision until the next day.
- Rate limits: eBay publishes daily call quotas per API and application only; the per-second budget below
  is ours, chosen to stay well inside them.

Connection mapping: ``listings[sku].listing_id`` is the eBay listing (legacy item) id, ``inventory_ref`` the
published offer id; the Inventory API SKU is the master SKU.
"""

from __future__ import annotations

from typing import Final

CHANNEL: Final = "ebay"
INVENTORY_API_PATH: Final = "/sell/inventory/v1"
NOTIFICATION_API_PATH: Final = "/commerce/notification/v1"
RATE_LIMIT_PER_S: Final = 10.0
RATE_BURST: Final = 20
MAX_BATCH: Final = 25
MAX_REVISIONS_PER_DAY: Final = 250

# The parts import the constants above, so the spec is built after them.
from channels.ebay import client, orders, webhooks  # noqa: E402
from channels.spec import ChannelSpec  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.EbayInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    daily_writes_per_listing=250,  # "a listing may be revised up to 250 times a day"
    list_orders=orders.list_orders,
)
