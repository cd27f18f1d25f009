"""Shopify: HMAC-signed webhooks; GraphQL Admin ``inventorySetQuantities`` (compare-and-set) for stock.

Budget: GraphQL Admin is cost-limited (standard plan: 100 points/s restore, 1,000-point bucket); one
``inventorySetQuantities`` call is modelled as 10 points, i.e. 10 calls/s with a burst of 100.
"""

CHANNEL = "shopify"
API_VERSION = "2026-01"
RATE_LIMIT_PER_S = 10.0
RATE_BURST = 100.0
MAX_BATCH = 250  # quantities per inventorySetQuantities call
