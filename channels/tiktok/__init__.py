"""TikTok Shop: app-secret-signed order notifications, Open API 202309 for orders and inventory.

What is real (TikTok Shop Partner Center docs, 202309 API generation):

- Webhooks: ``Authorization`` = lowercase hex HMAC-SHA256 keyed with the app secret over ``app_key`` + the raw
  body. Nothing in the signature is a timestamp, so there is no replay window: a captured notification can
  be re-sent at will. That is harmless here only because our event ids are derived from the order and line
  ids, so a replay deduplicates; it is still unauthenticated freshness. ``tts_notification_id`` identifies a
  delivery. ORDER_STATUS_CHANGE (``type`` 1) carries only ``data.order_id`` and ``data.order_status``: the
  order itself is fetched with Get Order Detail, ``GET /order/202309/orders?ids=...``.
- Line items of a 202309 order detail carry no quantity: TikTok lists one line per unit, each with its own
  id. Older payloads (and some markets) do carry ``quantity``; both are accepted.
- API calls: ``x-tts-access-token`` header plus ``app_key``, ``timestamp``, ``shop_cipher`` and ``sign``
  query parameters; ``sign`` is hex HMAC-SHA256 (app secret) over secret + path + sorted params + body +
  secret. Errors usually come back as HTTP 200 with a non-zero ``code``.
- Inventory: ``POST /product/202309/products/{product_id}/inventory/update`` with
  ``{"skus": [{"id": sku_id, "inventory": [{"warehouse_id", "quantity"}]}]}``; absolute, no compare-and-set,
  quantity 0..99,999; reads via Get Product, ``GET /product/202309/products/{product_id}``.

Connection mapping: ``listings[sku].listing_id`` = TikTok product id, ``inventory_ref`` = TikTok SKU id
(unique per variant); ``options["app_key"]`` (required), ``options["shop_cipher"]`` and
``options["warehouse_id"]``.
The app secret is the connection's ``webhook_secret``: TikTok uses one secret for both directions.

Not published: the retry schedule of notifications and the API rate limits (TikTok throttles per app, shop
and API, values not public). RATE_LIMIT_PER_S / RATE_BURST are a conservative guess, not a documented figure.
"""

CHANNEL = "tiktok"
API_VERSION = "202309"
RATE_LIMIT_PER_S = 5.0  # unpublished: a conservative guess, well under what integrators report
RATE_BURST = 10.0
# One call updates the SKUs of one product; no per-call cap is published, so a product's SKUs are sent in
# chunks of this size to stay small.
MAX_BATCH = 50

# The parts import the constants above, so the spec is built after them.
from channels.spec import ChannelSpec  # noqa: E402
from channels.tiktok import client, orders, webhooks  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.TikTokInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    daily_calls=10_000,  # integrators report about 10,000 a day (unpublished)
    list_orders=orders.list_orders,
    expand=webhooks.expand,
    verifier=webhooks.verifier,
)
