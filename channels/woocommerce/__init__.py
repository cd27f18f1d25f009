"""WooCommerce (self-hosted WordPress): HMAC-signed order webhooks, REST v3 ``stock_quantity`` writes.

Inbound: ``X-WC-Webhook-Signature`` is base64(HMAC-SHA256(webhook secret, raw body)), as
``WC_Webhook::generate_signature`` computes it. WooCommerce sends no timestamp, so there is no replay
window: a captured delivery can be replayed, and only the stable event ids make that harmless.
``X-WC-Webhook-Delivery-ID`` is new on every send, so ids come from order id + line item id. WooCommerce never
retries a failed delivery (it disables the webhook after more than 5 failures in a row): the reconciler must
backfill missed orders.

Outbound: ``PUT /wp-json/wc/v3/products/{id}`` (variations: ``/products/{parent}/variations/{id}``) with
``{"stock_quantity": n, "manage_stock": true}``, batches of at most 100 updates on ``.../batch``; HTTP Basic
auth with the REST consumer key and secret (``access_token = "ck_...:cs_..."``). No compare-and-set.

Budget: WooCommerce's REST API has no rate limit of its own; the store's few PHP workers are the limit, and
every product save runs WordPress hooks (cache purges, lookup tables) that can take ~0.5 s. 2 calls/s
(burst 5) keeps us to about one busy worker so checkout is not starved; with 100-item batches, 200 SKUs/s.
Raise it per connection (``rate_limit_per_s``) for a well-provisioned store.
"""

from typing import Final

CHANNEL: Final = "woocommerce"
API_NAMESPACE: Final = "wc/v3"
RATE_LIMIT_PER_S: Final = 2.0
RATE_BURST: Final = 5.0
MAX_BATCH: Final = 100  # WooCommerce's default ``woocommerce_rest_batch_items_limit``

# The parts import the constants above, so the spec is built after them.
from channels.spec import ChannelSpec  # noqa: E402
from channels.woocommerce import client, orders, webhooks  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.WooCommerceInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    list_orders=orders.list_orders,
    ping=webhooks.is_ping,
)
