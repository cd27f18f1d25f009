"""Shopify: HMAC-signed webhooks, GraphQL Admin ``inventorySetQuantities`` for outbound stock."""

CHANNEL = "shopify"
API_VERSION = "2026-01"
