"""BigCommerce: thin order webhooks authenticated by a custom header, Catalog API variants for stock.

What is real (developer.bigcommerce.com):

- Webhooks are created with ``POST /stores/{store_hash}/v3/hooks``; the subscription's ``headers`` are sent
  back verbatim on every callback. BigCommerce signs nothing, so that header is the only authentication:
  subscribe with ``headers: {"X-Webhook-Secret": <connection.webhook_secret>}`` (the name is our choice).
  A static header has no timestamp and no body integrity: anyone holding the secret can forge any callback,
  and a captured one can be replayed. Our event ids come from order and line ids, so replays deduplicate.
- Payloads are thin: ``{"scope", "store_id", "producer", "hash", "created_at", "data": {"type": "order",
  "id"}}``; ``store/order/statusUpdated`` adds ``data.status.{previous,new}_status_id``. Lines come from
  ``GET /stores/{store_hash}/v2/orders/{id}/products`` (``X-Auth-Token``). Duplicates happen; a duplicate
  carries the same ``hash``. Callbacks that are not answered 2xx are retried (schedule not ours to rely on).
- Stock: Catalog API ``PUT /stores/{store_hash}/v3/catalog/variants`` (batch, at most 50 variants; more is
  HTTP 413) setting ``inventory_level`` absolutely, no compare-and-set. Chosen over the newer Inventory API
  (``/v3/inventory/adjustments/absolute``) because it needs no location ids and works on every store; it
  writes the default location only, so multi-location stores need the Inventory API instead. Reads:
  ``GET /stores/{store_hash}/v3/catalog/products/{id}/variants``.
- Rate limit: a quota per store refreshed every 30 s, shared by every app on the store: 150 requests per
  30 s on Standard and Plus, 450 on Pro; 429 with ``X-Rate-Limit-Time-Reset-Ms``. We budget the lowest
  plan's 5/s with a small burst, leaving the window to the store's other apps.

Connection mapping: ``listings[sku].listing_id`` = variant id, ``inventory_ref`` = product id (reads);
``options["store_hash"]`` (required); ``access_token`` = the API account's ``X-Auth-Token``.
"""

CHANNEL = "bigcommerce"
RATE_LIMIT_PER_S = 5.0  # 150 requests / 30 s (Standard, Plus), shared with the store's other apps
RATE_BURST = 10.0
MAX_BATCH = 50  # variants per PUT /v3/catalog/variants; 51 is answered 413
CANCELLED_STATUS_IDS = frozenset({4, 5})  # Refunded, Cancelled: the units go back to stock

# The parts import the constants above, so the spec is built after them.
from channels.bigcommerce import client, orders, webhooks  # noqa: E402
from channels.spec import ChannelSpec  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.BigCommerceInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    list_orders=orders.list_orders,
    expand=webhooks.expand,
)
