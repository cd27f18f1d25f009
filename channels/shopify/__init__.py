"""Shopify: HMAC-signed webhooks; GraphQL Admin ``inventorySetQuantities`` (compare-and-set) for stock.

Budget: GraphQL Admin is cost-limited (standard plan: 100 points/s restore, 1,000-point bucket); one
``inventorySetQuantities`` call is modelled as 10 points, i.e. 10 calls/s with a burst of 100.
"""

CHANNEL = "shopify"
API_VERSION = "2026-01"
RATE_LIMIT_PER_S = 10.0
RATE_BURST = 100.0
MAX_BATCH = 250  # quantities per inventorySetQuantities call

# The parts import the constants above, so the spec is built after them.
from channels.shopify import client, orders, webhooks  # noqa: E402
from channels.spec import ChannelSpec  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.ShopifyInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    max_batch=MAX_BATCH,
    write_mode="cas",  # changeFromQuantity (required from API 2026-04): a stale base is refused
    list_orders=orders.list_orders,
)
