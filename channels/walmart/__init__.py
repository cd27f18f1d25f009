"""Walmart Marketplace (US): HMAC-authenticated event notifications, ``/v3/inventory`` and inventory feeds.

Inbound: a webhook subscription with ``authMethod: HMAC`` makes Walmart send, in the header named by the
subscription's ``authHeaderName``, the HMAC-SHA256 of the complete body keyed with the subscription's
``clientSecret`` (developer.walmart.com, "Create subscription"). We subscribe with ``authHeaderName:
Authorization``. The digest's text encoding is unpublished: we send base64 and accept base64 or hex. No
timestamp is signed, so there is no replay window: only the stable ids make a replay harmless. Walmart makes
3 delivery attempts in all; ``source.eventId`` is stable across them, and our event ids come from
``purchaseOrderId`` + ``lineNumber``, so the reconciler's Orders API reads give the same ids.

Outbound: ``PUT /v3/inventory?sku=`` with ``{"sku", "quantity": {"unit": "EACH", "amount": n}}`` and the
``WM_SEC.ACCESS_TOKEN`` / ``WM_QOS.CORRELATION_ID`` / ``WM_SVC.NAME`` headers; tokens come from ``POST
/v3/token`` (client credentials, 900 s). Bulk: ``POST /v3/feeds?feedType=inventory`` (spec 1.4, ≤ 5 MB,
processed asynchronously within ~30 min) is limited to 10 feeds an hour, so set_many only uses it for
FEED_THRESHOLD items or more. No compare-and-set.

Budget: Walmart says single-item limits "vary by API" and calls the non-feed inventory API "highly
throttled"; it publishes no figure we could find for the Marketplace. 3 calls/s with a burst of 10 is our
conservative choice (invented; tune per connection with ``rate_limit_per_s``).
"""

from typing import Final

CHANNEL: Final = "walmart"
RATE_LIMIT_PER_S: Final = 3.0
RATE_BURST: Final = 10.0
FEEDS_PER_HOUR: Final = 10
# A feed costs a tenth of the hourly allowance and can take 30 minutes to apply; 500 single PUTs take under
# 3 minutes at 3/s. Below this many items set_many writes item by item, at or above it one feed per chunk.
FEED_THRESHOLD: Final = 500
MAX_BATCH: Final = 10_000  # items per feed: ~1 MB of JSON, well inside the 5 MB (50,000-item) feed limit
TOKEN_LIFETIME_S: Final = 900
SERVICE_NAME: Final = "Walmart Marketplace"

# The parts import the constants above, so the spec is built after them.
from channels.spec import ChannelSpec  # noqa: E402
from channels.walmart import client, orders, webhooks  # noqa: E402

SPEC = ChannelSpec(
    name=CHANNEL,
    verify=webhooks.verify,
    normalise=webhooks.normalise,
    auth_headers=webhooks.AUTH_HEADERS,
    client=client.WalmartInventoryClient,
    rate_limit_per_s=RATE_LIMIT_PER_S,
    rate_burst=RATE_BURST,
    # One PUT per SKU, each charged to the budget: the bulk feed (MAX_BATCH items, 10 an hour, ~30 min to
    # apply) suits full pushes of FEED_THRESHOLD items or more, not fan-out's latency.
    max_batch=1,
    list_orders=orders.list_orders,
)
