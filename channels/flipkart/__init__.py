"""Flipkart: Seller API v3 (OAuth bearer), order notifications, Listings v3 inventory.

What is real (seller.flipkart.com/api-docs, Flipkart's seller API SDK docs):

- Calls: ``Authorization: Bearer <token>`` (OAuth client credentials or authorization code) against
  ``https://api.flipkart.net/sellers`` (``api_base_url``).
- Stock: ``POST /listings/v3/update/inventory`` with ``{seller_sku: {"product_id": FSN, "locations":
  [{"id": location_id, "inventory": n}]}}``, absolute, no compare-and-set; the reply maps each SKU to
  ``{"status": SUCCESS | FAILURE | WARNING, "errors": [{severity, code, description, path}], ...}``.
  Reads: ``GET /listings/v3/{sku,sku,...}`` -> ``{"available": {sku: {..., "locations": [{id, status,
  inventory}]}}, "unavailable": [...], "invalid": [...]}``.
- Order notifications (Order Management Notification Service, subscription by ticket to Flipkart):
  ``shipment_created`` carries full ``attributes.orderItems`` (orderItemId, orderId, quantity, fsn, sku,
  listingId, orderDate); ``shipment_cancelled`` carries only ``orderItemId``, cancelled ``quantity`` and a
  reason, so it is expanded with ``GET /v3/shipments?shipmentIds=...``.
- Published notification authentication: ``X_Date`` (HTTP-date) and ``X_Authorization: FKLOGIN
  base64(app_id:signature)`` with signature = SHA-1(X_Date + receiver URL + HTTP method + app secret).
  It does not cover the body and needs the receiver URL, which verify() is not given; see
  webhooks.verify_fklogin.

Invented here (unpublished or not usable through this interface), documented-looking and said so in
channels.flipkart.webhooks: the body signature verify() checks (``X-Flipkart-Timestamp`` +
``X-Flipkart-Signature``), the names of the no-op notification types other than the two above, and the
retry schedule. Rate limits are not published (integrators report about 100 requests a minute): the budget
below is a conservative guess. MAX_BATCH = 10 SKUs per update is the cap integrators report for Listings v3.

Connection mapping: ``listings[sku].listing_id`` = Flipkart seller SKU id (the key Listings v3 uses),
``inventory_ref`` = FSN (``product_id``); ``options["location_id"]`` (required for stock).
"""

CHANNEL = "flipkart"
RATE_LIMIT_PER_S = 1.5  # unpublished: ~100 requests/minute as integrators report it
RATE_BURST = 5.0
MAX_BATCH = 10  # SKUs per /listings/v3/update/inventory call (and per GET /listings/v3/{skus})

# The parts import the constants above, so the spec is built after them.
from channels.flipkart import client, orders, webhooks  # noqa: E402
from channels.spec import ChannelSpec  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.FlipkartInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    list_orders=orders.list_orders,
    expand=webhooks.expand,
)
