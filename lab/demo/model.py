"""The flash sale: its options, the seller's stock and the buyers' orders (deterministic for a seed), what a
storefront shows, and the tallies of the event-driven run."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from channels.connection import Listing
from lab.marketplaces import Marketplace
from lab.polling import Order

TENANT = "demo"
FIRST_ORDER_ID = 500_000
# A channel redelivers a webhook the gateway answered 503 (a thin payload's order could not be fetched yet,
# e.g. the channel's API said 429) with growing delays; here seconds instead of the channels' minutes.
DELIVERIES = 10
FIRST_REDELIVERY_S = 0.5


@dataclass(frozen=True)
class DemoOptions:
    skus: int = 20
    orders: int = 2000
    seconds: float = 30.0  # real time the sale is played in
    sale_minutes: float = 60.0  # how long the sale lasts in simulated time
    poll_minutes: float = 15.0
    seed: int = 8
    out: Path = Path("reports")

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be positive, got {value}"
            for name, value in (
                ("skus", self.skus),
                ("orders", self.orders),
                ("seconds", self.seconds),
                ("sale_minutes", self.sale_minutes),
                ("poll_minutes", self.poll_minutes),
            )
            if value <= 0
        ]
        if problems:
            raise ValueError("; ".join(problems))


def flash_sale(options: DemoOptions, channels: list[str]) -> tuple[dict[str, int], list[Order]]:
    """The seller's stock (small, 5 to 40 units a SKU) and the buyers' orders, deterministic for the seed.

    Orders come early (a flash sale opens with a rush, then thins out), most of them for a few popular SKUs
    (Zipf weights), on any of the channels; one in ten asks for 2 units and one in thirty for 3.
    """
    rnd = random.Random(options.seed)  # noqa: S311 - reproducible demo traffic, not secrets
    skus = [f"FLASH-{n:02d}" for n in range(options.skus)]
    stock = {sku: rnd.randint(5, 40) for sku in skus}
    weights = [1 / (rank + 1) for rank in range(len(skus))]
    sale_s = options.sale_minutes * 60
    orders = []
    for _ in range(options.orders):
        roll = rnd.random()
        orders.append(
            Order(
                at_s=round(sale_s * rnd.random() ** 1.3, 3),
                channel=rnd.choice(channels),
                sku=rnd.choices(skus, weights)[0],
                quantity=3 if roll < 1 / 30 else 2 if roll < 0.1 else 1,
            )
        )
    orders.sort(key=lambda o: o.at_s)
    return stock, orders


def count_key(channel: str, sku: str, listing: Listing) -> str:
    """The key under which `channel`'s simulator keeps its own count of `sku` (each API names it its way)."""
    if channel == "ebay":
        return sku
    if channel in ("shopify", "tiktok"):
        return listing.inventory_ref or ""
    if channel == "etsy":
        return listing.inventory_ref or sku
    if channel == "woocommerce" and listing.inventory_ref:
        return listing.inventory_ref.partition("/")[2]
    return listing.listing_id  # amazon, walmart, bigcommerce, flipkart; woocommerce without variations


def shown(market: Marketplace, sku: str) -> int:
    """What the storefront shows buyers now: the simulator's own count (no API call spent on it)."""
    available: dict[str, int] = getattr(market.simulator, "available", {})
    return available.get(count_key(market.channel, sku, market.connection.listings[sku]), 0)


@dataclass
class ChannelTally:
    offered: int = 0
    refused: int = 0  # the storefront showed fewer units than ordered
    taken: int = 0  # the storefront took the order and posted its webhook
    applied: int = 0
    rejected: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    calls: int = 0
    rate_limited: int = 0
    dlq: int = 0


@dataclass
class EventDriven:
    orders: int = 0
    accepted: int = 0
    rejected: int = 0
    refused_by_channel: int = 0
    units_sold: int = 0
    oversells: int = 0
    cancellations_needed: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    outbound_calls: int = 0
    rate_limited: int = 0
    dlq: int = 0
    webhooks_not_accepted: int = 0
    dlq_replayed: int = 0
    skus_out_of_sync: list[str] = field(default_factory=list)
    per_channel: dict[str, ChannelTally] = field(default_factory=dict)
